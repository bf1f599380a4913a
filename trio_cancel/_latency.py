"""CancellationLatency: how long cancelled tasks take to land, and who holds the others up."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, final

import attrs
import outcome
import trio

from ._token import TokenWake
from ._trio_internals import next_send

if TYPE_CHECKING:
    from collections.abc import Callable


@final
@attrs.frozen
class LatencyRecord:
    """One task's landing: ``name``, ``reason`` of its cancellation, ``seconds`` to exit."""

    name: str
    reason: str | None
    seconds: float


@final
@attrs.frozen
class SlowStep:
    """A step a cancelled task ran for ``seconds`` without reaching a checkpoint."""

    name: str
    seconds: float


def _cancel_wake(task: trio.lowlevel.Task) -> tuple[bool, str | None]:
    """Whether ``task`` is being woken by an explicit cancellation, and its reason.

    Two kinds count: an explicit ``trio.Cancelled`` about to be thrown in, and a token's
    cooperative wake-up of ``wait_cancelled()``. Reads the outcome the runner will send in
    (``next_send``, from Trio's internals).
    """
    sent = next_send(task)
    if isinstance(sent, outcome.Error) and isinstance(sent.error, trio.Cancelled):
        if sent.error.source == "explicit":
            return True, sent.error.reason
    elif isinstance(sent, outcome.Value) and isinstance(sent.value, TokenWake):
        return True, sent.value.reason
    return False, None


@final
class CancellationLatency(trio.abc.Instrument):
    """A Trio instrument measuring cancellation latency, task by task.

    Add it with ``trio.lowlevel.add_instrument(latency)`` (or ``trio.run(...,
    instruments=[latency])``). For every task woken by an explicit cancellation (a token's
    ``cancel()``, whether it wakes ``wait_cancelled()`` or cancels a bound scope,
    ``TaskHandle.abort()``, ``CancelScope.cancel()``; not deadlines), it records
    the time from that wake-up, which happens inside the ``cancel()`` call, to the task's exit.
    It also flags every step such a task then ran for longer than ``threshold`` seconds without
    reaching a checkpoint: the code that keeps a shutdown waiting.

    ``summary()`` (or ``str(latency)``) gives p50, p99, max and the worst offenders by name.
    Tasks that were running, not waiting, when the cancellation came are measured from the
    moment the runner next wakes them with it. Uses ``time.perf_counter`` unless given
    ``clock=``. Reads Trio's private ``Task._next_send`` to see which wake-ups deliver a
    ``Cancelled``.
    """

    def __init__(
        self, *, threshold: float = 0.01, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold!r}")
        self.threshold = threshold
        self._clock = clock
        self._pending: dict[trio.lowlevel.Task, tuple[float, str | None]] = {}
        self._step_start: dict[trio.lowlevel.Task, float] = {}
        self.records: list[LatencyRecord] = []
        self.slow_steps: list[SlowStep] = []

    def _note(self, task: trio.lowlevel.Task) -> None:
        if task in self._pending:
            return
        woken, reason = _cancel_wake(task)
        if woken:
            self._pending[task] = (self._clock(), reason)

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        """Record the moment a task is woken with an explicit ``Cancelled``."""
        self._note(task)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        """Start timing a step of a cancelled task."""
        self._note(task)
        if task in self._pending:
            self._step_start[task] = self._clock()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        """Flag a step of a cancelled task that ran past the threshold."""
        start = self._step_start.pop(task, None)
        if start is not None:
            seconds = self._clock() - start
            if seconds > self.threshold:
                self.slow_steps.append(SlowStep(task.name, seconds))

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        """Record the landing of a cancelled task."""
        pending = self._pending.pop(task, None)
        if pending is not None:
            started, reason = pending
            self.records.append(LatencyRecord(task.name, reason, self._clock() - started))

    @property
    def still_landing(self) -> int:
        """Tasks woken with a cancellation that have not exited yet."""
        return len(self._pending)

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100) of the recorded latencies, in seconds; NaN if none."""
        values = sorted(r.seconds for r in self.records)
        if not values:
            return math.nan
        index = min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))
        return values[index]

    def worst(self, n: int = 5) -> list[LatencyRecord]:
        """The ``n`` slowest landings, slowest first."""
        return sorted(self.records, key=lambda r: r.seconds, reverse=True)[:n]

    def summary(self) -> str:
        """A readable report: counts, p50/p99/max, worst offenders, slow steps."""
        lines = [
            f"{len(self.records)} cancelled tasks landed; {self.still_landing} still landing",
        ]
        if self.records:
            lines.append(
                f"latency p50 {self.percentile(50) * 1e3:.2f} ms, "
                f"p99 {self.percentile(99) * 1e3:.2f} ms, "
                f"max {self.percentile(100) * 1e3:.2f} ms"
            )
            lines.append("slowest:")
            lines += [f"  {r.seconds * 1e3:9.2f} ms  {r.name}" for r in self.worst()]
        if self.slow_steps:
            lines.append(f"steps over {self.threshold * 1e3:.1f} ms without a checkpoint:")
            slowest = sorted(self.slow_steps, key=lambda s: s.seconds, reverse=True)[:5]
            lines += [f"  {s.seconds * 1e3:9.2f} ms  {s.name}" for s in slowest]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"<CancellationLatency {len(self.records)} landed, {self.still_landing} pending>"
