"""Shared behaviour of the endpoints of trio_cancel's channels (not public)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Self, TypeVar

import attrs
import trio

from ._checks import check_trio_thread
from ._debug import track_endpoints

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

T = TypeVar("T")


def event_has_waiters(event: trio.Event | None) -> bool:
    """Whether a task waits on ``event`` (so that setting it must wake that task)."""
    return event is not None and event.statistics().tasks_waiting > 0


async def receive_when_ready(receive_nowait: Callable[[], T], lot: trio.lowlevel.ParkingLot) -> T:
    """The blocking form of ``receive_nowait``: park in ``lot`` until it stops raising WouldBlock.

    Always a checkpoint; a cancellation consumes nothing (it lands before ``receive_nowait``
    runs, or while parked). Whoever changes what ``receive_nowait`` would return wakes ``lot``.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    while True:
        try:
            value = receive_nowait()
        except trio.WouldBlock:
            await lot.park()
            continue
        await trio.lowlevel.cancel_shielded_checkpoint()
        return value


@attrs.define(eq=False, repr=False)
class SharedEnds:
    """State common to broadcast and watch: open senders and receivers, and parked receivers."""

    senders: int = attrs.field(default=1, kw_only=True)
    receivers: int = attrs.field(default=1, kw_only=True)
    lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, kw_only=True)

    def wakes(self) -> bool:
        """Whether a change now would wake a parked task."""
        return bool(self.lot)

    def close_sender(self) -> None:
        self.senders -= 1
        if self.senders == 0:
            self.lot.unpark_all()  # receivers see the end once they have drained


class FanoutSender:
    """``receiver_count`` and ``is_closed()`` of a sender over :class:`SharedEnds`."""

    __slots__ = ()
    _state: SharedEnds

    @property
    def receiver_count(self) -> int:
        """How many receivers are open."""
        return self._state.receivers

    def is_closed(self) -> bool:
        """Whether no receiver is left. Not a checkpoint; never blocks."""
        return self._state.receivers == 0

    @trio.lowlevel.enable_ki_protection
    def clone(self) -> Self:
        """Another sender on the same channel. Not a checkpoint; never blocks.

        Raises:
            trio.ClosedResourceError: This sender was closed.
        """
        self._check_open()
        self._state.senders += 1
        sender = type(self)._create(self._state)
        track_endpoints(sender)
        return sender

    if TYPE_CHECKING:  # provided by SyncClosable and the NoPublicConstructor metaclass

        def _check_open(self) -> None: ...

        @classmethod
        def _create(cls, state: SharedEnds) -> Self: ...

    def _close(self) -> None:
        self._state.close_sender()


class Waking(Protocol):
    """A channel's shared state, as far as closing an endpoint needs it."""

    def wakes(self) -> bool: ...


class SyncClosable:
    """``close()`` is the primitive; ``aclose()``, ``with`` and ``async with`` call it.

    Subclasses set ``_closed`` and ``_state`` (whose ``wakes()`` tells whether closing now would
    wake a parked task) and implement ``_close()``, which runs once.
    """

    __slots__ = ()
    _closed: bool
    _state: Waking

    def _close(self) -> None:
        raise NotImplementedError

    @trio.lowlevel.enable_ki_protection
    def close(self) -> None:
        """Close this endpoint; idempotent. Not a checkpoint; never blocks.

        ``KeyboardInterrupt``-protected. From another thread it raises ``RuntimeError`` (and
        changes nothing) if closing would wake a task: use ``trio.from_thread.run_sync``.
        """
        if not self._closed:
            check_trio_thread(f"{type(self).__name__}.close()", wakes=self._state.wakes())
            self._closed = True  # type: ignore[misc]  # the slot is declared by each subclass
            self._close()

    async def aclose(self) -> None:
        """Close this endpoint (as :meth:`close`).

        Cancellation:
            Always a checkpoint; the endpoint is closed before it, so it is closed even if the
            checkpoint raises :exc:`trio.Cancelled`.
        """
        self.close()
        await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"this {type(self).__name__} was closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancellation: closes the endpoint; a schedule point that never raises."""
        self.close()
        await trio.lowlevel.cancel_shielded_checkpoint()
