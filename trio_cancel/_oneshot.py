"""oneshot channels: one value, once, from one sender to one receiver (tokio ``oneshot``).

State machine of the shared ``_OneshotState``: *empty* -> *full* (``send``) -> *taken*
(``receive``). Independently each side can be closed. The receiver sees: the value if full;
``EndOfChannel`` if taken, or if the sender closed while empty; ``ClosedResourceError`` once it
closed itself (close means gone, even with a value waiting).
"""

from __future__ import annotations

from typing import Generic, TypeVar, final

import attrs
import trio

from ._checks import check_trio_thread
from ._debug import track_endpoints
from ._endpoint import SyncClosable, event_has_waiters, receive_when_ready
from ._util import NoPublicConstructor

T = TypeVar("T")

_EMPTY = object()


@attrs.define(eq=False, repr=False)
class _OneshotState(Generic[T]):
    value: T | object = _EMPTY
    sent: bool = False
    taken: bool = False
    sender_closed: bool = False
    receiver_closed: bool = False
    receivers: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    closed_event: trio.Event | None = None

    def wakes(self) -> bool:
        return bool(self.receivers) or event_has_waiters(self.closed_event)


@final
@attrs.define(eq=False, repr=False)
class OneshotSender(SyncClosable, Generic[T], metaclass=NoPublicConstructor):
    """The sending half of :func:`open_oneshot_channel`. Not constructed by users.

    States: *ready*, then *spent* (after :meth:`send`) or *closed* (after :meth:`close`). Closing
    without sending ends the channel: the receiver gets :exc:`trio.EndOfChannel`.
    """

    _state: _OneshotState[T]
    _closed: bool = attrs.field(default=False, init=False)

    @trio.lowlevel.enable_ki_protection
    def send(self, value: T) -> None:
        """Deliver the one value. Not a checkpoint; never blocks.

        Raises:
            trio.ClosedResourceError: This sender already sent, or was closed.
            trio.BrokenResourceError: The receiver is closed; nothing is stored.
        """
        state = self._state
        if self._closed:
            raise trio.ClosedResourceError("this OneshotSender was closed")
        if state.sent:
            raise trio.ClosedResourceError("a oneshot sender sends once; this one is spent")
        if state.receiver_closed:
            raise trio.BrokenResourceError("the oneshot receiver is closed")
        check_trio_thread("OneshotSender.send()", wakes=state.wakes())
        state.value = value
        state.sent = True
        state.receivers.unpark_all()

    def is_closed(self) -> bool:
        """Whether the receiver is gone. Not a checkpoint; never blocks."""
        return self._state.receiver_closed

    async def wait_closed(self) -> None:
        """Wait until the receiver is closed (tokio ``closed()``).

        Cancellation:
            Always a checkpoint. Cancelling it changes nothing.
        """
        state = self._state
        if state.receiver_closed:
            await trio.lowlevel.checkpoint()
            return
        if state.closed_event is None:
            state.closed_event = trio.Event()
        await state.closed_event.wait()

    def _close(self) -> None:
        state = self._state
        state.sender_closed = True
        state.receivers.unpark_all()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "spent" if self._state.sent else "ready"
        return f"<OneshotSender {state}>"


@final
@attrs.define(eq=False, repr=False)
class OneshotReceiver(SyncClosable, trio.abc.ReceiveChannel[T], metaclass=NoPublicConstructor):
    """The receiving half of :func:`open_oneshot_channel`. Not constructed by users.

    ``await receive()`` gives the value once, then raises :exc:`trio.EndOfChannel`; ``async for``
    yields at most one value. Closing it makes the sender's ``send`` raise
    :exc:`trio.BrokenResourceError` and wakes :meth:`OneshotSender.wait_closed`.
    """

    _state: _OneshotState[T]
    _closed: bool = attrs.field(default=False, init=False)

    def receive_nowait(self) -> T:
        """The value if it is there. Not a checkpoint; never blocks.

        Raises:
            trio.WouldBlock: Nothing sent yet, and the sender is still open.
            trio.EndOfChannel: The value was already taken, or the sender closed without sending.
            trio.ClosedResourceError: This receiver was closed.
        """
        self._check_open()
        state = self._state
        if state.sent and not state.taken:
            state.taken = True
            value = state.value
            state.value = _EMPTY
            return value  # type: ignore[return-value]
        if state.taken or state.sender_closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> T:
        """Wait for the value.

        Cancellation:
            Always a checkpoint. If cancelled, nothing is consumed: the value stays for the next
            call. Closing this receiver while a task waits makes that task raise
            :exc:`trio.ClosedResourceError`.

        Raises:
            trio.EndOfChannel: The value was already taken, or the sender closed without sending.
            trio.ClosedResourceError: This receiver was closed.
        """
        return await receive_when_ready(self.receive_nowait, self._state.receivers)

    def _close(self) -> None:
        state = self._state
        state.receiver_closed = True
        state.value = _EMPTY
        state.receivers.unpark_all()
        if state.closed_event is not None:
            state.closed_event.set()

    def __repr__(self) -> str:
        state = self._state
        if self._closed:
            what = "closed"
        elif state.sent and not state.taken:
            what = "value waiting"
        elif state.taken or state.sender_closed:
            what = "ended"
        else:
            what = "empty"
        return f"<OneshotReceiver {what}>"


@final
class open_oneshot_channel(tuple[OneshotSender[T], OneshotReceiver[T]]):
    """Open a oneshot channel: ``send, recv = tc.open_oneshot_channel[int]()``.

    The counterpart of ``tokio::sync::oneshot::channel``. The sender's ``send`` is synchronous
    and never blocks; the receiver is a :class:`trio.abc.ReceiveChannel`. Like
    :func:`trio.open_memory_channel`, write the value type in brackets (or annotate the
    endpoints) so type checkers know it.

    Not a checkpoint; never blocks.
    """

    def __new__(cls) -> tuple[OneshotSender[T], OneshotReceiver[T]]:  # type: ignore[misc]
        state: _OneshotState[T] = _OneshotState()
        send = OneshotSender[T]._create(state)
        recv = OneshotReceiver[T]._create(state)
        track_endpoints(send, recv)
        return (send, recv)

    def __init__(self) -> None:
        """Open a oneshot channel (see the class docstring)."""
