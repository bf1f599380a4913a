"""cancel_at_each_checkpoint: deliver a cancellation at every point an operation can be cancelled.

Mechanism: a Trio instrument watches the task that runs the operation and every task it spawns
(directly or not). Each time one of them *suspends* (yields to the scheduler) is one point. A
counting run finds the N suspensions of an uncancelled run; then run k (1 <= k <= N) cancels the
operation's scope just before the step that ends in suspension k: right before the operation
starts for k = 1, and from the instrument's ``after_task_step`` of suspension k - 1 otherwise.
The cancellation then lands at the first cancel point the operation reaches: a
``checkpoint_if_cancelled()`` inside that step (Trio's fast paths check for cancellation without
suspending), or suspension k itself if it is a blocking wait. A suspension that is only a
schedule point (``cancel_shielded_checkpoint``) passes the cancellation on to the next cancel
point.

Trio's scheduler shuffles runnable tasks; each run reseeds the generator it uses (as Trio's own
Hypothesis integration does), so the same operation gives the same points on every run.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, final

import attrs
import trio

from .._util import first_leaf, only_cancelled

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import FrameType

_TRIO_DIR = os.path.dirname(trio.__file__)
_THIS_FILE = os.path.abspath(__file__)
_SEED = 1_000_003


@final
class CancelSafetyError(AssertionError):
    """An operation broke under a cancellation delivered at one of its checkpoints.

    Attributes:
        point: The checkpoint (counting from 1) where the cancellation was delivered; 0 for
            the uncancelled counting run.
        location: ``"path:line in function"``, where the cancellation landed (or, if the
            operation never saw it, the suspension it was aimed at).
    """

    def __init__(self, message: str, *, point: int, location: str) -> None:
        super().__init__(message)
        self.point = point
        self.location = location


@final
@attrs.frozen
class SweepResult:
    """What :func:`cancel_at_each_checkpoint` checked.

    Attributes:
        points: How many checkpoints the operation passed (and were each swept).
        locations: ``"path:line in function"`` of each checkpoint, in order.
        cancelled: How many of the runs ended with the operation cancelled (the others
            completed: the cancellation arrived after its last cancel point).
    """

    points: int
    locations: tuple[str, ...]
    cancelled: int


def _is_internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_TRIO_DIR) or path == _THIS_FILE or "/outcome/" in path


def _describe(frame: FrameType, lineno: int) -> str:
    return f"{frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}"


def _suspension_location(task: trio.lowlevel.Task) -> str:
    found = "<unknown>"
    for frame, lineno in task.iter_await_frames():
        if not _is_internal(frame.f_code.co_filename):
            found = _describe(frame, lineno)
    return found


def _landing_location(exc: BaseException) -> str | None:
    found = None
    tb = exc.__traceback__
    while tb is not None:
        if not _is_internal(tb.tb_frame.f_code.co_filename):
            found = _describe(tb.tb_frame, tb.tb_lineno)
        tb = tb.tb_next
    return found


class _Watcher(trio.abc.Instrument):
    def __init__(self, cancel_before: int | None, scope: trio.CancelScope) -> None:
        self.tasks: set[trio.lowlevel.Task] = set()
        self.count = 0
        self.locations: list[str] = []
        self.cancel_before = cancel_before
        self.scope = scope

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        nursery = task.parent_nursery
        if nursery is not None and nursery.parent_task in self.tasks:
            self.tasks.add(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.tasks.discard(task)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task not in self.tasks:  # not ours, or this step was its last
            return
        self.count += 1
        self.locations.append(_suspension_location(task))
        if self.cancel_before is not None and self.count == self.cancel_before - 1:
            self.scope.cancel(reason=f"cancel_at_each_checkpoint: point {self.cancel_before}")


@attrs.define
class _Run:
    count: int = 0
    locations: list[str] = attrs.Factory(list)
    cancelled: bool = False
    error: BaseException | None = None
    landing: str | None = None


async def _run_once(async_fn: Callable[[], Awaitable[object]], cancel_before: int | None) -> _Run:
    scope = trio.CancelScope()
    watcher = _Watcher(cancel_before, scope)
    run = _Run()

    async def runner() -> None:  # noqa: ASYNC910 - a task root
        watcher.tasks.add(trio.lowlevel.current_task())
        if cancel_before == 1:
            scope.cancel(reason="cancel_at_each_checkpoint: point 1")
        with scope:
            try:
                await async_fn()
            except trio.Cancelled as exc:
                run.landing = _landing_location(exc)
                raise
            except BaseException as exc:  # noqa: ASYNC103 - Cancelled is re-raised
                if only_cancelled(exc):
                    run.landing = _landing_location(first_leaf(exc))
                    raise
                if not isinstance(exc, Exception | BaseExceptionGroup):
                    raise  # KeyboardInterrupt and the like are not the sweep's business
                run.error = exc  # reported as the sweep's failure
                run.landing = _landing_location(first_leaf(exc))
        run.cancelled = scope.cancelled_caught

    # Trio's scheduler shuffle (private; if it moves, runs are merely not reseeded).
    run_module = getattr(getattr(trio, "_core", None), "_run", None)
    rng = getattr(run_module, "_r", None)
    if not isinstance(rng, random.Random):
        rng = None
    saved = rng.getstate() if rng is not None else None
    if rng is not None:
        rng.seed(_SEED)
    trio.lowlevel.add_instrument(watcher)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner, name="cancel_at_each_checkpoint operation")
    finally:
        trio.lowlevel.remove_instrument(watcher)
        if rng is not None and saved is not None:
            rng.setstate(saved)
    run.count = watcher.count
    run.locations = watcher.locations
    return run


async def cancel_at_each_checkpoint(
    async_fn: Callable[[], Awaitable[object]],
    *,
    check: Callable[[], Awaitable[object]] | None = None,
    max_points: int = 10_000,
) -> SweepResult:
    """Prove an operation cancel-safe: cancel it at each of its checkpoints in turn.

    Runs ``async_fn()`` once uncancelled to count the checkpoints it passes, then once per
    checkpoint k with a cancellation delivered exactly there, awaiting ``check()`` after every
    run (the counting run included) to assert your invariants: nothing lost, nothing done
    twice, every resource released. Call ``async_fn`` fresh state each time (it is called N + 1
    times).

    What counts as a checkpoint: each time the task running ``async_fn``, or any task it spawns,
    suspends, i.e. yields to Trio's scheduler (every ``await`` of a Trio operation that blocks,
    sleeps or reschedules; an ``await`` of your own async function counts only through the
    Trio operations inside it). Point k cancels the operation's cancel scope just before the step
    that ends in suspension k, so the ``trio.Cancelled`` lands at the first cancel point reached
    from there: a ``checkpoint_if_cancelled()`` in that step (Trio's fast paths, for example a
    receive that finds an item ready), or suspension k itself when it is a blocking wait. A
    ``trio.Cancelled`` that escapes ``async_fn`` is the expected outcome; any other exception is
    a failure. Checkpoints are counted from 1. Works under pytest-trio and with
    :class:`trio.testing.MockClock` (autojump included). Deterministic: Trio's scheduler
    shuffle is reseeded for each run, so the same operation gives the same sequence of points.

    Returns:
        A :class:`SweepResult` (how many points, where they are, how many runs were cancelled).

    Raises:
        CancelSafetyError: ``async_fn`` raised something other than ``trio.Cancelled``, or
            ``check()`` failed, after a run; ``.point`` is k (0 for the counting run) and
            ``.location`` where the cancellation landed. The original error is its ``__cause__``.
        ValueError: The operation passed more than ``max_points`` checkpoints.

    Cancellation:
        Always a checkpoint. If the caller is cancelled, the sweep stops; the run in progress
        is cancelled like any other Trio code.
    """
    counting = await _run_once(async_fn, None)
    if counting.error is not None:
        raise CancelSafetyError(
            f"the uncancelled run raised {counting.error!r}",
            point=0,
            location=counting.landing or "<unknown>",
        ) from counting.error
    await _check(check, 0, "uncancelled run")
    n = counting.count
    if n > max_points:
        raise ValueError(f"the operation passed {n} checkpoints, more than max_points={max_points}")
    cancelled = 0
    for k in range(1, n + 1):
        run = await _run_once(async_fn, k)
        aimed_at = counting.locations[k - 1]
        location = run.landing or aimed_at
        if run.error is not None:
            raise CancelSafetyError(
                f"cancelled at checkpoint {k} of {n} ({location}), the operation raised "
                f"{run.error!r} instead of trio.Cancelled",
                point=k,
                location=location,
            ) from run.error
        cancelled += run.cancelled
        await _check(check, k, location, n)
    await trio.lowlevel.checkpoint()
    return SweepResult(points=n, locations=tuple(counting.locations), cancelled=cancelled)


async def _check(
    check: Callable[[], Awaitable[object]] | None, k: int, location: str, n: int = 0
) -> None:
    if check is None:
        return  # noqa: ASYNC910 - private helper; the sweep checkpoints at its end
    try:
        await check()
    except Exception as exc:
        where = "after the uncancelled run" if k == 0 else f"at checkpoint {k} of {n} ({location})"
        raise CancelSafetyError(
            f"check() failed {where}: {exc!r}", point=k, location=location
        ) from exc
