"""``cancel_after`` timers: one system task per run sleeps until the earliest deadline.

Invariants:

1. A :class:`TimerEntry` is *live* while it holds its token; it is released (token dropped) when
   it is replaced, when its token is cancelled first, or when it fires. A released entry never
   fires.
2. The heap holds at most twice the live entries plus a small constant: released entries are
   removed lazily, in one rebuild once they outnumber the live ones (amortised O(1) each).
3. No timer outlives :func:`trio.run` or keeps it from returning: the service is a system task
   of the run (a :class:`trio.lowlevel.RunVar`), cancelled with the run's other system tasks.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import TYPE_CHECKING

import attrs
import trio

from ._trio_internals import raise_in_main_task

if TYPE_CHECKING:
    from ._token import CancellationToken

_log = logging.getLogger("trio_cancel")


@attrs.define(eq=False, repr=False)
class TimerEntry:
    deadline: float
    seq: int
    token: CancellationToken | None
    reason: str | None
    service: TimerService | None

    def __lt__(self, other: TimerEntry) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def release(self) -> None:
        """The timer no longer matters (replaced, or its token cancelled): drop the token now
        and let the service compact its heap."""
        self.token = None
        service, self.service = self.service, None
        if service is not None:
            service.released()


class TimerService:
    """One system task per run sleeps until the earliest pending ``cancel_after`` deadline.

    Released entries stay in the heap until there are more of them than live ones; then the
    heap is rebuilt from the live ones. Each rebuild costs O(live) and follows at least as many
    releases, so a release is amortised O(1) and the heap never holds more than twice the live
    timers (plus a small constant).
    """

    def __init__(self) -> None:
        self._heap: list[TimerEntry] = []
        self._released = 0
        self._seq = itertools.count()
        self._sleep: trio.CancelScope | None = None

    def schedule(self, token: CancellationToken, deadline: float, reason: str | None) -> TimerEntry:
        entry = TimerEntry(deadline, next(self._seq), token, reason, self)
        heapq.heappush(self._heap, entry)
        if self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline
        return entry

    def released(self) -> None:
        self._released += 1
        heap = self._heap
        if self._released > 64 and 2 * self._released > len(heap):
            heap[:] = [entry for entry in heap if entry.token is not None]
            heapq.heapify(heap)
            self._released = 0

    async def run(self) -> None:
        heap = self._heap
        while True:
            while heap and heap[0].token is None:
                heapq.heappop(heap)
                self._released -= 1
            deadline = heap[0].deadline if heap else math.inf
            with trio.CancelScope(deadline=deadline) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            now = trio.current_time()
            while heap and heap[0].deadline <= now:
                entry = heapq.heappop(heap)
                token = entry.token
                if token is None:
                    self._released -= 1
                    continue
                entry.token = entry.service = None
                token._timer = None
                try:
                    token.cancel(entry.reason)
                except BaseExceptionGroup as group:
                    _deliver_callback_errors(token, group)
                finally:
                    del token, entry  # a fired timer keeps no token alive while it sleeps


def _deliver_callback_errors(
    token: CancellationToken, group: BaseExceptionGroup[BaseException]
) -> None:
    """Errors of callbacks that a timer fired: nobody called ``cancel()`` to receive them.
    ``Exception`` s are logged; anything else (``KeyboardInterrupt``, ``SystemExit``) must end
    the run as itself, so it is thrown into the main task."""
    fatal, errors = group.split(lambda exc: not isinstance(exc, Exception))
    if errors is not None:
        _log.error(
            "on_cancel callback raised in %r fired by cancel_after",
            token,
            exc_info=(type(errors), errors, errors.__traceback__),
        )
    if fatal is not None:
        leaves = fatal.exceptions
        exc: BaseException = leaves[0] if len(leaves) == 1 else fatal
        if not raise_in_main_task(exc):
            raise exc


_TIMERS: trio.lowlevel.RunVar[TimerService] = trio.lowlevel.RunVar("trio_cancel.timers")


def timer_service() -> TimerService:
    try:
        return _TIMERS.get()
    except LookupError:
        service = TimerService()
        _TIMERS.set(service)
        trio.lowlevel.spawn_system_task(service.run, name="trio_cancel.cancel_after timers")
        return service
