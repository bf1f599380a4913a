"""The cyclic garbage collector during a mass cancellation.

A mass cancel, and the unwinding of the tasks it reaches, allocates as it goes (a ``Cancelled``,
a traceback and frames per task, an outcome per handle) while every task's objects are still
alive. Those allocations trigger the collector, and now and then a *full* collection, which
walks every tracked object in the process: millions of them, which are about to be freed by
reference counting as their tasks end. That walk finds nothing to collect and is most of what
a large cancel costs beyond Trio's own work.

The collector's settings belong to the application. The library changes them in two places
only, both through this module, and never calls ``gc.disable()``:

* :func:`deferred_full_collections`, entered by the application (never by the library) around
  a mass shutdown: while at least one entry is open anywhere in the process, the oldest
  generation's threshold is out of reach (:data:`DEFERRED`), so young collections go on and
  only full collections wait.
* :func:`pause_collector` / :func:`resume_collector`, around the synchronous part of a large
  ``CancellationToken.cancel()`` called from the Trio thread: the youngest threshold is out of
  reach too, for that one call (no ``await`` inside, so no other task of the run executes
  meanwhile).

Invariants (kept under :data:`_lock`, which every change here takes):

1. ``_program`` is what the program last set, generation by generation: before each change,
   every generation whose current threshold differs from ``_ours`` (what this module last set)
   was changed by the program, and its current value is adopted into ``_program``. So a
   program's ``gc.set_threshold()`` made meanwhile, from any thread, is kept, except one that
   another thread makes at the same instant as an entry, an exit or a pause changes the
   thresholds (between that change's read and its write): that one may be lost.
2. While neither an entry nor a pause is open, ``_ours`` is ``None`` and the thresholds are the
   program's own: the last exit writes back ``_program`` (with invariant 1 applied), which is
   exactly what the program last set.
3. ``gc.isenabled()`` is never read to decide anything nor changed: a ``gc.disable()`` or
   ``gc.enable()`` by anyone, at any time, stays as it was made.
4. A collector whose youngest threshold is 0 (automatic collection off) is left alone.
5. Entering and leaving are ``KeyboardInterrupt``-protected inside :func:`trio.run`, so a Ctrl+C
   cannot land between the depth count and the thresholds.
"""

from __future__ import annotations

import gc
import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final, final

import trio

if TYPE_CHECKING:
    from types import TracebackType

GC_PAUSE_AT: Final = 1024
"""A ``cancel()`` that meets this many children or waiters of one token pauses the collector
for the rest of its synchronous marking and waking (see the module)."""

DEFERRED: Final = 2**31 - 1
"""A threshold while its generation's collections are held back: never reached."""

_lock = threading.Lock()  # entries may come from several Trio runs and plain threads at once
_deferring = 0  # open deferred_full_collections() entries, process-wide
_pausing = 0  # open paused_collector() sections, process-wide (one per thread at most)
_program: tuple[int, int, int] | None = None  # what the program last set, while we hold any
_ours: tuple[int, int, int] | None = None  # what we last set, while we hold any


def _apply() -> None:
    """Bring the thresholds in line with the open entries (call with ``_lock`` held).

    The program's own ``gc.set_threshold()`` cannot take ``_lock``: one that another thread
    makes between this function's read and its write (a few instructions, no allocation, no
    call into Python code) is overwritten. That window cannot be closed from here (a re-read
    just before the write measured no better: the thread switch can land on the write's
    own call)."""
    global _program, _ours
    current = gc.get_threshold()
    if _ours is None or _program is None:
        program = current
    else:  # a generation that differs from what we set was set by the program: keep it
        program = (
            current[0] if current[0] != _ours[0] else _program[0],
            current[1] if current[1] != _ours[1] else _program[1],
            current[2] if current[2] != _ours[2] else _program[2],
        )
    young, middle, oldest = program
    if _deferring == 0 and _pausing == 0:
        if program != current:
            gc.set_threshold(young, middle, oldest)
        _program = _ours = None
        return
    wanted: tuple[int, int, int] = program
    if young != 0:  # 0: automatic collection is off, nothing to hold back
        wanted = (DEFERRED if _pausing else young, middle, DEFERRED)
    if wanted != current:
        gc.set_threshold(*wanted)
    _program, _ours = program, wanted


@final
class _DeferredFullCollections(AbstractContextManager[None]):
    """One entry of :func:`deferred_full_collections` (each call makes a new one)."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = "new"

    @trio.lowlevel.enable_ki_protection
    def __enter__(self) -> None:
        global _deferring
        if self._state != "new":
            raise RuntimeError(
                "this deferred_full_collections() was already entered; call it again"
            )
        with _lock:
            _deferring += 1
            self._state = "entered"
            _apply()

    @trio.lowlevel.enable_ki_protection
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _deferring
        if self._state != "entered":
            return
        with _lock:
            _deferring -= 1
            self._state = "exited"
            _apply()

    def __repr__(self) -> str:
        return f"<deferred_full_collections() {self._state}>"


def deferred_full_collections() -> AbstractContextManager[None]:
    """Hold back the cyclic collector's full collections while the block runs.

    ``with tc.deferred_full_collections():`` around a mass shutdown (a
    :class:`~trio_cancel.JoinSet`, a nursery, a :class:`~trio_cancel.GracefulShutdown`) keeps
    the collector from walking every object of the process while thousands of tasks unwind:
    their objects are all alive, and reference counting frees them moments later, so a full
    collection then finds nothing and can cost a third of the shutdown (the performance page
    gives the figures). The oldest generation's threshold is raised out of reach on entry;
    young collections go on, so short-lived cyclic garbage is still collected.

    The trade-off: the setting is process-wide. While any entry is open, cyclic garbage of other
    code that has reached the oldest generation waits too, and ``gc.get_threshold()`` shows
    ``2147483647`` as its third value. Nothing in trio_cancel enters this implicitly: it is the
    application's choice, for a shutdown it plans.

    Entries nest and overlap across tasks, Trio runs and threads: the first raises the
    threshold and the last restores it. What comes back is what the program last set: a
    ``gc.set_threshold()`` made meanwhile is kept, generation by generation (one exception:
    a ``gc.set_threshold()`` made by another thread at the same instant as an entry or an
    exit changes the thresholds may be lost, as nothing can lock the program's own call;
    one made by the entering thread itself, or while no entry or exit is under way, is
    always kept);
    ``gc.disable()`` / ``gc.enable()`` are never touched. A collector with automatic
    collection off (``gc.set_threshold(0)``) is left alone. The exit restores on every path
    (an exception, a ``KeyboardInterrupt``, a cancellation); inside :func:`trio.run`, entering
    and leaving are ``KeyboardInterrupt``-protected as Trio's own ``CancelScope`` is (outside a
    run, as for any Python code, a Ctrl+C can land anywhere). Each call returns a new context
    manager, entered once.

    Not a checkpoint; never blocks (beyond a process-wide lock held for a few instructions).
    """
    return _DeferredFullCollections()


@trio.lowlevel.enable_ki_protection
def pause_collector() -> None:
    """Start a synchronous pause (``cancel()``'s, from the Trio thread): no collection at all
    until :func:`resume_collector`. Never call ``await`` in between."""
    global _pausing
    with _lock:
        _pausing += 1
        _apply()


@trio.lowlevel.enable_ki_protection
def resume_collector() -> None:
    """End a pause started by :func:`pause_collector`."""
    global _pausing
    with _lock:
        _pausing -= 1
        _apply()
