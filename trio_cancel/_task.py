"""Abortable, joinable tasks: spawn, TaskHandle and AbortHandle.

Every task still lives in a Trio nursery; a handle only adds a cancel scope of the task's own
around the function, and a record of how the task ended.

Invariants:

1. A handle's scope is created at spawn and cancelled only by ``abort()`` or by the token it
   is bound to; it is entered by the task's wrapper, around the function and nothing else.
2. ``outcome`` is set exactly once, by the wrapper, when the task ends; it is ``Aborted`` iff the
   task ended through a ``trio.Cancelled`` (its own, or one from outside, which still
   propagates), or never started because its scope was already cancelled.
3. A task's ``Exception`` becomes ``Failed`` and never reaches the nursery, also one that the
   task's scope leaves when it takes its own cancellation out of a group (an aborted task
   whose inner nursery failed while unwinding): it is captured outside the scope; and one
   that comes out in a group beside a cancellation from outside: only the cancellation
   propagates. Other ``BaseException`` s are recorded and re-raised, as Trio would.
4. Nothing on the cancel path allocates per task beyond what Trio itself does, except the
   outcome value.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import itertools
import logging
import os
from inspect import CO_COROUTINE
from types import FunctionType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, TypeVarTuple, final, overload

import attrs
import trio

from . import _hooks
from ._checks import (
    check_nursery,
    check_reason,
    check_trio_thread,
    coroutine_or_error,
    with_token,
)
from ._exceptions import OperationCancelledError
from ._outcome import Aborted, Completed, Failed, Outcome, outcome_of_base_exception
from ._token import CancellationToken
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    import anyio.abc

    # Where a task can run: a Trio nursery, or an anyio task group on anyio's Trio backend.
    Nursery = trio.Nursery | anyio.abc.TaskGroup

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")

_log = logging.getLogger("trio_cancel")
_TRIO_DIR = os.path.dirname(inspect.getfile(trio)) + os.sep  # where Trio's frames come from
_ids = itertools.count(1)
# What a finished handle holds instead of its task's scope: never entered, never cancelled.
_ENDED_SCOPE = trio.CancelScope()

# The handle of the task running in this context (each Trio task has its own context copy, so a
# plain child task inherits its parent's value: compare ``handle._task`` before trusting it).
CURRENT_HANDLE: contextvars.ContextVar[TaskHandle[Any] | None] = contextvars.ContextVar(
    "trio_cancel.current_handle", default=None
)


# ------------------------------------------------------------------ handles


def _break_cycles_through(error: BaseException) -> None:
    """Keep a stored task error from reaching the task's own handle through frames that are
    not the task's (the failure path only: this walks ``error``, its groups and contexts).

    Trio raises a task's ``Cancelled`` inside the ``cancel()`` call and throws it into the task
    later, so that exception's traceback ends in the canceller's stack, and its ``f_back``
    chain keeps that stack alive: frames that hold the handle (the caller's ``handle``). A
    task that fails while it is aborted (a cleanup that raises) stores an error whose context
    is that ``Cancelled``: a cycle only the collector frees. So:

    * from each ``trio.Cancelled``, the traceback entries after a stack switch are cut (the
      first entry whose caller is not the entry before it, and all after it: the task's own
      frames come first and stay);
    * each finished frame of Trio's in a traceback (a nursery's or a scope's exit, which keep
      as locals the cancellation they took out of a group, the nursery and its parent task)
      has its locals cleared. An entry after the first of a traceback is a frame the
      exception propagated out of, so it has finished; the first is never touched.
    """
    stack = [error]
    seen: set[int] = set()
    while stack:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        tb = exc.__traceback__
        cancelled = isinstance(exc, trio.Cancelled)
        while tb is not None and (nxt := tb.tb_next) is not None:
            frame = nxt.tb_frame
            if cancelled and frame.f_back is not None and frame.f_back is not tb.tb_frame:
                tb.tb_next = None
                break
            if frame.f_code.co_filename.startswith(_TRIO_DIR):
                with contextlib.suppress(RuntimeError):  # cannot happen: it has finished
                    frame.clear()
            tb = nxt
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        if exc.__context__ is not None:
            stack.append(exc.__context__)
        if exc.__cause__ is not None:
            stack.append(exc.__cause__)


@final
@attrs.define(eq=False, repr=False)
class TaskHandle(Generic[T], metaclass=NoPublicConstructor):
    """A task started by :func:`spawn` (tokio ``JoinHandle``). Not constructed by users.

    States: *pending* (started, not yet running), *running*, *finished* (``outcome`` set).
    :meth:`abort` moves a pending or running task towards finished; it has no effect on a
    finished one. Dropping every reference to a handle never cancels its task (as dropping a
    ``JoinHandle`` detaches). A ``Failed`` outcome that nobody read (through :meth:`join` or
    :attr:`outcome`) is logged on the ``trio_cancel`` logger when the handle is discarded, as
    asyncio reports "exception was never retrieved".
    """

    _coro: Coroutine[Any, Any, T] | None
    _name: str
    _token: CancellationToken | None
    _on_done: Callable[[TaskHandle[T]], None] | None = None
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _outcome: Outcome[T] | None = attrs.field(default=None, init=False)
    _done: trio.Event | None = attrs.field(default=None, init=False)
    _task: trio.lowlevel.Task | None = attrs.field(default=None, init=False)
    _abort_reason: str | None = attrs.field(default=None, init=False)
    _aborted_first: bool = attrs.field(default=False, init=False)
    # Set while a Failed outcome waits to be retrieved: it logs it if the handle goes first.
    _report: _FailureReport | None = attrs.field(default=None, init=False)
    _id: int = attrs.field(factory=_ids.__next__, init=False)
    # Blocking calls of this task that were abandoned (run_sync_interruptible), by name.
    _abandoned: list[str] | None = attrs.field(default=None, init=False)

    @property
    def name(self) -> str:
        """The ``name=`` given to spawn, else the function's qualified name."""
        return self._name

    @property
    def id(self) -> int:
        """A number unique to this task within the process (tokio ``task::Id``)."""
        return self._id

    @property
    def outcome(self) -> Outcome[T] | None:
        """How the task ended; ``None`` until it has. Reading a set outcome retrieves it."""
        if self._report is not None:
            self._mark_retrieved()
        return self._outcome

    def _mark_retrieved(self) -> None:
        report, self._report = self._report, None
        if report is not None:
            report.failed = None  # read: its __del__ logs nothing

    @property
    def _retrieved(self) -> bool:
        """Whether nothing is left to report: no ``Failed`` outcome, or one that was read."""
        return self._report is None

    @_retrieved.setter
    def _retrieved(self, retrieved: bool) -> None:
        self._mark_retrieved()
        if not retrieved and isinstance(self._outcome, Failed):
            self._report = _FailureReport(self._name, self._outcome)

    @property
    def token(self) -> CancellationToken | None:
        """The token the task's scope is bound to, if any."""
        return self._token

    def is_finished(self) -> bool:
        """Whether the task has ended. Not a checkpoint; never blocks."""
        return self._outcome is not None

    @trio.lowlevel.enable_ki_protection
    def abort(self, reason: str | None = None) -> None:
        """Cancel the task's own scope (tokio ``abort()``).

        The task stops at its next checkpoint and unwinds through its ``finally`` blocks; a task
        that has not started yet never runs its function. Idempotent: the first cancellation of
        the scope (this or the token's) fixes the reason. No effect once finished.
        Not a checkpoint; never blocks; ``KeyboardInterrupt``-protected.

        Raises:
            RuntimeError: Called from another thread while the task runs (nothing changed).
        """
        check_reason(reason)
        if self._outcome is not None:
            return
        check_trio_thread("TaskHandle.abort()")
        self._note_abort(reason)
        if _hooks.active:  # trio_cancel.otel: cancel, recording the source if this cancel's own
            _hooks.cancel_scope(self._scope, reason, "abort")
        else:
            self._scope.cancel(reason=reason)

    def _may_be_cancelled(self) -> bool:
        """False when the task's scope is certainly not cancelled: only :meth:`abort` (and
        ``JoinSet.abort_all``), which note it first, and the bound token cancel it (invariant
        1). Two field reads, where the scope's ``cancel_called`` reads Trio's clock (a scope
        without a deadline, entered or not yet entered) every time."""
        token = self._token
        return self._aborted_first or (token is not None and token._cancelled)

    def _note_abort(self, reason: str | None) -> None:
        if not self._scope.cancel_called:
            self._aborted_first = True
            self._abort_reason = reason

    def _note_abandoned(self, call: str) -> None:
        if self._abandoned is None:
            self._abandoned = []
        self._abandoned.append(call)

    def abort_handle(self) -> AbortHandle:
        """A small object that can only abort this task and ask whether it finished.

        Not a checkpoint; never blocks.
        """
        return AbortHandle._create(self)

    async def join(self) -> Outcome[T]:
        """Wait for the task to end and return its outcome.

        Cancellation:
            Always a checkpoint (also when the task has already ended). Cancelling the caller
            while it waits raises :exc:`trio.Cancelled` in the caller only: the task keeps
            running and its outcome stays available.
        """
        if self._outcome is None:
            if self._done is None:
                self._done = trio.Event()
            await self._done.wait()
        else:
            await trio.lowlevel.checkpoint()
        assert self._outcome is not None
        if self._report is not None:
            self._mark_retrieved()
        return self._outcome

    def _aborted_reason(self) -> str | None:
        if self._aborted_first:
            return self._abort_reason
        if self._token is not None:
            return self._token.reason
        return None

    async def _run(self) -> None:  # noqa: ASYNC910 - the task's root: nothing awaits it
        self._task = _current_task()
        CURRENT_HANDLE.set(self)
        if _hooks.task_start is not None:  # trio_cancel.otel.instrument(): the task's span
            _hooks.task_start(self)
        coro, scope, token = self._coro, self._scope, self._token
        self._coro = None
        assert coro is not None
        # _may_be_cancelled(), inline (once per task), before the scope's own answer.
        if (self._aborted_first or (token is not None and token._cancelled)) and (
            scope.cancel_called
        ):
            # Aborted (or its token cancelled) before the task first ran: never run the body.
            coro.close()
            self._finish(Aborted(self._aborted_reason()))
            return  # noqa: ASYNC910 - the task's root: nothing awaits this coroutine

        # The body runs in this frame (no helper coroutine: one frame less per task to create,
        # keep and unwind). A stored error's traceback starts here, so no local may still
        # hold the handle or the outcome when the frame ends (see the end).
        #
        # One level of capture, outside the scope (as ``outcome.acapture``): the scope's exit
        # can itself raise an ``Exception``, when it strips its own cancellation from a group
        # (an inner nursery whose child failed while the task was aborted). That group is the
        # task's error, like any other: it must not slip past a handler inside the scope.
        result: Completed[T] | Failed | None = None
        try:
            with scope:
                value = await coro
                # Completed(value), without the attrs __init__ frame (once per task).
                result = _new_object(Completed)
                _set_frozen(result, "value", value)
        except Exception as exc:  # noqa: BLE001 - an outcome, not the nursery's error
            # A panicking tokio task does not take its siblings down either.
            # The error's traceback may reach this task (an inner nursery's frame holds its
            # parent task), whose context holds this handle: leave the context without it.
            CURRENT_HANDLE.set(None)
            _break_cycles_through(exc)
            result = Failed(exc)
        except BaseException as exc:
            # KeyboardInterrupt, or a cancellation from outside the task's scope: recorded,
            # and Trio handles it as usual.
            if isinstance(exc, BaseExceptionGroup):
                error = exc.split(trio.Cancelled)[1]
                if isinstance(error, ExceptionGroup) and error is not exc:
                    # The outside cancellation came out beside the task's own error (its
                    # inner nursery failed while unwinding): the error is the task's outcome,
                    # as any Exception of a task; only the cancellation goes on.
                    CURRENT_HANDLE.set(None)
                    _break_cycles_through(exc)
                    self._finish(Failed(error))
                    # The error's traceback reaches this frame: it holds neither the handle
                    # nor what it raises (a cancellation whose traceback reaches the canceller).
                    del self, error
                    raise exc.subgroup(trio.Cancelled) from None  # type: ignore[misc]  # noqa: ASYNC104
            self._finish(outcome_of_base_exception(exc))
            raise
        finally:
            del coro, scope, token  # a stored error's traceback keeps this frame: not these
        outcome = Aborted(self._aborted_reason()) if result is None else result
        del result
        self._finish(outcome)
        # On Python 3.12+ a finished frame that is still referenced keeps its locals, and the
        # stored error's traceback reaches this frame (through its f_back chain): keep neither
        # the handle nor its outcome here, or handle -> error -> frame -> handle is a cycle.
        del self, outcome

    async def _run_start(  # noqa: ASYNC910 - the task's root: nothing awaits it
        self, status: _StartStatus, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        """The root of a task started by :func:`start`: :meth:`_run` around the function
        (wrapped by :func:`_until_started`), turning what happened before ``started()`` into
        what ``nursery.start()`` should raise."""
        status.real = task_status
        failure: BaseException | None = None
        try:
            await self._run()
        except _ErrorBeforeStarted as marker:
            failure = marker.error  # propagates from start(), as in Trio
            # The marker's traceback holds _run's frame, and so this handle: keep the error
            # itself instead (no cycle through the handle).
            self._outcome = Failed(failure)
            del marker
        except _ReturnedBeforeStarted:
            failure = None if status.called else status.ended_without_started(self)
        else:
            status.close_function()  # aborted before it first ran: never awaited
            if not status.moved and not status.called:
                # Aborted (or its token fired) before started(): the scope absorbed it.
                failure = status.cancelled_error(self)
        status.release()  # see _StartStatus.started
        if failure is not None:
            self._mark_retrieved()  # this handle is never handed out
            try:
                raise failure
            finally:
                del failure, self, status
        # A stored error's traceback reaches _run's frame, whose f_back is this one: on
        # Python 3.12+ a finished frame that is still referenced keeps its locals, so keep
        # neither the handle nor the status here (handle -> error -> frames -> handle).
        del self, status

    def _finish(self, outcome: Outcome[T]) -> None:
        self._outcome = outcome
        if type(outcome) is Failed:
            self._report = _FailureReport(self._name, outcome)
        if _hooks.task_end is not None:  # trio_cancel.otel.instrument(): end the task's span
            _hooks.task_end(self)
        self._task = None  # the task's context holds this handle: no cycle through it
        if self._token is not None:
            self._token._discard_scope(self._scope)
        # The task's scope is exited and nothing reads it once the outcome is set (abort()
        # returns first): a kept handle then holds one object fewer for the collector to
        # traverse, and about 150 bytes less.
        self._scope = _ENDED_SCOPE
        if self._done is not None:
            self._done.set()
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(self)

    def _report_unretrieved(self, where: str) -> None:
        report, self._report = self._report, None
        if report is not None:
            report.log(where)

    def _state(self) -> str:
        if self._outcome is not None:
            return f"finished {self._outcome!r}"
        if self._scope.cancel_called:
            return "aborting"
        return "pending" if self._task is None else "running"

    def __repr__(self) -> str:
        return f"<TaskHandle {self._name!r} {self._state()}>"


@final
class _FailureReport:
    """The ``Failed`` outcome of a handle, until it is retrieved: logged if it never is (when
    the handle is discarded, or by its owner). Only a failed task's handle holds one, so a
    handle has no finaliser of its own (a finaliser costs every handle at its deallocation).

    It holds the outcome and the task's name, never the handle: the handle's last reference
    going frees this one at once, and its ``__del__`` logs then (as asyncio reports
    "exception was never retrieved").
    """

    __slots__ = ("failed", "name")

    def __init__(self, name: str, failed: Failed) -> None:
        self.name = name
        self.failed: Failed | None = failed

    def log(self, where: str) -> None:
        failed, self.failed = self.failed, None
        if failed is not None:
            err = failed.error
            _log.error(
                "%s: task %r failed and its outcome was never retrieved",
                where,
                self.name,
                exc_info=(type(err), err, err.__traceback__),
            )

    def __del__(self) -> None:
        if self.failed is None:
            return
        # At interpreter shutdown, module globals (logging, even contextlib) may be None
        # already: a plain try needs none of them.
        try:  # noqa: SIM105 - contextlib may be gone
            self.log("TaskHandle discarded")
        except Exception:  # noqa: BLE001 - nothing left to report to
            pass


_current_task = trio.lowlevel.current_task  # looked up once: every task's start reads it
_new_object: Any = object.__new__
_set_frozen: Any = object.__setattr__  # as the __init__ of a frozen attrs class sets a field

# Builds a TaskHandle without the metaclass's refusal (NoPublicConstructor): the package's own
# constructor, one call fewer than ``_create`` on the path every spawned task takes.
_construct: Any = type.__call__


@final
@attrs.define(eq=False, repr=False)
class AbortHandle(metaclass=NoPublicConstructor):
    """Can abort one task and tell whether it finished (tokio ``AbortHandle``).

    Safe to hand to code that must not join the task or read its result. Built by
    :meth:`TaskHandle.abort_handle`.
    """

    _handle: TaskHandle[Any]

    def abort(self, reason: str | None = None) -> None:
        """As :meth:`TaskHandle.abort`. Not a checkpoint; never blocks."""
        self._handle.abort(reason)

    def is_finished(self) -> bool:
        """Whether the task has ended. Not a checkpoint; never blocks."""
        return self._handle.is_finished()

    def __repr__(self) -> str:
        return f"<AbortHandle of {self._handle!r}>"


def check_task_arguments(
    nursery: object,
    async_fn: Callable[..., object],
    name: str | None,
    token: CancellationToken | None,
    what: str,
) -> str:
    """Check the arguments every spawn and start share; return the task's name."""
    check_nursery(nursery, what)
    if token is not None and not isinstance(token, CancellationToken):
        raise TypeError(f"token must be a CancellationToken or None, not {type(token).__name__}")
    if name is None:
        return getattr(async_fn, "__qualname__", None) or repr(async_fn)
    if not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}")
    return name


def is_plain_call(
    nursery: object, async_fn: object, name: str | None, token: CancellationToken | None
) -> bool:
    """Whether a spawn or a start is the common call, which the checks of
    :func:`check_task_arguments` and the token rule (:func:`with_token`) pass unchanged: a Trio
    nursery, a ``str`` name or none, and an ``async def`` function with no ``token`` anywhere
    (neither a parameter nor a local: nothing to pass) and no ``__wrapped__`` or
    ``__signature__`` (its signature is its own). A few reads instead of their calls.
    (:func:`make_handle` has the same test inline: keep the two alike.)"""
    return (
        type(nursery) is trio.Nursery
        and (token is None or type(token) is CancellationToken)
        and (name is None or type(name) is str)
        and type(async_fn) is FunctionType
        and not async_fn.__dict__
        and bool((code := async_fn.__code__).co_flags & CO_COROUTINE)
        and "token" not in code.co_varnames
    )


def make_handle(
    nursery: Nursery,
    async_fn: Callable[..., Awaitable[T]],
    args: tuple[object, ...],
    name: str | None,
    token: CancellationToken | None,
    on_done: Callable[[TaskHandle[T]], None] | None,
    what: str = "spawn()",
) -> TaskHandle[T]:
    coro: Coroutine[Any, Any, T]
    if (  # is_plain_call(), inline: this runs once per task
        type(nursery) is trio.Nursery
        and (token is None or type(token) is CancellationToken)
        and (name is None or type(name) is str)
        and type(async_fn) is FunctionType
        and not async_fn.__dict__
        and (code := async_fn.__code__).co_flags & CO_COROUTINE
        and "token" not in code.co_varnames
    ):
        coro = async_fn(*args)  # an async def
        if name is None:
            name = async_fn.__qualname__ or repr(async_fn)
    else:
        name = check_task_arguments(nursery, async_fn, name, token, what)
        fn = with_token(async_fn, args, token, what)
        coro = coroutine_or_error(fn, args, what)  # a sync function fails here, as in Trio
    # The class itself, not ``TaskHandle[T]`` (a generic alias made on every call) nor its
    # ``_create`` (one more frame): this runs once per task.
    handle: TaskHandle[T] = _construct(TaskHandle, coro, name, token, on_done)
    try:
        nursery.start_soon(handle._run, name=name)  # raises if the nursery is closed
    except BaseException:
        coro.close()
        raise
    if token is not None:
        token._add_scope(handle._scope)  # before the task first runs: start_soon only schedules
    return handle


# ------------------------------------------------------------------ start


class _ErrorBeforeStarted(BaseException):
    """Carries an ``Exception`` raised before ``started()`` past :meth:`TaskHandle._run` (which
    would record it as ``Failed``), so that it propagates from ``start()`` as in Trio."""

    def __init__(self, error: Exception) -> None:
        super().__init__("raised before task_status.started()")
        self.error = error


class _ReturnedBeforeStarted(BaseException):
    """The function returned without calling ``task_status.started()``."""


@final
class _StartStatus:
    """The ``task_status`` a started function receives: forwards ``started(value)`` to the
    nursery's, and tells the owner (a ``JoinSet``, a ``GracefulShutdown``) once the task has
    really moved into the nursery (not when the ``start()`` call was cancelled meanwhile, as
    Trio then leaves the task under the caller)."""

    __slots__ = (
        "_on_done",
        "_on_started",
        "called",
        "coro",
        "handle",
        "injected",
        "moved",
        "real",
        "what",
    )

    def __init__(
        self,
        what: str,
        injected: CancellationToken | None,
        on_started: Callable[[TaskHandle[Any]], None] | None,
        on_done: Callable[[TaskHandle[Any]], None] | None,
    ) -> None:
        self.what = what
        self.injected = injected  # the token the function was called with, if any
        self._on_started = on_started
        self._on_done = on_done
        self.real: trio.TaskStatus[Any] | None = None
        self.handle: TaskHandle[Any] | None = None
        self.called = False
        self.moved = False
        self.coro: Coroutine[Any, Any, Any] | None = None  # the function's

    def close_function(self) -> None:
        """Close the function's coroutine: a no-op once it has run, and no "never awaited"
        warning when the task was aborted before it first ran."""
        coro, self.coro = self.coro, None
        if coro is not None:
            coro.close()

    def started(self, value: object = None) -> None:
        """As ``trio.TaskStatus.started``: ``start()`` returns ``(handle, value)``."""
        real, handle = self.real, self.handle
        if real is None:
            raise RuntimeError(f"{self.what}: task_status.started() called after the task ended")
        if handle is None:  # started already: Trio's own error for a second call
            real.started(value)
            return
        if handle._may_be_cancelled():
            scope, token = handle._scope, handle._token
            if not scope.cancel_called and token is not None and token.is_cancelled():
                scope.cancel(reason=token.reason)  # fired from another thread: not landed yet
            if scope.cancel_called:
                # Aborted (or its token fired) before started(), the abort not landed yet: the
                # caller is not told that the task started; the abort lands at the task's
                # next checkpoint and start() raises OperationCancelledError (see _run_start).
                return
        task = handle._task
        before = None if task is None else task.parent_nursery
        real.started(value)  # a second call raises RuntimeError here, as in Trio
        self.called = True
        if task is not None and task.parent_nursery is before:
            return  # the start() call was cancelled: the task stays under it and is cancelled
        self.moved = True
        # The function's frames hold this status, and a stored error's traceback holds those
        # frames: from now on the status keeps no reference to the handle (no cycle).
        self.handle = None
        handle._on_done = self._on_done
        if self._on_started is not None:
            self._on_started(handle)

    def release(self) -> None:
        """The task has ended: drop every reference the status still holds. The function's
        frames keep the status (it is their ``task_status``), and a stored error's
        traceback keeps those frames: nothing the status holds may lead back to the handle
        (its owner's callbacks do, through the owner's set of handles)."""
        self.handle = self.real = self.coro = None
        self._on_started = self._on_done = None

    def cancelled_error(self, handle: TaskHandle[Any]) -> OperationCancelledError:
        token = handle._token
        cause = token.cause if token is not None and not handle._aborted_first else None
        return OperationCancelledError(handle._aborted_reason(), cause)

    def ended_without_started(self, handle: TaskHandle[Any]) -> Exception:
        if handle._scope.cancel_called:
            return self.cancelled_error(handle)
        for token in (handle._token, self.injected):
            if token is not None and token.is_cancelled():
                return OperationCancelledError(token.reason, token.cause)
        return RuntimeError(
            f"{self.what}: {handle.name!r} returned without calling task_status.started()"
        )


async def _until_started(coro: Coroutine[Any, Any, T], status: _StartStatus) -> T:
    """The function of a started task, as :meth:`TaskHandle._run` sees it: before
    ``started()``, an ``Exception`` or a return must reach ``start()``, not the outcome."""
    # A stored error's traceback reaches this frame: once it ends, its locals must not hold
    # the status (status -> handle -> outcome -> error -> this frame would be a cycle).
    try:
        value = await coro
        moved = status.moved
    except Exception as exc:
        if status.moved:
            raise
        raise _ErrorBeforeStarted(exc) from None
    finally:
        del coro, status
    if not moved:
        raise _ReturnedBeforeStarted
    return value


async def start_task(
    nursery: Nursery,
    fn: Callable[..., Awaitable[T]],
    args: tuple[object, ...],
    name: str,
    token: CancellationToken | None,
    what: str,
    *,
    injected: CancellationToken | None = None,
    on_started: Callable[[TaskHandle[T]], None] | None = None,
    on_done: Callable[[TaskHandle[T]], None] | None = None,
    starting: set[TaskHandle[Any]] | None = None,
    abort_reason: str | None = None,
    on_abort: Callable[[TaskHandle[T]], None] | None = None,
) -> tuple[TaskHandle[T], Any]:
    """Start ``fn(*args, task_status=...)`` (``fn`` already has the token rule applied) with a
    handle, and wait until it calls ``started()``. ``token`` binds the task's scope;
    ``injected`` is the token ``fn`` receives (for the error when it fires first);
    ``starting`` holds the handle until it has started or ended (so that the owner can abort
    it); a non-``None`` ``abort_reason`` aborts it at once, and then calls ``on_abort``."""
    status = _StartStatus(what, injected, on_started, on_done)
    coro: Coroutine[Any, Any, T]
    if type(fn) is FunctionType and fn.__code__.co_flags & CO_COROUTINE:
        coro = fn(*args, task_status=status)  # an async def
    else:
        coro = coroutine_or_error(functools.partial(fn, task_status=status), args, what)
    handle: TaskHandle[T] = _construct(TaskHandle, _until_started(coro, status), name, token, None)
    status.handle, status.coro = handle, coro
    if token is not None:
        token._add_scope(handle._scope)  # the task cannot run before nursery.start below
    if starting is not None:
        starting.add(handle)
    try:
        if abort_reason is not None:
            handle.abort(abort_reason)
            if on_abort is not None:
                on_abort(handle)
        value = await nursery.start(handle._run_start, status, name=name)
    except BaseException:
        if handle._coro is not None:  # nursery.start failed before the task ran
            handle._coro.close()
            coro.close()
            if token is not None:
                token._discard_scope(handle._scope)
        raise
    finally:
        if starting is not None:
            starting.discard(handle)
        del coro
    if not status.moved:  # started() was called as the start() call was being cancelled
        await trio.lowlevel.checkpoint()
        raise RuntimeError(f"{what}: the task did not move into the nursery")  # pragma: no cover
    return handle, value


async def start(
    nursery: trio.Nursery | anyio.abc.TaskGroup,
    async_fn: Callable[..., Awaitable[T]],
    *args: object,
    name: str | None = None,
    token: CancellationToken | None = None,
) -> tuple[TaskHandle[T], Any]:
    """Start ``async_fn(*args, task_status=...)`` in ``nursery`` with a handle, as
    :meth:`trio.Nursery.start` does: return once the task has called
    ``task_status.started(value)``, with the task's :class:`TaskHandle` and that value
    ("start a server and wait until it listens").

    Before ``started()`` the task runs under the caller, as in Trio: an error it raises then
    propagates from here (and there is no handle); after it, the task lives in ``nursery``
    and its outcome is recorded as for :func:`spawn` (an ``Exception`` becomes ``Failed``).
    ``async_fn`` takes ``task_status`` as a keyword (annotate it ``trio.TaskStatus[X]``, with
    ``trio.TASK_STATUS_IGNORED`` as the default so that it can be awaited directly too).
    ``token`` and the word ``token`` follow :func:`spawn`'s rule. tokio has no counterpart.

    Args:
        nursery: Where the task runs once started: a Trio nursery, or an anyio task group
            on anyio's Trio backend.
        async_fn: The async function; ``args`` are passed positionally.
        name: The task's name; default the function's qualified name.
        token: Binds the task's scope, as for :func:`spawn`.

    Returns:
        ``(handle, value)``: the task's handle and the value it passed to ``started()``.

    Raises:
        OperationCancelledError: The task was aborted, or its token fired, before it called
            ``started()`` (``.reason`` and ``.cause`` say why).
        RuntimeError: The task returned without calling ``started()``; or ``nursery`` is an
            anyio task group outside Trio (anyio's asyncio backend).
        TypeError: As :func:`spawn` (also when ``async_fn`` takes no ``task_status``).

    Cancellation:
        Always a checkpoint. Cancelled before the call, nothing starts. Cancelled while
        waiting for ``started()``, the task is cancelled (it runs under this call until
        then, as in Trio) and ``trio.Cancelled`` propagates; no handle is returned. Once
        ``started()`` has been called the task is independent of this call.
    """
    if is_plain_call(nursery, async_fn, name, token):
        fn = async_fn
        if name is None:
            name = async_fn.__qualname__ or repr(async_fn)
    else:
        name = check_task_arguments(nursery, async_fn, name, token, "start()")
        fn = with_token(async_fn, args, token, "start()")
    await trio.lowlevel.checkpoint_if_cancelled()
    return await start_task(nursery, fn, args, name, token, "start()", injected=token)


@overload
def spawn(
    nursery: trio.Nursery | anyio.abc.TaskGroup,
    async_fn: Callable[[*PosArgsT], Awaitable[T]],
    *args: *PosArgsT,
    name: str | None = None,
    token: CancellationToken | None = None,
) -> TaskHandle[T]: ...
@overload
def spawn(
    nursery: trio.Nursery | anyio.abc.TaskGroup,
    async_fn: Callable[..., Awaitable[T]],
    *args: object,
    name: str | None = None,
    token: CancellationToken,
) -> TaskHandle[T]: ...  # async_fn takes token= (the one rule for the word)


def spawn(
    nursery: trio.Nursery | anyio.abc.TaskGroup,
    async_fn: Callable[..., Awaitable[T]],
    *args: object,
    name: str | None = None,
    token: CancellationToken | None = None,
) -> TaskHandle[T]:
    """Start ``async_fn(*args)`` in ``nursery``, inside a cancel scope of its own.

    The counterpart of ``tokio::spawn``, within structured concurrency: the task lives in
    ``nursery`` and never outlives it. The task's ``Exception`` is caught into
    :class:`Failed` and does not cancel the nursery.

    Args:
        nursery: Where the task runs.
        async_fn: The async function; ``args`` are passed positionally.
        name: The task's name (Trio's task name too); default the function's qualified name.
        token: If given, the task's scope is bound to it: cancelling the token aborts the task
            (``Aborted(token.reason)``), at once if it is already cancelled. And, the one rule
            for the word everywhere: if ``async_fn`` declares ``token: CancellationToken`` (or
            a union containing it, or ``Annotated[CancellationToken, ...]``, also as a
            string annotation), it is called
            with ``token=token``. Nothing is passed to an unannotated ``token``, a ``token``
            of another type (an API key) or ``**kwargs``.

    Returns:
        The task's :class:`TaskHandle`.

    Raises:
        TypeError: ``async_fn`` is not an async function (as ``nursery.start_soon`` raises:
            a sync function has run by then and its result is discarded); or its ``token``
            parameter is required and no ``token`` was given, or is required and unannotated.

    Not a checkpoint; never blocks (like ``nursery.start_soon``).
    """
    return make_handle(nursery, async_fn, args, name, token, None)
