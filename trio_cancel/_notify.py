"""Notify: wake one waiter or all current waiters (tokio ``Notify``)."""

from __future__ import annotations

from typing import final

import attrs
import trio

from ._checks import check_trio_thread


@final
@attrs.define(eq=False, repr=False)
class Notify:
    """Wakes tasks waiting in :meth:`wait` (tokio ``Notify``).

    :meth:`notify_one` wakes the longest-waiting task, or stores one permit if none waits (at
    most one permit is stored; the next :meth:`wait` consumes it and returns at once).
    :meth:`notify_waiters` wakes every task waiting now and stores nothing: a task that starts
    waiting afterwards is not woken.
    """

    _permit: bool = attrs.field(default=False, init=False)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)

    @trio.lowlevel.enable_ki_protection
    def notify_one(self) -> None:
        """Wake one waiter (first in, first out), or store a permit. Never blocks.

        ``KeyboardInterrupt``-protected; from another thread, ``RuntimeError`` (nothing
        changed) if a task waits: use ``trio.from_thread.run_sync``.
        """
        check_trio_thread("Notify.notify_one()", wakes=bool(self._lot))
        if len(self._lot):
            self._lot.unpark()
        else:
            self._permit = True

    @trio.lowlevel.enable_ki_protection
    def notify_waiters(self) -> None:
        """Wake every task waiting now; store nothing. Not a checkpoint; never blocks."""
        check_trio_thread("Notify.notify_waiters()", wakes=bool(self._lot))
        self._lot.unpark_all()

    async def wait(self) -> None:
        """Wait to be notified (tokio ``notified().await``).

        Cancellation:
            Always a checkpoint. If cancelled, nothing is consumed: a stored permit stays, and a
            task that was already woken returns normally (a wake-up is never lost to a
            cancellation).
        """
        if self._permit:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._permit = False
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._lot.park()

    def __repr__(self) -> str:
        return (
            f"<Notify {'permit stored' if self._permit else 'no permit'}, {len(self._lot)} waiting>"
        )
