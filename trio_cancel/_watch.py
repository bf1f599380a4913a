"""watch channels: receivers see the latest value and are told when it changes (tokio ``watch``).

The shared state holds one value and a version number that every change increments. Each
receiver remembers the version it has seen. Waking is O(waiting receivers) per change (one
``ParkingLot``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar, final

import attrs
import trio

from ._checks import check_trio_thread
from ._debug import track_endpoints
from ._endpoint import (
    FanoutSender,
    SharedEnds,
    SyncClosable,
    event_has_waiters,
    receive_when_ready,
)
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


@attrs.define(eq=False, repr=False)
class _WatchState(SharedEnds, Generic[T]):
    value: T
    version: int = 0
    closed_event: trio.Event | None = None

    def wakes(self) -> bool:
        return bool(self.lot) or event_has_waiters(self.closed_event)

    def changed(self) -> None:
        self.version += 1
        if self.lot:  # an empty lot needs no call
            self.lot.unpark_all()


@final
@attrs.define(eq=False, repr=False)
class WatchSender(FanoutSender, SyncClosable, Generic[T], metaclass=NoPublicConstructor):
    """A sending end of :func:`open_watch_channel`. Not constructed by users.

    The channel closes (receivers get :exc:`trio.EndOfChannel` once they have seen the last
    value) when every sender, including every :meth:`clone`, is closed.
    """

    _state: _WatchState[T]
    _closed: bool = attrs.field(default=False, init=False)

    @trio.lowlevel.enable_ki_protection
    def send(self, value: T) -> None:
        """Store ``value`` and notify the receivers. Not a checkpoint; never blocks.

        Raises:
            trio.BrokenResourceError: Every receiver is closed; the value is not stored.
            trio.ClosedResourceError: This sender was closed.
        """
        self._check_open()
        state = self._state
        if state.receivers == 0:
            raise trio.BrokenResourceError("no watch receiver is open")
        check_trio_thread("WatchSender.send()", wakes=bool(state.lot))
        state.value = value
        state.changed()

    @trio.lowlevel.enable_ki_protection
    def send_replace(self, value: T) -> T:
        """Store ``value`` whether or not a receiver is open, notify, and return the old value.

        Not a checkpoint; never blocks.

        Raises:
            trio.ClosedResourceError: This sender was closed.
        """
        self._check_open()
        state = self._state
        check_trio_thread("WatchSender.send_replace()", wakes=bool(state.lot))
        old, state.value = state.value, value
        state.changed()
        return old

    @trio.lowlevel.enable_ki_protection
    def send_modify(self, modify: Callable[[T], object]) -> None:
        """Call ``modify(value)`` to change the value in place, then notify.

        The return value of ``modify`` is ignored. If it raises, the exception propagates and
        no receiver is notified. Not a checkpoint; never blocks.

        Raises:
            trio.ClosedResourceError: This sender was closed.
        """
        self._check_open()
        check_trio_thread("WatchSender.send_modify()", wakes=bool(self._state.lot))
        modify(self._state.value)
        self._state.changed()

    def borrow(self) -> T:
        """The current value. Not a checkpoint; never blocks."""
        self._check_open()
        return self._state.value

    @trio.lowlevel.enable_ki_protection
    def subscribe(self) -> WatchReceiver[T]:
        """A new receiver that has already seen the current value. Never blocks.

        This is tokio's behaviour, and a trap: a receiver subscribed after the value changed
        does not see that change as new. Check :meth:`WatchReceiver.borrow` first, or use
        :meth:`WatchReceiver.wait_for`, which checks the current value before waiting.

        Raises:
            trio.ClosedResourceError: This sender was closed.
        """
        self._check_open()
        return _new_receiver(self._state, self._state.version)

    async def wait_closed(self) -> None:
        """Wait until every receiver is closed (tokio ``closed()``).

        Cancellation:
            Always a checkpoint. Cancelling it changes nothing.
        """
        state = self._state
        if state.receivers == 0:
            await trio.lowlevel.checkpoint()
            return
        if state.closed_event is None:
            state.closed_event = trio.Event()
        await state.closed_event.wait()

    def __repr__(self) -> str:
        state = self._state
        what = "closed" if self._closed else "open"
        return f"<WatchSender {what}, version {state.version}, {state.receivers} receivers>"


@final
@attrs.define(eq=False, repr=False)
class WatchReceiver(SyncClosable, trio.abc.ReceiveChannel[T], metaclass=NoPublicConstructor):
    """A receiving end of :func:`open_watch_channel`. Not constructed by users.

    Remembers which version of the value it has seen. ``async for value in recv`` yields each
    newest value once (intermediate values sent while it was busy are skipped, by design).
    """

    _state: _WatchState[T]
    _seen: int
    _closed: bool = attrs.field(default=False, init=False)

    def borrow(self) -> T:
        """The current value, without marking it seen. Not a checkpoint; never blocks."""
        self._check_open()
        return self._state.value

    def borrow_and_update(self) -> T:
        """The current value, marking it seen. Not a checkpoint; never blocks."""
        self._check_open()
        self._seen = self._state.version
        return self._state.value

    def has_changed(self) -> bool:
        """Whether a value newer than the last seen exists. Not a checkpoint; never blocks.

        Raises:
            trio.EndOfChannel: Every sender is closed.
            trio.ClosedResourceError: This receiver was closed.
        """
        self._check_open()
        if self._state.senders == 0:
            raise trio.EndOfChannel
        return self._state.version != self._seen

    async def wait_changed(self) -> None:
        """Wait for a value newer than the last seen, and mark it seen (tokio ``changed()``).

        Cancellation:
            Always a checkpoint. If cancelled, nothing is marked seen.

        Raises:
            trio.EndOfChannel: Every sender is closed and nothing unseen remains.
            trio.ClosedResourceError: This receiver was closed.
        """
        await self.receive()

    async def receive(self) -> T:
        """:meth:`wait_changed`, then :meth:`borrow_and_update`, atomically.

        Cancellation:
            Always a checkpoint. If cancelled, nothing is marked seen.

        Raises:
            trio.EndOfChannel: Every sender is closed and nothing unseen remains.
            trio.ClosedResourceError: This receiver was closed.
        """
        return await receive_when_ready(self.receive_nowait, self._state.lot)

    def receive_nowait(self) -> T:
        """The value if it changed since last seen (marking it seen). Never blocks.

        Raises:
            trio.WouldBlock: Nothing unseen, and a sender is still open.
            trio.EndOfChannel: Every sender is closed and nothing unseen remains.
            trio.ClosedResourceError: This receiver was closed.
        """
        self._check_open()
        state = self._state
        if state.version != self._seen:
            self._seen = state.version
            return state.value
        if state.senders == 0:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def wait_for(self, predicate: Callable[[T], bool]) -> T:
        """Wait until ``predicate(value)`` is true, checking the current value first.

        Then each new value, as it becomes the current one. The matching value is marked seen
        and returned. An exception from ``predicate`` propagates.

        Cancellation:
            Always a checkpoint. If cancelled, nothing is marked seen.

        Raises:
            trio.EndOfChannel: Every sender is closed and the value never matched.
            trio.ClosedResourceError: This receiver was closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        state = self._state
        checked = -1
        while True:
            self._check_open()
            if state.version != checked:
                checked = state.version
                if predicate(state.value):
                    self._seen = checked
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return state.value
            if state.senders == 0:
                raise trio.EndOfChannel
            await state.lot.park()

    @trio.lowlevel.enable_ki_protection
    def clone(self) -> WatchReceiver[T]:
        """Another receiver with the same seen-state. Not a checkpoint; never blocks.

        Raises:
            trio.ClosedResourceError: This receiver was closed.
        """
        self._check_open()
        return _new_receiver(self._state, self._seen)

    def _close(self) -> None:
        state = self._state
        state.receivers -= 1
        state.lot.unpark_all()
        if state.receivers == 0 and state.closed_event is not None:
            # Wake the current waiters and forget the event: a receiver subscribed later
            # opens the channel again, and wait_closed() must then wait again.
            state.closed_event.set()
            state.closed_event = None

    def __repr__(self) -> str:
        if self._closed:
            return "<WatchReceiver closed>"
        state = "changed" if self._state.version != self._seen else "seen"
        return f"<WatchReceiver {state}>"


def _new_receiver(state: _WatchState[T], seen: int) -> WatchReceiver[T]:
    state.receivers += 1
    receiver = WatchReceiver[T]._create(state, seen)
    track_endpoints(receiver)
    return receiver


@final
class open_watch_channel(tuple[WatchSender[T], WatchReceiver[T]]):
    """Open a watch channel holding ``initial``: ``send, recv = tc.open_watch_channel(False)``.

    The counterpart of ``tokio::sync::watch::channel``. The first receiver has already seen
    ``initial``. ``send`` is synchronous and never blocks; receivers are
    :class:`trio.abc.ReceiveChannel` s that yield each newest value.

    Not a checkpoint; never blocks.
    """

    def __new__(cls, initial: T) -> tuple[WatchSender[T], WatchReceiver[T]]:  # type: ignore[misc]
        state: _WatchState[T] = _WatchState(initial)
        send = WatchSender[T]._create(state)
        recv = WatchReceiver[T]._create(state, 0)
        track_endpoints(send, recv)
        return (send, recv)

    def __init__(self, initial: T) -> None:
        """Open a watch channel (see the class docstring)."""
