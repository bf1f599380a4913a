"""broadcast channels: each receiver sees every value sent after it subscribed (tokio broadcast).

The shared state keeps the last ``capacity`` values in a ring, indexed by sequence number: the
value numbered ``seq`` lives in slot ``seq % capacity`` while ``seq >= head - capacity``. Each
receiver holds the number of the next value it will read. Sending is O(1) plus waking the
receivers that wait, each once (one ``ParkingLot``); receiving is O(1).
"""

from __future__ import annotations

from typing import Generic, TypeVar, final

import attrs
import trio

from ._checks import check_trio_thread
from ._debug import track_endpoints
from ._endpoint import FanoutSender, SharedEnds, SyncClosable, receive_when_ready
from ._exceptions import LaggedError
from ._util import NoPublicConstructor

T = TypeVar("T")

_EMPTY = object()


@attrs.define(eq=False, repr=False)
class _BroadcastState(SharedEnds, Generic[T]):
    capacity: int
    ring: list[T | object]
    head: int = 0  # sequence number of the next value sent

    @property
    def oldest(self) -> int:
        oldest = self.head - self.capacity
        return oldest if oldest > 0 else 0


@final
@attrs.define(eq=False, repr=False)
class BroadcastSender(FanoutSender, SyncClosable, Generic[T], metaclass=NoPublicConstructor):
    """A sending end of :func:`open_broadcast_channel`. Not constructed by users.

    The channel ends (receivers get :exc:`trio.EndOfChannel` once drained) when every sender,
    including every :meth:`clone`, is closed.
    """

    _state: _BroadcastState[T]
    _closed: bool = attrs.field(default=False, init=False)

    @trio.lowlevel.enable_ki_protection
    def send(self, value: T) -> int:
        """Send ``value`` to every open receiver. Not a checkpoint; never blocks.

        If a receiver is ``capacity`` values behind, the oldest value it has not read is
        overwritten and that receiver will get :exc:`LaggedError`.

        Returns:
            How many receivers will see the value.

        Raises:
            trio.BrokenResourceError: No receiver is open; nothing is stored.
            trio.ClosedResourceError: This sender was closed.
        """
        self._check_open()
        state = self._state
        if state.receivers == 0:
            raise trio.BrokenResourceError("no broadcast receiver is open")
        lot = state.lot
        if lot:  # a receiver is parked: it must be woken, from the Trio thread
            check_trio_thread("BroadcastSender.send()")
        state.ring[state.head % state.capacity] = value
        state.head += 1
        if lot:  # an empty lot needs no call (a send that wakes nobody is the common case)
            lot.unpark_all()
        return state.receivers

    @trio.lowlevel.enable_ki_protection
    def subscribe(self) -> BroadcastReceiver[T]:
        """A new receiver that sees the values sent after this call. Never blocks.

        Raises:
            trio.ClosedResourceError: This sender was closed.
        """
        self._check_open()
        return _new_receiver(self._state)

    def __repr__(self) -> str:
        state = self._state
        what = "closed" if self._closed else "open"
        return f"<BroadcastSender {what}, {state.receivers} receivers, capacity {state.capacity}>"


@final
@attrs.define(eq=False, repr=False)
class BroadcastReceiver(SyncClosable, trio.abc.ReceiveChannel[T], metaclass=NoPublicConstructor):
    """A receiving end of :func:`open_broadcast_channel`. Not constructed by users.

    Sees every value sent after it was created, in order. A receiver more than ``capacity``
    values behind gets :exc:`LaggedError` once, then continues from the oldest value still
    kept. :exc:`trio.EndOfChannel` once every sender is closed and it has read everything.
    """

    _state: _BroadcastState[T]
    _next: int
    _closed: bool = attrs.field(default=False, init=False)

    def receive_nowait(self) -> T:
        """The next value, if there is one. Not a checkpoint; never blocks.

        Raises:
            LaggedError: This receiver fell behind; it now continues from the oldest kept value.
            trio.WouldBlock: Nothing new, and a sender is still open.
            trio.EndOfChannel: Every sender is closed and nothing new is left.
            trio.ClosedResourceError: This receiver was closed.
        """
        self._check_open()
        state = self._state
        oldest = state.oldest
        if self._next < oldest:
            skipped = oldest - self._next
            self._next = oldest
            raise LaggedError(skipped)
        if self._next < state.head:
            value = state.ring[self._next % state.capacity]
            self._next += 1
            return value  # type: ignore[return-value]
        if state.senders == 0:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> T:
        """Wait for the next value.

        Cancellation:
            Always a checkpoint. If cancelled, nothing is consumed. Closing this receiver while
            a task waits on it makes that task raise :exc:`trio.ClosedResourceError`.

        Raises:
            LaggedError: As :meth:`receive_nowait`.
            trio.EndOfChannel: Every sender is closed and nothing new is left.
            trio.ClosedResourceError: This receiver was closed.
        """
        return await receive_when_ready(self.receive_nowait, self._state.lot)

    @trio.lowlevel.enable_ki_protection
    def resubscribe(self) -> BroadcastReceiver[T]:
        """A new receiver that sees values sent after this call. Not a checkpoint; never blocks.

        Raises:
            trio.ClosedResourceError: This receiver was closed.
        """
        self._check_open()
        return _new_receiver(self._state)

    def _close(self) -> None:
        state = self._state
        state.receivers -= 1
        if state.receivers == 0:
            state.ring = [_EMPTY] * state.capacity  # nobody can read these any more
        state.lot.unpark_all()

    def __repr__(self) -> str:
        if self._closed:
            return "<BroadcastReceiver closed>"
        behind = self._state.head - self._next
        return f"<BroadcastReceiver {behind} unread>"


def _new_receiver(state: _BroadcastState[T]) -> BroadcastReceiver[T]:
    state.receivers += 1
    receiver = BroadcastReceiver[T]._create(state, state.head)
    track_endpoints(receiver)
    return receiver


@final
class open_broadcast_channel(tuple[BroadcastSender[T], BroadcastReceiver[T]]):
    """Open a broadcast channel keeping the last ``capacity`` values.

    ``send, recv = tc.open_broadcast_channel[str](16)``; more receivers come from
    ``send.subscribe()`` or ``recv.resubscribe()``. The counterpart of
    ``tokio::sync::broadcast::channel``, except that exactly ``capacity`` values are kept (no
    rounding up). ``send`` is synchronous and never blocks; receivers are
    :class:`trio.abc.ReceiveChannel` s.

    Not a checkpoint; never blocks.

    Raises:
        TypeError: ``capacity`` is not an int.
        ValueError: ``capacity`` is less than 1.
    """

    def __new__(cls, capacity: int) -> tuple[BroadcastSender[T], BroadcastReceiver[T]]:  # type: ignore[misc]
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        state: _BroadcastState[T] = _BroadcastState(capacity, [_EMPTY] * capacity)
        send = BroadcastSender[T]._create(state)
        recv = BroadcastReceiver[T]._create(state, 0)
        track_endpoints(send, recv)
        return (send, recv)

    def __init__(self, capacity: int) -> None:
        """Open a broadcast channel (see the class docstring)."""
