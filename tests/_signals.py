"""Signal helpers shared by the tests of shutdowns and servers (not a test module)."""

from __future__ import annotations

import signal
import threading
from typing import Any, Self


def send_together(*signums: int) -> None:
    """Send ``signums`` to this process so that they arrive at once: blocked while sent, they
    are pending together when unblocked, and CPython runs their handlers in number order
    (SIGINT before SIGTERM)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    try:
        for signum in signums:  # to this thread: another thread (a worker) would take a signal
            signal.pthread_kill(threading.get_ident(), signum)  # sent to the process at once
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class ProgramHandler:
    """A program's own handler for a signal, installed for the test: it counts what reaches
    it (a signal the library lost to it, or that no receiver caught, would otherwise go unseen
    or end the test run)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.calls = 0
        self.saved: Any = None

    def __call__(self, signum: int, frame: object) -> None:
        self.calls += 1

    def __enter__(self) -> Self:
        self.saved = signal.signal(self.signum, self)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(self.signum, self.saved)
