"""Racing (tokio ``select!``) and cancel-safe interleaving of channels (``merge``).

Both are built on one idea: a branch that *completed* is never thrown away. Trio cancels a
losing branch at its next checkpoint, but a branch can finish before that cancellation lands
(a receive that found an item ready takes it and returns). ``select`` reports such values in
``also_completed``; ``merge`` keeps them in a buffer for its next iteration.
"""

from __future__ import annotations

import collections
import types
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

import attrs
import trio

from ._checks import coroutine_or_error
from ._exceptions import SelectError
from ._excgroups import raise_errors_of
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping

T = TypeVar("T")


@final
@attrs.frozen
class Selected(Generic[T]):
    """The result of :func:`select`: which branch won, with what, and what else completed.

    ``name, value = await tc.select(...)`` unpacks it.

    Attributes:
        name: The winning branch's keyword.
        value: What it returned.
        also_completed: Losing branches that returned a value anyway, before their cancellation
            landed (name to value). Treat these as received: they are not lost.
    """

    name: str
    value: T
    also_completed: Mapping[str, T] = attrs.field(factory=lambda: types.MappingProxyType({}))

    def __iter__(self) -> Iterator[str | T]:
        yield self.name
        yield self.value


async def select(**branches: Callable[[], Awaitable[T]] | None) -> Selected[T]:
    """Run the branches concurrently; the first to return wins and the others are cancelled.

    ``result = await tc.select(msg=recv.receive, stop=token.wait_cancelled)`` is the
    counterpart of ``tokio::select!``. Each branch is an async function taking no arguments
    (use :func:`functools.partial` for arguments). A branch given as ``None`` is disabled, like a
    ``select!`` branch whose ``if`` precondition is false. Every branch has finished before
    ``select`` returns.

    Returns:
        A :class:`Selected` with the winner's name and value, and in ``also_completed`` any
        loser that returned a value before its cancellation landed.

    Raises:
        ValueError: No branch is enabled.
        TypeError: A branch is not an async function (raised before anything runs).
        SelectError: A branch returned a value and another raised: the value is not lost, it
            is in the error's ``.selected``, and the errors are its ``.exceptions``.
        Exception: No branch returned and one raised: after the other branches are
            cancelled, the exception propagates bare if one branch raised, as an
            :exc:`ExceptionGroup` if several did. The same under Trio's deprecated
            ``trio.run(..., strict_exception_groups=False)``: no returned value is lost there
            either.

    Cancellation:
        Always a checkpoint: a cancel point before any branch starts (so a polling loop of
        quick branches still sees its deadline) and a schedule point (every enabled branch
        runs in a task of its own). If the caller is
        cancelled before any branch returned, every branch is cancelled and
        :exc:`trio.Cancelled` propagates. If a branch had already won, the result is returned;
        the caller's scope is still cancelled, so its next checkpoint raises.
    """
    enabled = {name: fn for name, fn in branches.items() if fn is not None}
    if not enabled:
        raise ValueError("select() needs at least one enabled branch (all were None)")
    coros: dict[str, Coroutine[Any, Any, T]] = {}
    try:
        for name, fn in enabled.items():
            coros[name] = coroutine_or_error(fn, (), f"select() branch {name!r}")
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancel point even if a branch is quick
    except BaseException:
        for coro in coros.values():
            coro.close()  # never started: no "never awaited" warning
        raise
    completed: dict[str, T] = {}

    async def run_branch(name: str, coro: Coroutine[Any, Any, T], cs: trio.CancelScope) -> None:
        value = await coro
        first = not completed
        completed[name] = value
        if first:
            cs.cancel(reason=f"select: branch {name!r} won")

    try:
        # Strict whatever trio.run was given: under its deprecated strict_exception_groups=False
        # a lone error or Cancelled would come out bare and skip the handler that keeps values.
        async with trio.open_nursery(strict_exception_groups=True) as nursery:
            for name, coro in coros.items():
                nursery.start_soon(run_branch, name, coro, nursery.cancel_scope, name=name)
    except BaseExceptionGroup as group:
        _, errors = group.split(trio.Cancelled)
        if errors is not None and completed:
            raise SelectError(
                f"select: a branch returned a value and {len(errors.exceptions)} raised",
                errors.exceptions,
                _selected(completed),
            ) from None
        raise_errors_of(group)
        if not completed:
            raise
        # A winner exists and only cancellations from outside are left: return the result;
        # the outer scope is still cancelled and will raise at the next checkpoint.
    # The nursery ran at least one branch task, so leaving it was a schedule point.
    return _selected(completed)  # noqa: ASYNC910


def _selected(completed: dict[str, T]) -> Selected[T]:
    winner, *_ = completed
    value = completed.pop(winner)
    return Selected(winner, value, types.MappingProxyType(completed))


_NOTHING: Any = object()


@final
class Merge(trio.abc.ReceiveChannel[T], metaclass=NoPublicConstructor):
    """Interleaves several receive channels; built by :func:`merge`.

    Cancellation guarantee: an item taken from a source is either returned to the consumer or
    kept in this object's buffer for the next ``receive()``; it is never lost, whatever
    checkpoint a cancellation lands on. This holds when every source's own ``receive`` is
    cancel-safe (it consumes nothing when cancelled), as Trio's memory channels and every
    trio_cancel receiver are.

    Several tasks may receive from one merge at once, as from a memory channel: each item goes
    to exactly one of them, waiting receivers are served first come, first served, and every one
    of them sees :exc:`trio.EndOfChannel` once every source has ended.

    Not constructed by users.
    """

    def __init__(self, sources: tuple[trio.abc.ReceiveChannel[T], ...]) -> None:
        self._sources = list(sources)
        self._buffer: collections.deque[T] = collections.deque()
        self._rotate = 0
        self._closed = False
        # One receiver at a time races the sources; the others queue here (FIFO).
        self._racing = trio.Lock()
        self._race_scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._sources)} sources open"
        return f"<Merge {state}, {len(self._buffer)} buffered>"

    def _take_ready(self) -> bool:
        """Move one ready item (round-robin over sources) into the buffer, without blocking.

        Returns False, so that the caller races every source, when none is ready or when the
        next source in turn cannot be polled without blocking (no ``receive_nowait``): that
        source gets its fair turn in the race.
        """
        sources = self._sources
        tried = 0
        index = self._rotate
        while tried < len(sources):  # a loop, not recursion: any number of sources may end
            index %= len(sources)
            source = sources[index]
            receive_nowait = getattr(source, "receive_nowait", None)
            if receive_nowait is None:
                self._rotate = index + 1
                return False
            try:
                item = receive_nowait()
            except trio.WouldBlock:
                index += 1
                tried += 1
                continue
            except trio.EndOfChannel:
                del sources[index]  # the next source slides into this index
                if not sources:
                    return False
                continue
            self._buffer.append(item)
            self._rotate = index + 1
            return True
        return False

    def _pop_ready(self) -> T:
        """A buffered item, else one a source has ready now; ``_NOTHING`` if neither."""
        if self._buffer or self._take_ready():
            return self._buffer.popleft()
        return _NOTHING  # type: ignore[no-any-return]

    async def _race(self) -> None:
        """Receive from every source at once until one returns; keep everything that returned."""
        sources = list(self._sources)
        ended: list[trio.abc.ReceiveChannel[T]] = []

        async def pull(source: trio.abc.ReceiveChannel[T], cs: trio.CancelScope) -> None:
            try:
                item = await source.receive()
            except trio.EndOfChannel:
                ended.append(source)
                if len(ended) == len(sources):
                    cs.cancel()
                return  # noqa: ASYNC910 - a task's root; receive() was the checkpoint
            self._buffer.append(item)  # kept even if the consumer is being cancelled
            cs.cancel()

        try:
            async with trio.open_nursery(strict_exception_groups=True) as nursery:
                self._race_scope = nursery.cancel_scope
                for source in sources:
                    nursery.start_soon(pull, source, nursery.cancel_scope)
        except BaseExceptionGroup as group:
            raise_errors_of(group)
            raise
        finally:
            self._race_scope = None
            if ended:  # another receiver's poll may have dropped some of them already
                gone = set(map(id, ended))
                self._sources = [source for source in self._sources if id(source) not in gone]

    def _check_open(self) -> None:
        if self._closed:
            self._buffer.clear()  # what a race delivered after aclose() is dropped too
            raise trio.ClosedResourceError("this merge was closed")

    async def receive(self) -> T:
        """The next item from any source.

        Several tasks may call this at once: each item goes to one of them.

        Cancellation:
            Always a checkpoint. If cancelled, no item is lost: one that a source already
            delivered stays buffered for the next call (of this task or another).

        Raises:
            trio.EndOfChannel: Every source has ended and the buffer is empty.
            trio.ClosedResourceError: This merge was closed (also while waiting here).
        """
        self._check_open()
        # Trio's fast path: check, take an item in the same step, then a shielded schedule
        # point (an item taken is never lost to a cancellation).
        await trio.lowlevel.checkpoint_if_cancelled()
        item = self._pop_ready()
        if item is not _NOTHING:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return item
        async with self._racing:
            while True:
                self._check_open()  # aclose() while this task waited
                item = self._pop_ready()
                if item is not _NOTHING:
                    return item
                if not self._sources:
                    raise trio.EndOfChannel
                await self._race()

    async def aclose(self) -> None:
        """Close the merge (not its sources); buffered items are dropped.

        A task waiting in :meth:`receive` gets :exc:`trio.ClosedResourceError`.

        Cancellation:
            Always a checkpoint; closed before it.
        """
        self._closed = True
        self._buffer.clear()
        if self._race_scope is not None:
            self._race_scope.cancel()
        await trio.lowlevel.checkpoint()


def merge(*receive_channels: trio.abc.ReceiveChannel[T]) -> Merge[T]:
    """Interleave items from several receive channels: ``async for item in tc.merge(a, b):``.

    The cancel-safe answer to "``select!`` in a loop" (tokio-stream's ``StreamExt::merge``):
    items are returned in the order they become available, round-robin among sources that are
    ready at once. A source that raises :exc:`trio.EndOfChannel` is dropped; the merge ends when
    every source has. The sources are not closed by the merge. Several tasks may receive from
    one merge at once: each item goes to one of them, and each sees the end.

    Cancellation guarantee: an item taken from a source is either yielded to the consumer or
    still available to the next iteration (see :class:`Merge`).

    Not a checkpoint; never blocks.

    Raises:
        TypeError: An argument is not a :class:`trio.abc.ReceiveChannel`.
    """
    for i, channel in enumerate(receive_channels):
        if not isinstance(channel, trio.abc.ReceiveChannel):
            raise TypeError(
                f"merge() takes trio.abc.ReceiveChannels; argument {i} is {type(channel).__name__}"
            )
    return Merge[T]._create(receive_channels)
