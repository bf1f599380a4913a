"""Every use of Trio's private internals in trio_cancel, and nowhere else.

No other module of the library touches a private name of Trio. Each use is looked up once, at
import, and has a public fallback (for the testing helper: a clear error). The table, one row
per use (checked on: Trio 0.31.0 and 0.35.0 on Python 3.11, 3.12 and 3.13 in every CI run by
``make test-matrix``; 0.32, 0.33 and 0.34 once, on Python 3.11)::

  1  Mass-cancel fast path, cancel_scopes()                             WRITE, version-gated
     used      CancelScope._cancel_status / _registered_deadline / _cancel_called /
               _cancel_reason / _cancel(); trio._core._run.CancelReason
     why       one CancelReason for all scopes of a cancel(), no deadline bookkeeping for
               scopes without a deadline: about a third of a mass cancel's time
     fallback  CancelScope.cancel(reason=...) per scope: the same behaviour, slower
     forced by tests/test_trio_internals.py::test_cancel_scopes_public_fallback, and the
               whole suite with TRIO_CANCEL_FAST_PATHS=off (make test-matrix)

  2  Main-task injection, raise_in_main_task()                          WRITE, version-gated
     used      GLOBAL_RUN_CONTEXT.runner.deliver_ki() / .main_task, Task._abort_func,
               Task._attempt_abort()
     why       a BaseException (KeyboardInterrupt, SystemExit) from an on_cancel callback
               fired by a cancel_after timer runs in a system task, which may not raise: it
               must leave trio.run as itself, as Trio's own Ctrl+C does
     fallback  re-raised in the system task: trio.run raises TrioInternalError from it
     forced by tests/test_trio_internals.py::test_timer_base_exception_fallback

  3  Cancel state reads, effectively_cancelled() / scope_reason() /    READ
     scope_reason_object() / innermost_cancelled_scope()
     used      Task._cancel_status.effectively_cancelled / ._scope, CancelScope._cancel_reason
     why       current_task_tree() shows which tasks are cancelled, and why;
               trio_cancel.otel tells which cancellation (its recorded source) a Cancelled is
     fallback  None ("unknown") in the tree; otel then reports Trio's own source
     forced by tests/test_trio_internals.py::test_task_tree_without_internals

  4  Next wake-up read, next_send()                                     READ
     used      Task._next_send
     why       CancellationLatency tells a wake-up by an explicit cancellation from others
     fallback  None: the instrument then records no landing (it never changes the program)
     forced by tests/test_trio_internals.py::test_latency_without_internals

  5  Cancel point counting, count_cancel_points() / scheduler_rng()     WRITE, version-gated,
                                                                        test code only
     used      Task._cancel_points (its value replaced by a counting int subclass in the
               swept tasks); which public function adds 1 tells the kind of check (the
               __code__ of checkpoint_if_cancelled and checkpoint, read when the helper is
               called, never at import); trio._core._run._r (the scheduler's shuffle,
               reseeded per run)
     why       cancel_at_each_checkpoint counts cancel points exactly as
               trio.testing.assert_checkpoints does, reproducibly
     fallback  none possible: the helper raises RuntimeError at its call (also on an
               unchecked Trio, and where those functions have no Python code); without _r,
               runs are not reseeded
     forced by tests/test_trio_internals.py::test_sweep_without_internals,
               ::test_sweep_on_an_unchecked_version and
               ::test_import_and_sweep_without_checkpoint_code

The write paths 1, 2 and 5 are enabled only when ``trio.__version__`` is within
:data:`CHECKED_TRIO`: a newer Trio gets the public fallback until it has been tested here.
``TRIO_CANCEL_FAST_PATHS=off`` in the environment forces the fast path (1) off.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from types import CodeType
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from collections.abc import Iterable

_log = logging.getLogger("trio_cancel")

CHECKED_TRIO = ((0, 31), (0, 35))
"""The first and last Trio minor versions the write paths were tested on (inclusive)."""


def _trio_version() -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", trio.__version__)
    return (int(match[1]), int(match[2])) if match else None


TRIO_VERSION = _trio_version()
VERSION_CHECKED = TRIO_VERSION is not None and CHECKED_TRIO[0] <= TRIO_VERSION <= CHECKED_TRIO[1]
FAST_PATHS_FORCED_OFF = os.environ.get("TRIO_CANCEL_FAST_PATHS", "").lower() in (
    "off",
    "0",
    "no",
    "false",
)

_trio_run: object
try:
    from trio._core import _run as _trio_run
except ImportError:  # pragma: no cover - a future Trio
    _trio_run = None
# Each private name, or None if this Trio lacks it.
_RUN_CONTEXT: Any = getattr(_trio_run, "GLOBAL_RUN_CONTEXT", None)
_CancelReason: Any = getattr(_trio_run, "CancelReason", None)
_Runner: Any = getattr(_trio_run, "Runner", None)
_Task: Any = getattr(_trio_run, "Task", None)


def _attrs_fields(cls: object) -> set[str]:
    return {field.name for field in getattr(cls, "__attrs_attrs__", ())}


# ---------------------------------------------------------------------- 1. mass cancel

FAST_CANCEL = (
    VERSION_CHECKED
    and not FAST_PATHS_FORCED_OFF
    and _CancelReason is not None
    and callable(getattr(trio.CancelScope, "_cancel", None))
    and {"_cancel_status", "_registered_deadline", "_cancel_called", "_cancel_reason"}
    <= _attrs_fields(trio.CancelScope)
)


@trio.lowlevel.enable_ki_protection
def cancel_scopes(scopes: Iterable[trio.CancelScope], reason: str | None) -> tuple[object, ...]:
    """``cs.cancel(reason=reason)`` for every scope, with one ``CancelReason`` shared by all.

    Returns the ``CancelReason`` objects this call created (``trio_cancel.otel`` records its
    source for them, and for no other: a scope that already had a reason, inherited from an
    enclosing scope that something else cancelled, keeps it, as Trio's ``cancel()`` does).

    What ``CancelScope.cancel()`` does, minus what a mass cancel cannot afford:

    * ``cancel()`` builds a ``CancelReason`` (and the repr of the current task) per call: a
      third of the time of a mass cancel. One is built here for all of them.
    * For a scope without a deadline, Trio's bookkeeping of registered deadlines has nothing
      to do, yet costs a generator-based context manager per scope. Such a scope is marked
      cancelled directly and its ``CancelStatus`` recalculated, which is all ``_cancel`` then
      does; a scope with a deadline goes through Trio's private ``CancelScope._cancel``.
    * Each ``Cancelled`` Trio captures keeps the chain of Python frames it was raised under
      alive until its task runs. One loop here (one frame for all scopes) instead of a call
      per scope keeps that chain short: about 300 fewer bytes per cancelled task at the peak.

    ``KeyboardInterrupt``-protected, as ``CancelScope.cancel`` is. Without :data:`FAST_CANCEL`
    it calls the public method on each scope.
    """
    if not FAST_CANCEL:
        created: list[object] = []
        for cs in scopes:
            had = scope_reason_object(cs)
            cs.cancel(reason=reason)
            got = scope_reason_object(cs)
            if got is not None and got is not had:
                created.append(got)
        return tuple(created)
    try:
        source_task: str | None = repr(trio.lowlevel.current_task())
    except RuntimeError:
        source_task = None
    assert _CancelReason is not None
    shared = _CancelReason(reason=reason, source="explicit", source_task=source_task)
    for cs in scopes:
        if cs._registered_deadline != math.inf:
            cs._cancel(shared)
        elif not cs._cancel_called:
            if cs._cancel_reason is None:
                cs._cancel_reason = shared
            cs._cancel_called = True
            status = cs._cancel_status
            if status is not None:
                status.recalculate()
    return (shared,)


# ---------------------------------------------------------------------- 2. main-task injection

HAVE_MAIN_TASK_INJECTION = (
    VERSION_CHECKED
    and _Runner is not None
    and _Task is not None
    and all(
        callable(getattr(cls, name, None))
        for cls, name in ((_Runner, "deliver_ki"), (_Task, "_attempt_abort"))
    )
)


class _Injector(trio.abc.Instrument):
    """Throws one exception into the main task at the first moment it is blocked in an
    abortable wait (as Trio delivers a pending ``KeyboardInterrupt``)."""

    def __init__(self, main: Any, exc: BaseException) -> None:  # noqa: ANN401 - Trio's Task
        self.main = main
        self.exc: BaseException | None = exc

    def attempt(self) -> None:
        main, exc = self.main, self.exc
        if exc is None or main._abort_func is None:
            return
        self.exc = None

        def raise_it() -> None:
            raise exc

        trio.lowlevel.remove_instrument(self)
        main._attempt_abort(raise_it)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.main:
            self.attempt()

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if task is self.main and self.exc is not None:
            exc, self.exc = self.exc, None
            trio.lowlevel.remove_instrument(self)
            _log.error(
                "the main task ended before %r (raised by an on_cancel callback fired by "
                "cancel_after) could be delivered to it",
                exc,
                exc_info=(type(exc), exc, exc.__traceback__),
            )


def raise_in_main_task(exc: BaseException) -> bool:
    """From a system task: make ``exc`` propagate out of :func:`trio.run` as itself.

    Returns False if this Trio lacks the internals (the caller then re-raises).
    """
    if not HAVE_MAIN_TASK_INJECTION:
        return False
    runner = _RUN_CONTEXT.runner
    if isinstance(exc, KeyboardInterrupt):
        runner.deliver_ki()
        return True
    injector = _Injector(runner.main_task, exc)
    trio.lowlevel.add_instrument(injector)
    injector.attempt()
    return True


# ---------------------------------------------------------------------- 3. task tree reads

HAVE_CANCEL_STATE_READS = _Task is not None and "_cancel_status" in _attrs_fields(_Task)


def effectively_cancelled(task: trio.lowlevel.Task) -> bool | None:
    """Whether some scope enclosing ``task``'s current position is cancelled; None if unknown."""
    if not HAVE_CANCEL_STATE_READS:
        return None
    value = getattr(getattr(task, "_cancel_status", None), "effectively_cancelled", None)
    return value if isinstance(value, bool) else None


def scope_reason(scope: trio.CancelScope) -> str | None:
    """The reason ``scope`` was cancelled with; None if none or unknown."""
    if not HAVE_CANCEL_STATE_READS:
        return None
    reason = getattr(getattr(scope, "_cancel_reason", None), "reason", None)
    return reason if isinstance(reason, str) else None


def scope_reason_object(scope: trio.CancelScope) -> object | None:
    """The ``CancelReason`` object Trio keeps on ``scope`` (one object is shared by every scope
    a single cancellation reaches); None if none or unknown. ``trio_cancel.otel`` keys the
    source it records for a cancellation by it."""
    if not HAVE_CANCEL_STATE_READS:
        return None
    return getattr(scope, "_cancel_reason", None)


def innermost_cancelled_scope(task: trio.lowlevel.Task) -> trio.CancelScope | None:
    """The scope of ``task``'s innermost cancel status when that status is effectively
    cancelled (what a ``Cancelled`` raised now carries the reason of); None otherwise or if
    unknown."""
    if not HAVE_CANCEL_STATE_READS:
        return None
    status = getattr(task, "_cancel_status", None)
    if status is None or getattr(status, "effectively_cancelled", False) is not True:
        return None
    scope = getattr(status, "_scope", None)
    return scope if isinstance(scope, trio.CancelScope) else None


# ---------------------------------------------------------------------- 4. next wake-up

HAVE_NEXT_SEND = _Task is not None and "_next_send" in _attrs_fields(_Task)


def next_send(task: trio.lowlevel.Task) -> object:
    """The outcome the run loop will send into ``task`` at its next step (None if unknown)."""
    if not HAVE_NEXT_SEND:
        return None
    return getattr(task, "_next_send", None)


# ---------------------------------------------------------------------- 5. testing helper

HAVE_CANCEL_POINT_COUNTER = (
    VERSION_CHECKED and _Task is not None and "_cancel_points" in _attrs_fields(_Task)
)

TRIO_DIR = os.path.dirname(trio.__file__)
"""Frames from here are Trio's own (skipped when naming where a checkpoint is)."""


def checkpoint_codes() -> tuple[CodeType, CodeType] | None:
    """The code objects that tell a check's kind by which function adds 1, read at the call
    (never at import: a Trio that implements these differently must not break
    ``import trio_cancel``); None if either is not a plain Python function here.

    The first is ``checkpoint_if_cancelled``'s, whose ``+= 1`` follows its cancellation check
    (a fast path); the second ``checkpoint``'s, whose ``+= 1`` precedes its check (which
    happens when it resumes).
    """
    check_then_count = getattr(trio.lowlevel.checkpoint_if_cancelled, "__code__", None)
    count_then_check = getattr(trio.lowlevel.checkpoint, "__code__", None)
    if isinstance(check_then_count, CodeType) and isinstance(count_then_check, CodeType):
        return check_then_count, count_then_check
    return None


def require_cancel_point_counter(what: str) -> tuple[CodeType, CodeType]:
    """Raise ``RuntimeError`` unless the cancel point counter can be used here; return
    :func:`checkpoint_codes`."""
    if not HAVE_CANCEL_POINT_COUNTER:
        if not VERSION_CHECKED:
            raise RuntimeError(
                f"{what} counts Trio's cancel points by replacing Task._cancel_points, which was "
                f"checked on Trio {CHECKED_TRIO[0][0]}.{CHECKED_TRIO[0][1]} to "
                f"{CHECKED_TRIO[1][0]}.{CHECKED_TRIO[1][1]} only, not on Trio {trio.__version__}"
            )
        raise RuntimeError(
            f"{what} counts Trio's cancel points through Task._cancel_points, which Trio "
            f"{trio.__version__} does not have"
        )
    codes = checkpoint_codes()
    if codes is None:
        raise RuntimeError(
            f"{what} tells the kind of each cancel point by the Python code of "
            "trio.lowlevel.checkpoint_if_cancelled and trio.lowlevel.checkpoint, which Trio "
            f"{trio.__version__} does not implement as plain Python functions"
        )
    return codes


def count_cancel_points(task: trio.lowlevel.Task, counter_type: type[int]) -> None:
    """From now on, ``task``'s cancel point counter is an instance of ``counter_type`` (an
    ``int`` subclass whose ``__add__`` sees every check)."""
    task._cancel_points = counter_type(task._cancel_points)


def scheduler_rng() -> random.Random | None:
    """Trio's scheduler shuffle, or None if it moved (runs are then merely not reseeded)."""
    run_module = getattr(getattr(trio, "_core", None), "_run", None)
    rng = getattr(run_module, "_r", None)
    return rng if isinstance(rng, random.Random) else None
