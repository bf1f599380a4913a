"""JoinSet: a set of tasks whose outcomes are collected in finishing order (tokio ``JoinSet``)."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVarTuple, final, overload

import attrs
import trio
from typing_extensions import TypeVar

from . import _hooks
from ._checks import check_reason, check_trio_thread, with_token
from ._nursery import NurseryOwner, OwnedNursery
from ._task import check_task_arguments, make_handle, start_task
from ._trio_internals import cancel_scopes

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._outcome import Outcome
    from ._task import TaskHandle
    from ._token import CancellationToken

# What the set's tasks return: `async with tc.JoinSet() as js:` is a JoinSet[object] (PEP 696
# default), `tc.JoinSet[int]()` checks that every task returns an int.
T = TypeVar("T", default=object)
PosArgsT = TypeVarTuple("PosArgsT")


@final
@attrs.define(eq=False, repr=False)
class JoinSet(NurseryOwner, Generic[T]):
    """A set of tasks whose outcomes are collected in finishing order (tokio ``JoinSet``).

    Use as ``async with tc.JoinSet() as js:``; it owns a nursery. Lifecycle: *new* (spawning
    raises ``RuntimeError``), *open* inside the ``async with``, *closed* after it. Leaving the
    block aborts the tasks still running and waits for them (as dropping a tokio ``JoinSet``
    aborts its tasks); an exception from the body propagates as itself, not wrapped in a group.
    Failed outcomes that were never retrieved are logged on the ``trio_cancel`` logger at exit.

    The set never changes the garbage collector's settings: around a planned shutdown of
    many thousands of tasks, the application may enter
    :func:`~trio_cancel.deferred_full_collections` (see the performance page for the gain and
    the trade-off).

    Cancellation:
        Entering is a checkpoint, before the set opens. Leaving aborts the running tasks and
        waits for them (a checkpoint). The body's exception propagates as itself; a
        non-cancellation ``BaseException`` from a task (``KeyboardInterrupt``) propagates
        alongside it in a ``BaseExceptionGroup``.
    """

    _tasks: OwnedNursery = attrs.field(factory=lambda: OwnedNursery("JoinSet"), init=False)
    _running: set[TaskHandle[T]] = attrs.field(factory=set, init=False)
    _finished: collections.deque[TaskHandle[T]] = attrs.field(factory=collections.deque, init=False)
    _count: int = attrs.field(default=0, init=False)
    # Tasks of start() calls that have not called started() yet: abort_all reaches them too.
    _starting: set[TaskHandle[T]] = attrs.field(factory=set, init=False)
    # Tasks waiting for the next outcome (join_next), and for every task to end (join_all,
    # shutdown): two lots, so that 100,000 tasks ending wake a shutdown once, not 100,000 times.
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _parked_in_lot: int = attrs.field(default=0, init=False)  # its length, without a call
    _all_done: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    # What each task calls when it ends (_task_done): one bound method while the set is open,
    # not one per task (an object more per pending task for the collector to traverse). It
    # holds the set: made when the set opens, dropped when it closes.
    _on_task_done: Callable[[TaskHandle[T]], None] | None = attrs.field(default=None, init=False)

    def __len__(self) -> int:
        """Tasks spawned and not yet returned by :meth:`join_next`."""
        return self._count

    def __repr__(self) -> str:
        return (
            f"<JoinSet {self._tasks.state}, {len(self._running)} running, "
            f"{len(self._finished)} finished and not joined>"
        )

    @overload
    def spawn(
        self,
        async_fn: Callable[[*PosArgsT], Awaitable[T]],
        *args: *PosArgsT,
        name: str | None = None,
        token: CancellationToken | None = None,
    ) -> TaskHandle[T]: ...
    @overload
    def spawn(
        self,
        async_fn: Callable[..., Awaitable[T]],
        *args: object,
        name: str | None = None,
        token: CancellationToken,
    ) -> TaskHandle[T]: ...  # async_fn takes token= (the one rule for the word)

    def spawn(
        self,
        async_fn: Callable[..., Awaitable[T]],
        *args: object,
        name: str | None = None,
        token: CancellationToken | None = None,
    ) -> TaskHandle[T]:
        """As :func:`spawn`, into this set. Not a checkpoint; never blocks.

        Raises:
            RuntimeError: Outside the set's ``async with`` block.
        """
        what = "JoinSet.spawn()"
        nursery = self._tasks.require_open(what)
        handle = make_handle(nursery, async_fn, args, name, token, self._on_task_done, what)
        self._running.add(handle)
        self._count += 1
        return handle

    async def start(
        self,
        async_fn: Callable[..., Awaitable[T]],
        *args: object,
        name: str | None = None,
        token: CancellationToken | None = None,
    ) -> tuple[TaskHandle[T], Any]:
        """As :func:`~trio_cancel.start`, into this set: returns ``(handle, value)`` once the
        task has called ``task_status.started(value)``; only then does it join the set.

        A task aborted (by :meth:`abort_all`, :meth:`shutdown` or the exit) or whose token
        fires before ``started()`` makes this raise :exc:`~trio_cancel.OperationCancelledError`
        and never joins the set; so does an error before ``started()`` (it propagates).

        Raises:
            RuntimeError: Outside the set's ``async with`` block; the task returned without
                calling ``started()``.

        Cancellation:
            As :func:`~trio_cancel.start`: always a checkpoint; cancelled while waiting for
            ``started()``, the task is cancelled and never joins the set.
        """
        what = "JoinSet.start()"
        nursery = self._tasks.require_open(what)
        name = check_task_arguments(nursery, async_fn, name, token, what)
        fn = with_token(async_fn, args, token, what)
        await trio.lowlevel.checkpoint_if_cancelled()
        return await start_task(
            nursery,
            fn,
            args,
            name,
            token,
            what,
            injected=token,
            on_started=self._task_started,
            on_done=self._on_task_done,
            starting=self._starting,
        )

    def _opened(self) -> None:
        self._on_task_done = self._task_done

    def _task_started(self, handle: TaskHandle[T]) -> None:
        self._starting.discard(handle)
        self._running.add(handle)
        self._count += 1

    def _task_done(self, handle: TaskHandle[T]) -> None:
        self._running.discard(handle)
        self._finished.append(handle)
        if self._parked_in_lot:
            self._lot.unpark_all()
        if not self._running and self._all_done:
            self._all_done.unpark_all()

    @trio.lowlevel.enable_ki_protection
    def abort_all(self, reason: str | None = None) -> None:
        """Abort every task still running. Not a checkpoint; never blocks;
        ``KeyboardInterrupt``-protected."""
        check_reason(reason)
        if not self._running and not self._starting:
            return
        check_trio_thread("JoinSet.abort_all()")
        handles = [*self._running, *self._starting]
        for handle in handles:
            handle._note_abort(reason)
        created = cancel_scopes([handle._scope for handle in handles], reason)  # one reason
        if _hooks.active:  # trio_cancel.otel: the source (of the reasons this cancel created)
            _hooks.record_created(created, "abort")

    async def join_next(self) -> Outcome[T] | None:
        """The outcome of the next task to finish, in finishing order; ``None`` if empty.

        Cancellation:
            Always a checkpoint. If cancelled, no outcome is consumed: the next call returns it.
        """
        found = await self.join_next_with_handle()
        return None if found is None else found[1]

    async def join_next_with_handle(self) -> tuple[TaskHandle[T], Outcome[T]] | None:
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
            self._parked_in_lot += 1
            try:
                await self._lot.park()
            finally:
                self._parked_in_lot -= 1
        handle = self._pop_handle()
        await trio.lowlevel.cancel_shielded_checkpoint()
        outcome = handle.outcome
        assert outcome is not None
        return handle, outcome

    def _pop_handle(self) -> TaskHandle[T]:
        handle = self._finished.popleft()
        self._count -= 1
        if self._count == 0:
            self._lot.unpark_all()  # other waiters see the set is now empty
        return handle

    async def join_all(self) -> list[Outcome[T]]:
        """Wait for every task, then return all outcomes not yet returned, in finishing order.

        Cancellation:
            Always a checkpoint. It consumes nothing until every task has finished, so if it is
            cancelled while waiting, every outcome is still there.
        """
        await self._wait_all_finished()
        finished = self._finished
        outcomes = [handle.outcome for handle in finished]  # each finished: never None
        finished.clear()
        if outcomes:
            self._count -= len(outcomes)
            if self._count == 0:
                self._lot.unpark_all()  # other waiters see the set is now empty
        await trio.lowlevel.cancel_shielded_checkpoint()
        return outcomes  # type: ignore[return-value]

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
            await self._all_done.park()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Outcome[T]:
        outcome = await self.join_next()
        if outcome is None:
            raise StopAsyncIteration
        return outcome

    async def _leave(self, exc: BaseException | None) -> bool:
        """Leaving the ``async with``: aborts the running tasks and waits for them."""
        try:
            self.abort_all()
            # Joining the aborted tasks is the point of this exit, as for a nursery's own.
            return await self._tasks.exit(exc)  # noqa: ASYNC102
        finally:
            self._on_task_done = None  # every task has ended (no cycle through the set)
            self._report_unretrieved()
            # An exception leaving the block has this frame in its traceback: its locals must
            # hold neither the exception (a cycle through its own traceback) nor the set (and
            # so its failed handles, which would then wait for the collector).
            del self, exc

    def _report_unretrieved(self) -> None:
        for handle in self._finished:
            handle._report_unretrieved("JoinSet closed")
