"""Blocking calls in worker threads that a cancellation can stop: ``run_sync_interruptible``.

Trio's ``trio.to_thread.run_sync`` offers two answers to a cancellation: wait for the call to
return (the cancellation is ignored until then), or abandon the thread while it still runs.
A call that can be *interrupted* (SQLite's ``Connection.interrupt()``, psycopg's
``cancel_safe()``, closing a socket) allows a third: interrupt it, wait a bounded time for it to
return, and only then give up on it.

:func:`run_sync_interruptible` runs its call through ``trio.to_thread.run_sync(...,
abandon_on_cancel=True)``: Trio's own thread start, limiter, context copy and
``trio.from_thread`` plumbing, with nothing private. Trio hands the cancellation (or a
``KeyboardInterrupt``) to the waiting task at once; this module then *lands* the call, while
Trio's thread goes on running it. A database connection runs its calls in a thread of its own
(``_dbapi``), and waits for them with :func:`wait_call`, which lands them the same way.

One call (:class:`ThreadCall`) goes through these states, guarded by a claim and a lock
shared with its thread: *pending* (submitted, the thread has not started ``fn``), *running*,
*finished* (the outcome is stored), or *skipped* (cancelled while pending: ``fn`` never runs).

Invariants, and how each is kept:

1. ``fn`` runs at most once, and never after the caller was told it will not run: the thread
   moves *pending* to *running*, and the landing moves *pending* to *skipped*, each only after
   taking the call's one-item claim (an atomic ``list.pop``), so exactly one of them happens.
   A call whose claim the thread took counts as *running* until its outcome is stored.
2. ``interrupt()`` is called only from the Trio thread (by the landing, in the task that awaits
   the call), and only while the call is *running*: the lock is held around each
   ``interrupt()`` call, and the thread must take it to store the outcome. So no interrupt
   starts after ``fn``'s outcome was stored, and the awaiting task (and with it the next call
   on the same resource) resumes only after that. It is called when the cancellation (or the
   ``KeyboardInterrupt``) reaches the awaiting task, then again, while ``fn`` still runs and
   ``grace`` has not run out, 0.1, 0.3, 0.7 and 1.5 s after that first call and every second
   from then on (at most 8 calls with the default ``grace`` of 5 s); never again after one
   raised a ``BaseException`` that is not an ``Exception``.
3. A ``BaseException`` that reaches the landing is never swallowed: a ``KeyboardInterrupt``
   delivered to the awaiting task, or a ``BaseException`` from ``interrupt()``, propagates
   after the bounded wait, whatever the call's outcome (which becomes its ``__context__``).
4. The limiter token is held from before ``fn`` starts until its thread is done with it, and
   a call that ends in Trio (other than by abandonment) has given it back: the call is the
   limiter Trio's ``to_thread`` sees, Trio gives the token back when its thread reported
   back, and that release is what the landing waits for (a connection's thread reports
   through ``run_sync_soon``). An abandoned call's token comes back when its thread ends, if
   ``trio.run`` still runs then (Trio cannot give it back later).
5. ``abandoned_running`` counts a call only while it runs: the landing marks the call
   abandoned, and counts it, under the lock and only if it is still *running*; the thread
   counts it down itself when it stores the outcome, so also after ``trio.run`` returned.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import threading
import types
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
        interrupted: Calls that were running when their caller was cancelled (or got a
            ``KeyboardInterrupt``): ``interrupt()`` was called.
        abandoned: Interrupted calls that did not return within their grace period.
        abandoned_running: Of those, how many are still running in their threads now (a call
            is counted down when its thread ends, also after its ``trio.run`` returned).
    """

    started: int
    interrupted: int
    abandoned: int
    abandoned_running: int


@attrs.define
class _Counters:
    interrupted: int = 0
    abandoned: int = 0
    abandoned_running: int = 0


_COUNTERS = _Counters()
_COUNTERS_LOCK = threading.Lock()
# ``started`` is counted apart, by every call as its thread starts ``fn``: ``next()`` of an
# itertools.count is one step under the GIL, where the lock cost more than the rest of the
# thread's bookkeeping.
_STARTED = itertools.count()


def thread_call_statistics() -> ThreadCallStatistics:
    """How many interruptible thread calls started, were interrupted, were abandoned, and how
    many abandoned ones still run (process-wide). Not a checkpoint; never blocks."""
    with _COUNTERS_LOCK:
        counts = attrs.asdict(_COUNTERS)
    return ThreadCallStatistics(started=_count_of(_STARTED), **counts)


def _count_of(counter: itertools.count[int]) -> int:
    """The next value of ``counter`` (how many times ``next()`` was called on it), without
    advancing it: its repr is ``count(N)``."""
    return int(repr(counter)[6:-1])


def _count(field: str, delta: int = 1) -> None:
    with _COUNTERS_LOCK:
        setattr(_COUNTERS, field, getattr(_COUNTERS, field) + delta)


def _describe(fn: Callable[..., object]) -> str:
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    return getattr(target, "__qualname__", None) or type(target).__qualname__


class _SkippedError(Exception):
    """Raised in the thread for a call skipped while pending (nobody receives it)."""


class ThreadCall(Generic[T]):
    """One blocking call, ``fn(*args)``, run by a worker thread (Trio's, or a connection's
    own).

    A plain class whose rarely written fields default on the class: one is made per call, and
    attrs' generated ``__init__`` (which sets every field) cost more than the rest of a call's
    bookkeeping.
    """

    # Fields set by __init__.
    fn: Callable[..., T]
    args: tuple[Any, ...]
    name: str
    _lock: threading.Lock
    # Taken (popped) once, by the thread as it starts ``fn`` or by the Trio side as it skips
    # the call: ``list.pop`` is atomic, so exactly one of them gets it.
    _claim: list[None]
    # Run by a connection's thread: its run's token, to tell Trio when the call is done.
    _trio_token: trio.lowlevel.TrioToken | None
    # Run by trio.to_thread.run_sync: this call is the limiter it is given, and passes the
    # token on to the real one; Trio gives it back when its thread reported back, which is
    # how the Trio side learns that the thread is done (the thread does not report itself).
    _limiter: trio.CapacityLimiter | None

    # Fields that default on the class (written only on the paths that need them).
    state: Literal["pending", "running", "finished", "skipped"] = "pending"
    # The outcome, once ``state`` is "finished" (raw: an Outcome per call costs more than the
    # rest of this class; ``result`` builds one).
    _value: Any = None
    _error: BaseException | None = None
    _done: trio.Event | None = None  # made when first needed
    abandoned: bool = False
    # Called in the Trio thread once the thread is done with this call.
    on_done: Callable[[], None] | None = None
    _holds_token: bool = False  # Trio side only
    _waiter: trio.lowlevel.Task | None = None  # Trio side only: the task in wait_done()
    _reported: bool = False  # Trio side only: done is due

    def __init__(
        self,
        fn: Callable[..., T],
        name: str,
        args: tuple[Any, ...] = (),
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        """A call for a connection's thread (:meth:`run_in_thread`; made in the Trio thread,
        whose run it reports to), or, with ``limiter``, for ``trio.to_thread.run_sync``
        (:meth:`run_and_return`; then this call is the limiter Trio is given)."""
        self.fn = fn
        self.args = args
        self.name = name
        self._lock = threading.Lock()
        self._claim = [None]
        self._limiter = limiter
        self._trio_token = None if limiter is not None else trio.lowlevel.current_trio_token()

    @property
    def result(self) -> outcome.Outcome[T] | None:
        """``fn``'s outcome once the thread stored it, else None."""
        if self.state != "finished":  # set after the outcome, under the lock
            return None
        if self._error is not None:
            return outcome.Error(self._error)
        return outcome.Value(self._value)

    @property
    def done(self) -> trio.Event:
        """Set (in the Trio thread) when the thread is done with this call. Trio side only."""
        if self._done is None:
            self._done = trio.Event()
            if self._reported:
                self._done.set()
        return self._done

    def is_done(self) -> bool:
        """Trio side: whether ``done`` is set (without making the event)."""
        return self._reported

    def _report(self) -> None:
        self._reported = True
        if self._done is not None:
            self._done.set()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    async def wait_done(self) -> None:
        """Trio side: wait until the thread is done with this call, as ``done.wait()`` (a
        checkpoint; cancellable), for one task at a time, without making the event: every
        statement of a connection waits so."""
        if self._reported:
            await trio.lowlevel.checkpoint()
            return
        self._waiter = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort_wait)

    def _abort_wait(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        """As a limiter for ``trio.to_thread.run_sync``: take a token of the real limiter."""
        await self._limiter.acquire_on_behalf_of(borrower)  # type: ignore[union-attr]
        self._holds_token = True

    def release_on_behalf_of(self, borrower: object) -> None:
        """As a limiter: Trio gives the token back once its thread has reported back (so the
        thread is done with ``fn``), or when the thread could not be started."""
        self._holds_token = False
        try:
            self._limiter.release_on_behalf_of(borrower)  # type: ignore[union-attr]
        finally:
            self._report()

    def run_in_thread(self) -> None:
        """A connection thread's side: run ``fn`` unless skipped, store the outcome, tell
        Trio."""
        if self._begin():
            try:
                value = self.fn(*self.args)
            except BaseException as exc:  # noqa: BLE001, ASYNC103 - stored: the Trio side raises it
                self._finish(None, exc)
            else:
                self._finish(value, None)
        # If the run is over, nobody is left to tell.
        with contextlib.suppress(trio.RunFinishedError):
            self._trio_token.run_sync_soon(self._finished_in_trio)  # type: ignore[union-attr]

    def run_and_return(self) -> T:
        """The side of a thread of ``trio.to_thread.run_sync``: as :meth:`run_in_thread`, and
        return (or raise) what ``fn`` did (Trio tells its side)."""
        # _begin() and _finish(), inline: this is every call's path. The lock is taken with
        # its own methods rather than ``with`` (half the cost); nothing here can raise while
        # it is held (no KeyboardInterrupt reaches a worker thread).
        try:
            self._claim.pop()
        except IndexError:
            raise _SkippedError(self.name) from None
        self.state = "running"
        next(_STARTED)
        try:
            value = self.fn(*self.args)
        except BaseException as exc:
            self._finish(None, exc)
            raise
        lock = self._lock
        lock.acquire()
        self._value = value
        self.state = "finished"
        abandoned = self.abandoned
        lock.release()
        if abandoned:
            _count("abandoned_running", -1)  # here, not in Trio: its run may be over
        return value

    def _begin(self) -> bool:
        try:
            self._claim.pop()
        except IndexError:
            return False  # skipped
        self.state = "running"
        next(_STARTED)
        return True

    def _is_running(self) -> bool:
        # The thread took the claim (it may not have written "running" yet), and has not
        # stored the outcome. Called under the lock.
        return not self._claim and self.state != "finished" and self.state != "skipped"

    def _finish(self, value: T | None, error: BaseException | None) -> None:
        with self._lock:
            self._value, self._error = value, error
            self.state = "finished"
            abandoned = self.abandoned
        if abandoned:
            _count("abandoned_running", -1)  # here, not in Trio: its run may be over

    def forget_outcome(self) -> None:
        """Trio side, once the outcome was delivered: drop it (no reference cycle through an
        error's traceback)."""
        self._value = self._error = None

    def _finished_in_trio(self) -> None:
        on_done, self.on_done = self.on_done, None
        try:
            if on_done is not None:
                on_done()
        finally:
            self._report()

    def skip_if_pending(self) -> bool:
        """Trio side: if the thread has not started ``fn``, make sure it never will."""
        try:
            self._claim.pop()
        except IndexError:
            return False
        self.state = "skipped"
        return True

    def holds_token(self) -> bool:
        """Trio side: whether a thread of Trio's was given this call and still holds its
        limiter token (it will give it back soon, even for a skipped call)."""
        return self._holds_token

    def interrupt_if_running(self, interrupt: Callable[[], object]) -> bool:
        """Trio side: call ``interrupt()`` if (and only if) ``fn`` is running now. The lock is
        held during the call, so the thread cannot store its outcome in between."""
        with self._lock:
            if not self._is_running():
                return False
            interrupt()
            return True

    def abandon_if_running(self) -> bool:
        """Trio side: if ``fn`` still runs, mark the call abandoned and count it (the thread
        counts it down when it ends)."""
        with self._lock:
            if not self._is_running():
                return False
            self.abandoned = True
            with _COUNTERS_LOCK:
                _COUNTERS.abandoned += 1
                _COUNTERS.abandoned_running += 1
            return True


@trio.lowlevel.enable_ki_protection
async def wait_call(
    call: ThreadCall[T],
    *,
    interrupt: Callable[[], object] | None,
    grace: float,
    is_interruption: Callable[[BaseException], bool] | None,
    what: str,
) -> T:
    """Wait for a submitted ``call`` (run by :meth:`ThreadCall.run_in_thread`); on
    cancellation, or a ``KeyboardInterrupt`` delivered to this task, interrupt it and land it
    (module docstring). Used by the database connections."""
    try:
        await call.wait_done()
    # A completed call wins (returned although cancelled: the next checkpoint delivers it);
    # otherwise land() re-raises what stopped the wait. Its waits are shielded and bounded.
    except BaseException as stopping:  # noqa: BLE001, ASYNC103 - re-raised by land()
        return await land(call, stopping, interrupt, grace, is_interruption, what)  # noqa: ASYNC102, ASYNC104
    if call._error is None:  # the thread is done and nothing skips the call but land()
        return call._value  # type: ignore[no-any-return]
    result = call.result
    assert result is not None
    return result.unwrap()


@attrs.define
class _Interrupter:
    """Calls ``interrupt()`` for one landing and keeps what it raised."""

    call: ThreadCall[Any]
    interrupt: Callable[[], object] | None
    calls: int = 0
    error: Exception | None = None  # the first Exception: chained onto what is raised
    fatal: BaseException | None = None  # a BaseException: propagates; no more calls after it

    def __call__(self) -> None:
        if self.interrupt is None or self.fatal is not None:
            return
        try:
            if not self.call.interrupt_if_running(self.interrupt):
                return
        except Exception as exc:  # noqa: BLE001 - chained onto what the landing raises
            if self.error is None:
                self.error = exc
        except BaseException as exc:  # noqa: BLE001, ASYNC103 - the landing raises it after its wait
            self.fatal = exc
        self.calls += 1
        if self.calls == 1:
            _count("interrupted")


@trio.lowlevel.enable_ki_protection
async def land(  # noqa: ASYNC910 - what stopped the wait is being handled: no checkpoint owed
    call: ThreadCall[T],
    stopping: BaseException,
    interrupt: Callable[[], object] | None,
    grace: float,
    is_interruption: Callable[[BaseException], bool] | None,
    what: str,
) -> T:
    """The awaiting task was stopped by ``stopping`` (a ``trio.Cancelled``, or a
    ``KeyboardInterrupt`` or other ``BaseException`` delivered to it) while ``call`` was
    pending or running: skip it, or interrupt it and wait for it, shielded, up to ``grace``,
    then raise (or return the value of a call that won over a cancellation)."""
    if call.skip_if_pending():
        # fn will never run. A thread that was given it gives its limiter token back at
        # once: wait for that, so the token is back before this call ends. Not bounded by
        # grace (with grace=0 the token would still be out): the thread never runs fn, so
        # nothing can keep it.
        if call.holds_token():
            with trio.CancelScope(shield=True):
                await call.done.wait()
        raise stopping
    interrupter = _Interrupter(call, interrupt)
    interrupter()
    late: BaseException | None = None  # delivered during the wait (a second Ctrl+C)
    if not call.is_done():
        try:
            with trio.move_on_after(grace, shield=True):
                await _wait_interrupting(call, interrupter)
        except BaseException as exc:  # noqa: BLE001, ASYNC103 - raised below, after the bookkeeping
            late = exc
    if call.result is not None and not call.is_done():
        # fn has returned, and Trio's report of it (which gives the limiter token back) is
        # queued: wait for it, whatever grace is (grace=0 included), so that a call that ends
        # here, not abandoned, has given its token back. Nothing can hold the report up.
        try:
            with trio.CancelScope(shield=True):
                await call.done.wait()
        except BaseException as exc:  # noqa: BLE001, ASYNC103 - raised below, after the bookkeeping
            late = late or exc
    result = call.result
    if result is None and call.abandon_if_running():
        _warn_abandoned(call, grace, what, late, interrupted=interrupter.calls > 0)
    result = call.result  # a call that ended meanwhile has its outcome
    error = result.error if isinstance(result, outcome.Error) else None
    stopped_by = isinstance(error, trio.Cancelled) or (  # from from_thread.check_cancelled()
        isinstance(error, Exception)  # a KeyboardInterrupt or SystemExit of fn's is its own
        and interrupter.calls > 0
        and (is_interruption is None or is_interruption(error))
    )
    # What propagates, first match: a BaseException delivered during the wait, one raised
    # by interrupt(), what stopped the wait if it is not a cancellation, and then for a
    # cancellation: fn's value (a completed call wins), fn's own error, or the cancellation.
    if late is not None:
        _set_context(late, stopping)
        raise late
    if interrupter.fatal is not None:
        _set_context(interrupter.fatal, stopping)
        raise interrupter.fatal
    if not isinstance(stopping, trio.Cancelled) or result is None:
        if error is not None:
            _set_context(stopping, error)
        raise stopping from interrupter.error
    if isinstance(result, outcome.Value):
        if interrupter.error is not None:
            # The call won: its value is returned; the failed interrupt is not lost.
            warnings.warn(
                f"{what}: interrupt() raised {interrupter.error!r}, and {call.name} returned "
                "normally anyway",
                RuntimeWarning,
                stacklevel=3,
            )
        return result.value  # type: ignore[no-any-return]  # noqa: ASYNC910 - the call won
    assert error is not None
    if stopped_by:
        # The interrupt's own error: the call was stopped, which is the cancellation.
        stopping.__context__ = error
        raise stopping from interrupter.error
    if interrupter.error is not None:
        _set_context(error, interrupter.error)
    raise error


def _set_context(exc: BaseException, context: BaseException) -> None:
    if exc.__context__ is None and exc is not context:
        exc.__context__ = context


async def _wait_interrupting(call: ThreadCall[Any], interrupter: _Interrupter) -> None:
    """Wait for ``call``; while it still runs, repeat ``interrupt()`` after 0.1 s, 0.2 s, ...
    (at most every second). A driver that had not yet begun the statement when the first
    interrupt came ignores it (SQLite's and PostgreSQL's do): the repeat stops it."""
    pause = 0.1
    while True:
        with trio.move_on_after(pause):
            await call.done.wait()
            return
        interrupter()
        pause = min(2 * pause, 1.0)


def _warn_abandoned(
    call: ThreadCall[Any], grace: float, what: str, late: BaseException | None, *, interrupted: bool
) -> None:
    handle = CURRENT_HANDLE.get()
    if handle is not None and handle._task is trio.lowlevel.current_task():
        handle._note_abandoned(call.name)
    if late is not None:
        why = f"was still running when {type(late).__name__} arrived during the wait for it"
    else:
        why = f"did not return within the grace period of {grace:g} s"
        if interrupted:
            why += " after its interrupt"
    warnings.warn(
        f"{what}: {call.name} {why}; its thread was abandoned and may still be running",
        CleanupTimeoutWarning,
        stacklevel=4,
    )


@trio.lowlevel.enable_ki_protection
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

    A drop-in for :func:`trio.to_thread.run_sync` in everything but cancellation (it runs
    through it, with ``abandon_on_cancel=True``): ``fn`` runs in a copy of the caller's
    context (contextvars), and :func:`trio.from_thread.run` and
    :func:`trio.from_thread.run_sync` work inside it (as with ``abandon_on_cancel=True``, they
    run in Trio's system nursery, so the caller's cancellation does not reach them).
    :func:`trio.from_thread.check_cancelled` inside ``fn`` returns while the caller has not
    been cancelled, and raises from the moment the cancellation reached the caller (the
    moment ``interrupt()`` is first called) on: :exc:`trio.Cancelled`, or
    :exc:`KeyboardInterrupt` if that is what reached it. A cancellation that does not reach
    the caller (its scope is shielded) does not make it raise. ``fn`` that stops this way is
    stopped by the cancellation, whatever ``is_interruption`` says.

    Args:
        fn: A synchronous function, run in a thread from Trio's thread cache.
        interrupt: Called from the Trio thread, only while ``fn`` runs, when the caller is
            cancelled (or gets a ``KeyboardInterrupt``); then repeated while ``fn`` still
            runs, 0.1, 0.3, 0.7 and 1.5 s after the first call and every second from then
            on, until ``fn`` returns or ``grace`` runs out (at most 8 calls with the default
            ``grace``), for a driver that had not yet begun its statement when the first call
            came. Never called again after it raised a ``BaseException`` that is not an
            ``Exception``. It must be quick (it runs on the Trio thread) and safe to repeat.
            Never called after ``fn`` has returned; but a driver may keep its effect: SQLite
            keeps the interrupt flag while another statement of the connection is active (a
            raw connection's other cursor mid-iteration), and then the next statement fails
            too. Finish or close such cursors (the library's own connections consume theirs
            inside the job).
        grace: Seconds to wait for ``fn`` to return after the first ``interrupt()``.
        limiter: As for :func:`trio.to_thread.run_sync` (default: Trio's default limiter).
        is_interruption: Tells the interrupt's own error (SQLite's
            ``OperationalError('interrupted')``) from any other error of ``fn``; by default
            every ``Exception`` ``fn`` raises after the interrupt counts as the interrupt's
            (never a ``KeyboardInterrupt`` or ``SystemExit`` of its own, which propagates);
            a :exc:`trio.Cancelled` from :func:`trio.from_thread.check_cancelled` always
            does.

    Returns:
        What ``fn`` returned: also when it returned as the cancellation arrived (a completed
        call wins; Trio then delivers the cancellation at the caller's next checkpoint).

    Raises:
        trio.Cancelled: The caller was cancelled and ``fn`` did not complete: it never started,
            it ended with the interrupt's error (which becomes the ``__context__``), or it was
            abandoned. An ``Exception`` from ``interrupt()`` is its ``__cause__``.
        KeyboardInterrupt: Delivered to the caller (Ctrl+C in the main task) while ``fn`` was
            pending or running: ``fn`` never ran, or it was interrupted and waited for as on a
            cancellation; then the ``KeyboardInterrupt`` propagates, whatever ``fn`` returned
            or raised (that error is its ``__context__``). A second one during that wait
            abandons the call at once and propagates.
        BaseException: Any ``BaseException`` that is not an ``Exception`` raised by
            ``interrupt()`` (``KeyboardInterrupt``, ``SystemExit``): it propagates after the
            wait, whatever ``fn`` did, with the cancellation as its ``__context__``.
        TypeError: ``fn`` is an async function ("await it directly") or not callable; or
            ``interrupt`` is not a synchronous callable.
        ValueError: ``grace`` is negative or NaN.
        RuntimeError: Not awaited inside :func:`trio.run`.

    Any other error from ``fn`` propagates unchanged.

    Cancellation:
        Always a checkpoint. Cancelled before ``fn`` starts (waiting for a limiter token, or
        before the thread picks it up): ``fn`` never runs. Cancelled while it runs:
        ``interrupt()`` is called, then the caller waits, shielded, up to ``grace`` seconds for
        ``fn`` to return, repeating ``interrupt()`` as described above. If ``fn`` does not
        return, the thread is abandoned: a :class:`CleanupTimeoutWarning` names the call,
        :func:`thread_call_statistics` counts it (``abandoned_running`` until its thread
        ends, also after ``trio.run`` returned), and a task spawned by
        :class:`GracefulShutdown` lists it in its :class:`TaskLanding`. The limiter token is
        held until the thread is done with ``fn`` (if ``trio.run`` ends first, it is never
        given back, as with :func:`trio.to_thread.run_sync`). A ``KeyboardInterrupt``
        delivered to the caller is handled the same way, then propagates.
    """
    # _known_sync() for both, inline (each call pays for it: a plain function is the usual
    # case, and a function call costs as much as the check).
    if (
        type(fn) is not _FunctionType or fn.__code__.co_flags & _ASYNC_CODE or _MARKED_COROUTINES
    ) and not _known_sync(fn):
        _check_blocking_callable(fn, "run_sync_interruptible()")
    if (
        type(interrupt) is not _FunctionType
        or interrupt.__code__.co_flags & _ASYNC_CODE
        or _MARKED_COROUTINES
    ) and not _known_sync(interrupt):
        check_sync_callable(interrupt, "run_sync_interruptible(interrupt=)")
    if grace != 5.0 or type(grace) is not float:  # the default needs no check
        grace = check_grace(grace)
    if is_interruption is not None:
        check_sync_callable(is_interruption, "run_sync_interruptible(is_interruption=)")
    try:
        if limiter is None:
            limiter = trio.to_thread.current_default_thread_limiter()
        else:
            if not callable(getattr(limiter, "acquire_on_behalf_of", None)):
                raise TypeError(
                    f"limiter must be a trio.CapacityLimiter, not {type(limiter).__name__}"
                )
            trio.lowlevel.current_task()
    except RuntimeError:  # not in trio.run
        raise RuntimeError("run_sync_interruptible() must be awaited inside trio.run") from None
    name = getattr(fn, "__qualname__", None) or _describe(fn)
    call: ThreadCall[T] = ThreadCall(fn, name, args, limiter)
    try:
        return await trio.to_thread.run_sync(
            call.run_and_return,
            abandon_on_cancel=True,
            limiter=call,  # type: ignore[arg-type] # a limiter-like object, as Trio allows
            thread_name="trio_cancel " + name,
        )
    except BaseException as exc:  # noqa: ASYNC103 - re-raised, or by land()
        result = call.result
        if isinstance(exc, Exception | GeneratorExit) or (
            isinstance(result, outcome.Error) and result.error is exc
        ):
            # fn's own error, Trio's (a limiter's, fn returning a coroutine), or the coroutine
            # being closed: as it is.
            call.forget_outcome()
            raise
        stopping = exc  # a Cancelled, or a KeyboardInterrupt delivered to this task
        del exc
        return await land(  # noqa: ASYNC102, ASYNC104 - shielded and bounded inside
            call,
            stopping,
            interrupt,
            grace,
            is_interruption,
            "run_sync_interruptible()",
        )


_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


def _known_sync(fn: object) -> bool:
    """A fast yes for what is surely a synchronous callable (a plain function, a method of
    one, a builtin); False means "run the full check"."""
    if type(fn) is _MethodType:
        fn = fn.__func__
    kind = type(fn)
    if kind is _FunctionType:
        return not fn.__code__.co_flags & _ASYNC_CODE and (  # type: ignore[attr-defined]
            # A sync function marked as a coroutine function (Python 3.12+), which
            # inspect.iscoroutinefunction() reports as one.
            not _MARKED_COROUTINES or getattr(fn, "_is_coroutine_marker", None) is None
        )
    return kind is _BuiltinFunctionType


_MethodType, _FunctionType, _BuiltinFunctionType = (
    types.MethodType,
    types.FunctionType,
    types.BuiltinFunctionType,
)
_MARKED_COROUTINES = hasattr(inspect, "markcoroutinefunction")


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
