"""The cyclic garbage collector during a mass cancellation.

A mass cancel, and the unwinding of the tasks it reaches, allocates as it goes (a ``Cancelled``,
a traceback and frames per task, an outcome per handle) while every task's objects are still
alive. Those allocations trigger the collector, and now and then a *full* collection, which
walks every tracked object in the process: millions of them, which are about to be freed by
reference counting as their tasks end. That walk finds nothing to collect and is most of what
a large cancel costs beyond Trio's own work (at 1,000,000 handles, 20 of a ``JoinSet``
shutdown's 52 seconds).

Two tools, both used only from 1,024 tasks (:data:`GC_PAUSE_AT`) up:

* The synchronous ``CancellationToken.cancel()`` disables the collector for the call (it runs
  no other code meanwhile) and restores the caller's setting.
* A wait for many of our own tasks to unwind (``JoinSet.shutdown()`` and the exit of a
  ``JoinSet``) runs other code too, so it defers only the full collections
  (:class:`DeferFullCollections`): young collections go on, so short-lived cyclic garbage made
  meanwhile is still collected; what waits is garbage in the oldest generation, until the last
  such wait in the process ends. The caller's thresholds are restored then, unless the
  program changed them meanwhile.
"""

from __future__ import annotations

import gc
import threading
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from types import TracebackType

GC_PAUSE_AT: Final = 1024
"""A cancel that meets this many children or waiters of one token, or a wait for this many of
a ``JoinSet``'s aborted tasks, relieves the collector for its duration (see the module)."""

DEFERRED: Final = 2**31 - 1
"""The oldest generation's threshold while full collections are deferred: never reached."""

_lock = threading.Lock()  # one JoinSet per Trio run, and runs may share the process
_depth = 0
_saved: int | None = None


class DeferFullCollections:
    """While at least one of these is entered in the process, no full collection runs.

    ``with DeferFullCollections(active):`` does nothing if ``active`` is false, or if the
    collector had no thresholds to change (``gc.get_threshold()[0] == 0``). Entries nest and
    may overlap across tasks and threads: the oldest generation's threshold is raised by the
    first and restored by the last, unless the program set it itself meanwhile (then its value
    stays); the other two thresholds are never touched. Entering and leaving are
    ``KeyboardInterrupt``-protected, so the threshold cannot be left raised by a Ctrl+C.
    """

    __slots__ = ("_entered",)

    def __init__(self, active: bool) -> None:
        self._entered = active

    @trio.lowlevel.enable_ki_protection
    def __enter__(self) -> None:
        global _depth, _saved
        if not self._entered:
            return
        with _lock:
            if _depth == 0:
                young, middle, oldest = gc.get_threshold()
                if young == 0 or oldest == DEFERRED:
                    self._entered = False  # nothing to defer, or not ours to restore
                    return
                _saved = oldest
                gc.set_threshold(young, middle, DEFERRED)
            _depth += 1

    @trio.lowlevel.enable_ki_protection
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _depth, _saved
        if not self._entered:
            return
        self._entered = False
        with _lock:
            _depth -= 1
            if _depth == 0:
                young, middle, oldest = gc.get_threshold()
                if oldest == DEFERRED and _saved is not None:
                    gc.set_threshold(young, middle, _saved)
                _saved = None
