"""Subprocesses as tracked work of a GracefulShutdown: SIGTERM at the trigger, SIGKILL after
their own grace period, and the whole process group, with no survivor.

A process is started in a new session, so it leads a process group of its own and every
process it starts (a shell's children) belongs to it; signals go to the group. The group id is
the leader's pid, which could be reused once the leader is reaped and the group is empty. So
the leader is never reaped before the group has been signalled for the last time: its exit is
noticed through a pidfd (the exited, unreaped leader keeps its pid, and with it the group id,
reserved), the survivors are killed, and only then is the leader reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._token import CancellationToken


@final
@attrs.frozen
class ProcessExit:
    """How a process spawned by :meth:`GracefulShutdown.spawn_process` ended (the value of its
    task's ``Completed`` outcome, shown in its :class:`TaskLanding`).

    Attributes:
        returncode: The exit status; negative: killed by that signal (``subprocess``'s rule).
        signal: The name of the signal that ended it (``"SIGTERM"``, ``"SIGKILL"``), or
            ``None`` if it exited on its own.
        sent: The last signal the shutdown sent its process group, or ``None``.
    """

    returncode: int
    signal: str | None
    sent: str | None

    def __str__(self) -> str:
        how = f"killed by {self.signal}" if self.signal else f"exited {self.returncode}"
        return how if self.sent is None else f"{how} (sent {self.sent})"


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already empty
        os.killpg(pgid, signum)


async def run_process_group(
    command: Sequence[str] | str,
    kill_grace: float,
    options: dict[str, Any],
    *,
    token: CancellationToken,
) -> ProcessExit:
    """The task body of a tracked process (see the module docstring)."""
    proc = await trio.lowlevel.open_process(command, start_new_session=True, **options)
    pgid = proc.pid
    pidfd = os.pidfd_open(proc.pid)
    sent: str | None = None

    async def stop_at_the_trigger() -> None:
        nonlocal sent
        await token.wait_cancelled()
        _signal_group(pgid, signal.SIGTERM)
        sent = "SIGTERM"
        await trio.sleep(kill_grace)
        _signal_group(pgid, signal.SIGKILL)
        sent = "SIGKILL"

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_at_the_trigger)
            await trio.lowlevel.wait_readable(pidfd)  # the leader exited; not yet reaped
            nursery.cancel_scope.cancel()
    except BaseException:
        # Aborted (phase 2, a second signal) or cancelled from outside: kill at once.
        _signal_group(pgid, signal.SIGKILL)
        sent = "SIGKILL"
        raise
    finally:
        with trio.CancelScope(shield=True):
            _signal_group(pgid, signal.SIGKILL)  # survivors of a leader that has exited
            await proc.wait()  # reaps the leader: only now may its pid be reused
            os.close(pidfd)
    returncode = proc.returncode
    assert returncode is not None
    name = signal.Signals(-returncode).name if returncode < 0 else None
    return ProcessExit(returncode, name, sent)


def check_command(command: object) -> None:
    if isinstance(command, str | bytes):
        return
    if not isinstance(command, list | tuple) or not command:
        raise TypeError(
            "spawn_process() needs a command: a non-empty list of arguments, or a string "
            f"with shell=True; not {command!r}"
        )
