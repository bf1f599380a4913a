"""Abortable, joinable tasks: spawn, TaskHandle, AbortHandle, outcomes and JoinSet.

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

import collections
import contextlib
import contextvars
import itertools
import logging
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    Self,
    TypeAlias,
    TypeVar,
    TypeVarTuple,
    final,
)

import attrs
import trio

from ._token import CancellationToken, cancel_scopes
from ._util import (
    NoPublicConstructor,
    check_reason,
    check_trio_thread,
    coroutine_or_error,
    first_leaf,
    leaves,
    only_cancelled,
    reraise_bare,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
PosArgsT = TypeVarTuple("PosArgsT")

_log = logging.getLogger("trio_cancel")
_ids = itertools.count(1)

# ------------------------------------------------------------------ outcomes


@final
@attrs.frozen
class Completed(Generic[T_co]):
    """The task returned ``value`` (also when it did so after an abort was requested)."""

    value: T_co


@final
@attrs.frozen
class Failed:
    """The task raised ``error``.

    An ``Exception`` is only recorded here (it does not cancel the nursery); any other
    ``BaseException`` (``KeyboardInterrupt``) is recorded and also propagates.
    """

    error: BaseException


@final
@attrs.frozen
class Aborted:
    """The task ended through a ``trio.Cancelled``, or was aborted before it ever ran.

    ``reason`` is the reason of that cancellation: the ``abort(reason)``, the bound token's
    reason, or (for a cancellation from outside the task's own scope) the outside one's.
    Named so that it is never confused with ``trio.Cancelled``.
    """

    reason: str | None


Outcome: TypeAlias = Completed[T] | Failed | Aborted
"""How a task ended: ``Completed(value)``, ``Failed(error)`` or ``Aborted(reason)``."""


def _outcome_of_base_exception(exc: BaseException) -> Failed | Aborted:
    if only_cancelled(exc):
        first = first_leaf(exc)
        assert isinstance(first, trio.Cancelled)
        return Aborted(first.reason)
    return Failed(exc)


# The handle of the task running in this context (each Trio task has its own context copy, so a
# plain child task inherits its parent's value: compare ``handle._task`` before trusting it).
_CURRENT_HANDLE: contextvars.ContextVar[TaskHandle[Any] | None] = contextvars.ContextVar(
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

    def _note_abort(self, reason: str | None) -> None:
        if not self._scope.cancel_called:
            self._aborted_first = True
            self._abort_reason = reason

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

    def _cancel_reason(self) -> str | None:
        if self._aborted_first:
            return self._abort_reason
        if self._token is not None:
            return self._token.reason
        return None

    async def _run(self) -> None:
        self._task = trio.lowlevel.current_task()
        _CURRENT_HANDLE.set(self)
        coro, scope = self._coro, self._scope
        self._coro = None
        assert coro is not None
        if scope.cancel_called:
            # Aborted (or its token cancelled) before the task first ran: never run the body.
            coro.close()
            self._finish(Aborted(self._cancel_reason()))
            return  # noqa: ASYNC910 - the task's root: nothing awaits this coroutine

        result: Completed[T] | Failed | None = None
        try:
            with scope:
                result = await _capture(coro)
        except BaseException as exc:
            self._finish(_outcome_of_base_exception(exc))
            raise
        finally:
            del coro
        self._finish(Aborted(self._cancel_reason()) if result is None else result)

    def _finish(self, outcome: Outcome[T]) -> None:
        self._outcome = outcome
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


async def _capture(coro: Coroutine[Any, Any, T]) -> Completed[T] | Failed:
    """Run the task's body; its ``Exception`` becomes ``Failed``.

    Caught here, in a frame that holds no handle, so that the stored error's traceback (which
    starts at this frame) makes no reference cycle back to the handle: a handle whose task
    failed is freed as soon as its last reference goes.
    """
    try:
        return Completed(await coro)
    except Exception as exc:  # noqa: BLE001 - an outcome, not the nursery's error
        # A panicking tokio task does not take its siblings down either.
        return Failed(exc)  # noqa: ASYNC910 - the body ran (a task root, awaited once)


def _make_handle(
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
    coro = coroutine_or_error(async_fn, args, what)  # a sync function fails here, as in Trio
    handle: TaskHandle[T] = TaskHandle[T]._create(coro, name, token, on_done)
    try:
        nursery.start_soon(handle._run, name=name)  # raises if the nursery is closed
    except BaseException:
        coro.close()
        raise
    if token is not None:
        token._add_scope(handle._scope)  # before the task first runs: start_soon only schedules
    return handle


def spawn(
    nursery: trio.Nursery,
    async_fn: Callable[[*PosArgsT], Awaitable[T]],
    *args: *PosArgsT,
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
            (``Aborted(token.reason)``), at once if it is already cancelled.

    Returns:
        The task's :class:`TaskHandle`.

    Raises:
        TypeError: ``async_fn`` is not an async function (as ``nursery.start_soon`` raises:
            a sync function has run by then and its result is discarded).

    Not a checkpoint; never blocks (like ``nursery.start_soon``).
    """
    return _make_handle(nursery, async_fn, args, name, token, None)


# ------------------------------------------------------------------ JoinSet


@final
@attrs.define(eq=False, repr=False)
class JoinSet:
    """A set of tasks whose outcomes are collected in finishing order (tokio ``JoinSet``).

    Use as ``async with tc.JoinSet() as js:``; it owns a nursery. Lifecycle: *new* (spawning
    raises ``RuntimeError``), *open* inside the ``async with``, *closed* after it. Leaving the
    block aborts the tasks still running and waits for them (as dropping a tokio ``JoinSet``
    aborts its tasks); an exception from the body propagates as itself, not wrapped in a group.
    Failed outcomes that were never retrieved are logged on the ``trio_cancel`` logger at exit.
    """

    _state: Literal["new", "open", "closed"] = attrs.field(default="new", init=False)
    _nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = attrs.field(
        default=None, init=False
    )
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _running: set[TaskHandle[Any]] = attrs.field(factory=set, init=False)
    _finished: collections.deque[TaskHandle[Any]] = attrs.field(
        factory=collections.deque, init=False
    )
    _count: int = attrs.field(default=0, init=False)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)

    def __len__(self) -> int:
        """Tasks spawned and not yet returned by :meth:`join_next`."""
        return self._count

    def __repr__(self) -> str:
        return (
            f"<JoinSet {self._state}, {len(self._running)} running, "
            f"{len(self._finished)} finished and not joined>"
        )

    def spawn(
        self,
        async_fn: Callable[[*PosArgsT], Awaitable[T]],
        *args: *PosArgsT,
        name: str | None = None,
        token: CancellationToken | None = None,
    ) -> TaskHandle[T]:
        """As :func:`spawn`, into this set. Not a checkpoint; never blocks.

        Raises:
            RuntimeError: Outside the set's ``async with`` block.
        """
        if self._state != "open" or self._nursery is None:
            raise RuntimeError(f"JoinSet.spawn() needs an open set (this one is {self._state})")
        handle = _make_handle(
            self._nursery, async_fn, args, name, token, self._task_done, "JoinSet.spawn()"
        )
        self._running.add(handle)
        self._count += 1
        return handle

    def _task_done(self, handle: TaskHandle[Any]) -> None:
        self._running.discard(handle)
        self._finished.append(handle)
        self._lot.unpark_all()

    @trio.lowlevel.enable_ki_protection
    def abort_all(self, reason: str | None = None) -> None:
        """Abort every task still running. Not a checkpoint; never blocks;
        ``KeyboardInterrupt``-protected."""
        check_reason(reason)
        if not self._running:
            return
        check_trio_thread("JoinSet.abort_all()")
        handles = list(self._running)
        for handle in handles:
            handle._note_abort(reason)
        cancel_scopes([handle._scope for handle in handles], reason)  # one reason for all

    async def join_next(self) -> Outcome[Any] | None:
        """The outcome of the next task to finish, in finishing order; ``None`` if empty.

        Cancellation:
            Always a checkpoint. If cancelled, no outcome is consumed: the next call returns it.
        """
        found = await self.join_next_with_handle()
        return None if found is None else found[1]

    async def join_next_with_handle(self) -> tuple[TaskHandle[Any], Outcome[Any]] | None:
        """As :meth:`join_next`, with the handle of the task the outcome belongs to (tokio
        ``join_next_with_id``): ``handle.name`` and ``handle.id`` say which task it was.

        Cancellation:
            Always a checkpoint. If cancelled, nothing is consumed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._finished:
            if self._count == 0:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return None
            await self._lot.park()
        handle = self._pop_handle()
        await trio.lowlevel.cancel_shielded_checkpoint()
        outcome = handle.outcome
        assert outcome is not None
        return handle, outcome

    def _pop_handle(self) -> TaskHandle[Any]:
        handle = self._finished.popleft()
        self._count -= 1
        if self._count == 0:
            self._lot.unpark_all()  # other waiters see the set is now empty
        return handle

    def _pop(self) -> Outcome[Any]:
        outcome = self._pop_handle().outcome
        assert outcome is not None
        return outcome

    async def join_all(self) -> list[Outcome[Any]]:
        """Wait for every task, then return all outcomes not yet returned, in finishing order.

        Cancellation:
            Always a checkpoint. It consumes nothing until every task has finished, so if it is
            cancelled while waiting, every outcome is still there.
        """
        await self._wait_all_finished()
        outcomes = [self._pop() for _ in range(len(self._finished))]
        await trio.lowlevel.cancel_shielded_checkpoint()
        return outcomes

    async def shutdown(self, reason: str | None = None) -> None:
        """Abort every task and wait until all have finished (tokio ``shutdown()``).

        The outcomes stay in the set for :meth:`join_next` / :meth:`join_all`.

        Cancellation:
            Always a checkpoint. Cancelled before the call, it aborts nothing. Cancelled while
            waiting, the tasks are already aborted and keep winding down; nothing is consumed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled before the call: no effect
        self.abort_all(reason)
        await self._wait_all_finished()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _wait_all_finished(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._running:
            await self._lot.park()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Outcome[Any]:
        outcome = await self.join_next()
        if outcome is None:
            raise StopAsyncIteration
        return outcome

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a JoinSet can be entered only once")
        cm = self._nursery_cm = trio.open_nursery()
        self._nursery = await cm.__aenter__()
        self._state = "open"
        return self

    async def __aexit__(  # noqa: ASYNC910 - awaiting the nursery exit is the checkpoint
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Cancellation: aborts the running tasks and waits for them (a checkpoint).

        The body's exception propagates as itself; a non-cancellation ``BaseException`` from a
        task (``KeyboardInterrupt``) propagates alongside it in a ``BaseExceptionGroup``.
        """
        self._state = "closed"
        self.abort_all()
        assert self._nursery_cm is not None
        try:
            # Joining the aborted tasks is the point of this exit, as for a nursery's own.
            return await close_nursery(self._nursery_cm, exc_type, exc, tb)  # noqa: ASYNC102
        finally:
            for handle in self._finished:
                handle._report_unretrieved("JoinSet closed")


async def close_nursery(  # noqa: ASYNC910 - awaiting the nursery exit is the checkpoint
    cm: AbstractAsyncContextManager[trio.Nursery],
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> bool:
    """Exit a nursery whose tasks keep their errors as outcomes: the body's exception (the
    only one, or alongside nothing but cancellations) propagates as itself, not in a group."""
    try:
        return await cm.__aexit__(exc_type, exc, tb)  # type: ignore[return-value]
    except BaseExceptionGroup as group:
        if exc is None:
            raise
        # Trio may hand on a copy of a group the body raised (split from its cancellations):
        # compare the leaves. Nothing but the body's own errors (and cancellations) means the
        # body's exception propagates as itself, the same object.
        body = {id(leaf) for leaf in leaves(exc)}
        if not all(id(leaf) in body or isinstance(leaf, trio.Cancelled) for leaf in leaves(group)):
            raise
        reraise_bare(exc)
