"""Blocking calls in worker threads that a cancellation can stop: ``run_sync_interruptible``.

Trio's ``trio.to_thread.run_sync`` offers two answers to a cancellation: wait for the call to
return (the cancellation is ignored until then), or abandon the thread while it still runs.
A call that can be *interrupted* (SQLite's ``Connection.interrupt()``, psycopg's
``cancel_safe()``, closing a socket) allows a third: interrupt it, wait a bounded time for it to
return, and only then give up on it.

One call (:class:`ThreadCall`) goes through these states, guarded by a lock shared with its
thread: *pending* (submitted, the thread has not started ``fn``), *running*, *finished* (the
outcome is stored), or *skipped* (cancelled while pending: ``fn`` never runs). The Trio side
learns of the end through ``TrioToken.run_sync_soon``, which also releases the limiter token.

Invariants:

1. ``fn`` runs at most once, and never after the caller was told it will not run.
2. ``interrupt()`` is called at most once per call, from the Trio thread, and only while the
   call is running (never before it started, never after its outcome was stored): an
   interrupt cannot hit the next statement of the same connection, which starts only after
   this call has returned in Trio.
3. The limiter token is released when the thread has finished ``fn`` (or skipped it), on every
   path, abandonment included (then when the abandoned call ends).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import warnings
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, TypeVarTuple, final

import attrs
import outcome
import trio

from ._checks import check_grace, check_sync_callable
from ._guard import CleanupTimeoutWarning
from ._task import CURRENT_HANDLE

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")


@final
@attrs.frozen
class ThreadCallStatistics:
    """Counts of :func:`run_sync_interruptible` calls (and database statements) in this
    process, from :func:`thread_call_statistics`.

    Attributes:
        started: Calls whose function started in a worker thread.
        interrupted: Calls whose caller was cancelled while the function ran (``interrupt()``
            was called).
        abandoned: Interrupted calls that did not return within their grace period.
        abandoned_running: Of those, how many are still running in their threads now.
    """

    started: int
    interrupted: int
    abandoned: int
    abandoned_running: int


@attrs.define
class _Counters:
    started: int = 0
    interrupted: int = 0
    abandoned: int = 0
    abandoned_running: int = 0


_COUNTERS = _Counters()
_COUNTERS_LOCK = threading.Lock()


def thread_call_statistics() -> ThreadCallStatistics:
    """How many interruptible thread calls started, were interrupted, were abandoned, and how
    many abandoned ones still run (process-wide). Not a checkpoint; never blocks."""
    with _COUNTERS_LOCK:
        return ThreadCallStatistics(**attrs.asdict(_COUNTERS))


def _count(field: str, delta: int = 1) -> None:
    with _COUNTERS_LOCK:
        setattr(_COUNTERS, field, getattr(_COUNTERS, field) + delta)


def _describe(fn: Callable[..., object]) -> str:
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    return getattr(target, "__qualname__", None) or type(target).__qualname__


@attrs.define(eq=False, repr=False)
class ThreadCall(Generic[T]):
    """One blocking call, run by a worker thread (Trio's, or a connection's own)."""

    fn: Callable[[], T]
    name: str
    _trio_token: trio.lowlevel.TrioToken = attrs.field(
        factory=trio.lowlevel.current_trio_token, init=False
    )
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    state: Literal["pending", "running", "finished", "skipped"] = attrs.field(
        default="pending", init=False
    )
    result: outcome.Outcome[T] | None = attrs.field(default=None, init=False)
    done: trio.Event = attrs.field(factory=trio.Event, init=False)
    abandoned: bool = attrs.field(default=False, init=False)
    # Called in the Trio thread once the thread is done with this call (limiter release).
    on_done: Callable[[], None] | None = attrs.field(default=None, init=False)

    def run_in_thread(self) -> None:
        """The worker thread's side: run ``fn`` unless skipped, store the outcome, tell Trio."""
        with self._lock:
            if self.state == "skipped":
                self._tell_trio()
                return
            self.state = "running"
        _count("started")
        result: outcome.Outcome[T] = outcome.capture(self.fn)
        with self._lock:
            self.result = result
            self.state = "finished"
        self._tell_trio()

    def _tell_trio(self) -> None:
        # If the run is over, nobody is left to tell.
        with contextlib.suppress(trio.RunFinishedError):
            self._trio_token.run_sync_soon(self._finished_in_trio)

    def _finished_in_trio(self) -> None:
        if self.abandoned:
            _count("abandoned_running", -1)
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            on_done()
        self.done.set()

    def skip_if_pending(self) -> bool:
        """Trio side: if the thread has not started ``fn``, make sure it never will."""
        with self._lock:
            if self.state == "pending":
                self.state = "skipped"
                return True
            return False

    def interrupt_if_running(self, interrupt: Callable[[], object]) -> bool:
        """Trio side: call ``interrupt()`` if (and only if) ``fn`` is running now. The lock is
        held during the call, so the thread cannot store its outcome in between."""
        with self._lock:
            if self.state != "running":
                return False
            interrupt()
            return True


async def wait_call(
    call: ThreadCall[T],
    *,
    interrupt: Callable[[], object] | None,
    grace: float,
    is_interruption: Callable[[BaseException], bool] | None,
    what: str,
) -> T:
    """Wait for a submitted ``call``; on cancellation, interrupt it and land it (module
    docstring). Used by :func:`run_sync_interruptible` and the database connections."""
    try:
        await call.done.wait()
    # A completed call wins (returned although cancelled: the next checkpoint delivers it);
    # otherwise _land re-raises this Cancelled. Its waits are shielded and bounded by grace.
    except trio.Cancelled as cancelled:  # noqa: ASYNC103
        return await _land(call, cancelled, interrupt, grace, is_interruption, what)  # noqa: ASYNC102, ASYNC104
    result = call.result
    assert result is not None
    return result.unwrap()


async def _land(  # noqa: ASYNC910 - a Cancelled is being handled: no checkpoint is owed
    call: ThreadCall[T],
    cancelled: trio.Cancelled,
    interrupt: Callable[[], object] | None,
    grace: float,
    is_interruption: Callable[[BaseException], bool] | None,
    what: str,
) -> T:
    if call.skip_if_pending():
        raise cancelled  # fn will never run
    interrupted = False
    interrupt_error: BaseException | None = None
    if call.result is None and interrupt is not None:
        try:
            interrupted = call.interrupt_if_running(interrupt)
        except BaseException as exc:  # noqa: BLE001, ASYNC103 - chained onto what is raised below
            interrupted = True
            interrupt_error = exc
        if interrupted:
            _count("interrupted")
    if call.result is None:
        with trio.move_on_after(grace, shield=True):
            await _wait_interrupting(call, interrupt if interrupted else None)
    result = call.result
    if result is None:
        _abandon(call, grace, what)
        raise cancelled from interrupt_error
    if isinstance(result, outcome.Value):
        value: T = result.value
        if interrupt_error is not None:
            # The call won: its value is returned; the failed interrupt is not lost.
            warnings.warn(
                f"{what}: interrupt() raised {interrupt_error!r}, and {call.name} returned "
                "normally anyway",
                RuntimeWarning,
                stacklevel=3,
            )
        return value  # noqa: ASYNC910 - called with a Cancelled in hand; the call won
    assert isinstance(result, outcome.Error)
    error = result.error
    if interrupted and (is_interruption is None or is_interruption(error)):
        # The interrupt's own error: the call was stopped, which is the cancellation.
        cancelled.__context__ = error
        raise cancelled from interrupt_error
    if interrupt_error is not None:
        error.__context__ = interrupt_error
    raise error


async def _wait_interrupting(call: ThreadCall[Any], interrupt: Callable[[], object] | None) -> None:
    """Wait for ``call``; while it still runs, repeat ``interrupt()`` after 0.1 s, 0.2 s, ...
    (at most every second). A driver that had not yet begun the statement when the first
    interrupt came ignores it (SQLite's and PostgreSQL's do): the repeat stops it."""
    pause = 0.1
    while True:
        with trio.move_on_after(pause):
            await call.done.wait()
            return
        if interrupt is not None:
            with contextlib.suppress(Exception):  # the first one's error is already reported
                call.interrupt_if_running(interrupt)
        pause = min(2 * pause, 1.0)


def _abandon(call: ThreadCall[Any], grace: float, what: str) -> None:
    call.abandoned = True
    _count("abandoned")
    _count("abandoned_running")
    handle = CURRENT_HANDLE.get()
    if handle is not None and handle._task is trio.lowlevel.current_task():
        handle._note_abandoned(call.name)
    warnings.warn(
        f"{what}: {call.name} did not return within the grace period of {grace:g} s after "
        "its interrupt; its thread was abandoned and may still be running",
        CleanupTimeoutWarning,
        stacklevel=4,
    )


async def run_sync_interruptible(
    fn: Callable[[*PosArgsT], T],
    *args: *PosArgsT,
    interrupt: Callable[[], object],
    grace: float = 5.0,
    limiter: trio.CapacityLimiter | None = None,
    is_interruption: Callable[[BaseException], bool] | None = None,
) -> T:
    """Run ``fn(*args)`` in a worker thread; if the caller is cancelled, interrupt it.

    The blocking counterpart of cancelling a future in tokio: ``fn`` is a call that some other
    call can stop (``sqlite3.Connection.interrupt``, psycopg's ``Connection.cancel_safe``,
    ``socket.shutdown``...), and ``interrupt`` is that other call.

    Args:
        fn: A synchronous function, run in a thread from Trio's thread cache.
        interrupt: Called (once, from the Trio thread) when the caller is cancelled while
            ``fn`` runs.
        grace: Seconds to wait for ``fn`` to return after ``interrupt()``.
        limiter: As for :func:`trio.to_thread.run_sync` (default: Trio's default limiter).
        is_interruption: Tells the interrupt's own error (SQLite's
            ``OperationalError('interrupted')``) from any other error of ``fn``; by default
            every error ``fn`` raises after the interrupt counts as the interrupt's.

    Returns:
        What ``fn`` returned: also when it returned as the cancellation arrived (a completed
        call wins; Trio then delivers the cancellation at the caller's next checkpoint).

    Raises:
        trio.Cancelled: The caller was cancelled and ``fn`` did not complete: it never started,
            it ended with the interrupt's error (which becomes the ``__context__``), or it was
            abandoned. An exception from ``interrupt()`` is its ``__cause__``.
        TypeError: ``fn`` is an async function ("await it directly") or not callable; or
            ``interrupt`` is not a synchronous callable.
        ValueError: ``grace`` is negative or NaN.
        RuntimeError: Not awaited inside :func:`trio.run`.

    Any other error from ``fn`` propagates unchanged.

    Cancellation:
        Always a checkpoint. Cancelled before ``fn`` starts (waiting for a limiter token, or
        before the thread picks it up): ``fn`` never runs. Cancelled while it runs:
        ``interrupt()`` is called, then the caller waits, shielded, up to ``grace`` seconds for
        ``fn`` to return; while ``fn`` still runs, ``interrupt()`` is repeated after 0.1 s,
        0.2 s, 0.4 s... (at most every second), for a driver that had not yet begun its
        statement when the first one came. If ``fn`` does not return, the thread is abandoned: a
        :class:`CleanupTimeoutWarning` names the call, :func:`thread_call_statistics` counts
        it, and a task spawned by :class:`GracefulShutdown` lists it in its
        :class:`TaskLanding`. The limiter token is held until the thread is done with ``fn``.
    """
    _check_blocking_callable(fn, "run_sync_interruptible()")
    check_sync_callable(interrupt, "run_sync_interruptible(interrupt=)")
    grace = check_grace(grace)
    if is_interruption is not None:
        check_sync_callable(is_interruption, "run_sync_interruptible(is_interruption=)")
    if not trio.lowlevel.in_trio_run():
        raise RuntimeError("run_sync_interruptible() must be awaited inside trio.run")
    if limiter is None:
        limiter = trio.to_thread.current_default_thread_limiter()
    elif not callable(getattr(limiter, "acquire_on_behalf_of", None)):
        raise TypeError(f"limiter must be a trio.CapacityLimiter, not {type(limiter).__name__}")

    call: ThreadCall[T] = ThreadCall(functools.partial(fn, *args), _describe(fn))
    await limiter.acquire_on_behalf_of(call)  # a checkpoint: cancelled here, nothing started
    call.on_done = functools.partial(limiter.release_on_behalf_of, call)
    try:
        trio.lowlevel.start_thread_soon(
            call.run_in_thread, _ignore, name=f"trio_cancel {call.name}"
        )
    except BaseException:
        limiter.release_on_behalf_of(call)
        raise
    return await wait_call(
        call,
        interrupt=interrupt,
        grace=grace,
        is_interruption=is_interruption,
        what="run_sync_interruptible()",
    )


def _ignore(_: outcome.Outcome[None]) -> None:
    """``start_thread_soon``'s deliver: the call reports to Trio by itself."""


def _check_blocking_callable(fn: object, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"{what} needs a callable, not {type(fn).__name__}")
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"{what} runs blocking, synchronous code in a thread; {_describe(target)!r} is an "
            "async function: await it directly"
        )
