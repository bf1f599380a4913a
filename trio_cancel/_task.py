"""Abortable, joinable tasks: spawn, TaskHandle and AbortHandle.

Every task still lives in a Trio nursery; a handle only adds a cancel scope of the task's own
around the function, and a record of how the task ended.

Invariants:

1. A handle's scope is created at spawn and cancelled only by ``abort()`` or by the token it
   is bound to; it is entered by the task's wrapper, around the function and nothing else.
2. ``outcome`` is set exactly once, by the wrapper, when the task ends; it is ``Aborted`` iff the
   task ended through a ``trio.Cancelled`` (its own, or one from outside, which still
   propagates), or never started because its scope was already cancelled.
3. A task's ``Exception`` becomes ``Failed`` and never reaches the nursery. Other
   ``BaseException`` s are recorded and re-raised, as Trio would.
4. Nothing on the cancel path allocates per task beyond what Trio itself does, except the
   outcome value.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
from typing import TYPE_CHECKING, Any, Generic, TypeVar, TypeVarTuple, final, overload

import attrs
import trio

from . import _hooks
from ._checks import check_reason, check_trio_thread, coroutine_or_error, with_token
from ._outcome import Aborted, Completed, Failed, Outcome, outcome_of_base_exception
from ._token import CancellationToken
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")

_log = logging.getLogger("trio_cancel")
_ids = itertools.count(1)

# The handle of the task running in this context (each Trio task has its own context copy, so a
# plain child task inherits its parent's value: compare ``handle._task`` before trusting it).
CURRENT_HANDLE: contextvars.ContextVar[TaskHandle[Any] | None] = contextvars.ContextVar(
    "trio_cancel.current_handle", default=None
)


# ------------------------------------------------------------------ handles


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
    _retrieved: bool = attrs.field(default=False, init=False)
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
        if self._outcome is not None:
            self._retrieved = True
        return self._outcome

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
        self._scope.cancel(reason=reason)
        _hooks.record_scope(self._scope, "abort")  # trio_cancel.otel: the source

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
        self._retrieved = True
        return self._outcome

    def _aborted_reason(self) -> str | None:
        if self._aborted_first:
            return self._abort_reason
        if self._token is not None:
            return self._token.reason
        return None

    async def _run(self) -> None:  # noqa: ASYNC910 - the task's root: nothing awaits it
        self._task = trio.lowlevel.current_task()
        CURRENT_HANDLE.set(self)
        if _hooks.task_start is not None:  # trio_cancel.otel.instrument(): the task's span
            _hooks.task_start(self)
        coro, scope = self._coro, self._scope
        self._coro = None
        assert coro is not None
        if scope.cancel_called:
            # Aborted (or its token cancelled) before the task first ran: never run the body.
            coro.close()
            self._finish(Aborted(self._aborted_reason()))
            return  # noqa: ASYNC910 - the task's root: nothing awaits this coroutine

        # The body runs in this frame (no helper coroutine: one frame less per task to create,
        # keep and unwind). A stored error's traceback starts here, so no local may still
        # hold the handle or the outcome when the frame ends (see the end).
        result: Completed[T] | Failed | None = None
        try:
            with scope:
                try:
                    result = Completed(await coro)
                except Exception as exc:  # noqa: BLE001 - an outcome, not the nursery's error
                    # A panicking tokio task does not take its siblings down either.
                    result = Failed(exc)
        except BaseException as exc:
            self._finish(outcome_of_base_exception(exc))
            raise
        finally:
            del coro
        outcome = Aborted(self._aborted_reason()) if result is None else result
        del result
        self._finish(outcome)
        # On Python 3.12+ a finished frame that is still referenced keeps its locals, and the
        # stored error's traceback reaches this frame (through its f_back chain): keep neither
        # the handle nor its outcome here, or handle -> error -> frame -> handle is a cycle.
        del self, outcome

    def _finish(self, outcome: Outcome[T]) -> None:
        self._outcome = outcome
        if _hooks.task_end is not None:  # trio_cancel.otel.instrument(): end the task's span
            _hooks.task_end(self)
        self._task = None  # the task's context holds this handle: no cycle through it
        if self._token is not None:
            self._token._discard_scope(self._scope)
        if self._done is not None:
            self._done.set()
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(self)

    def _report_unretrieved(self, where: str) -> None:
        outcome = self._outcome
        if isinstance(outcome, Failed) and not self._retrieved:
            self._retrieved = True
            err = outcome.error
            _log.error(
                "%s: task %r failed and its outcome was never retrieved",
                where,
                self._name,
                exc_info=(type(err), err, err.__traceback__),
            )

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown logging may be gone
            self._report_unretrieved("TaskHandle discarded")

    def _state(self) -> str:
        if self._outcome is not None:
            return f"finished {self._outcome!r}"
        if self._scope.cancel_called:
            return "aborting"
        return "pending" if self._task is None else "running"

    def __repr__(self) -> str:
        return f"<TaskHandle {self._name!r} {self._state()}>"


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


def make_handle(
    nursery: trio.Nursery,
    async_fn: Callable[..., Awaitable[T]],
    args: tuple[object, ...],
    name: str | None,
    token: CancellationToken | None,
    on_done: Callable[[TaskHandle[T]], None] | None,
    what: str = "spawn()",
) -> TaskHandle[T]:
    if not isinstance(nursery, trio.Nursery):
        raise TypeError(f"{what} needs a trio.Nursery, not {type(nursery).__name__}")
    if token is not None and not isinstance(token, CancellationToken):
        raise TypeError(f"token must be a CancellationToken or None, not {type(token).__name__}")
    if name is None:
        name = getattr(async_fn, "__qualname__", None) or repr(async_fn)
    elif not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}")
    fn = with_token(async_fn, args, token, what)
    coro = coroutine_or_error(fn, args, what)  # a sync function fails here, as in Trio
    handle: TaskHandle[T] = TaskHandle[T]._create(coro, name, token, on_done)
    try:
        nursery.start_soon(handle._run, name=name)  # raises if the nursery is closed
    except BaseException:
        coro.close()
        raise
    if token is not None:
        token._add_scope(handle._scope)  # before the task first runs: start_soon only schedules
    return handle


@overload
def spawn(
    nursery: trio.Nursery,
    async_fn: Callable[[*PosArgsT], Awaitable[T]],
    *args: *PosArgsT,
    name: str | None = None,
    token: CancellationToken | None = None,
) -> TaskHandle[T]: ...
@overload
def spawn(
    nursery: trio.Nursery,
    async_fn: Callable[..., Awaitable[T]],
    *args: object,
    name: str | None = None,
    token: CancellationToken,
) -> TaskHandle[T]: ...  # async_fn takes token= (the one rule for the word)


def spawn(
    nursery: trio.Nursery,
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
            for the word everywhere: if ``async_fn`` accepts a keyword ``token`` (a parameter
            of that name, or ``**kwargs``), it is called with ``token=token``.

    Returns:
        The task's :class:`TaskHandle`.

    Raises:
        TypeError: ``async_fn`` is not an async function (as ``nursery.start_soon`` raises:
            a sync function has run by then and its result is discarded); or its ``token``
            parameter is required and no ``token`` was given.

    Not a checkpoint; never blocks (like ``nursery.start_soon``).
    """
    return make_handle(nursery, async_fn, args, name, token, None)
