"""cancel_at_each_checkpoint: deliver a cancellation at every point an operation can be cancelled.

What is counted: Trio's *cancel points*, the moments Trio checks whether the running task is
cancelled, exactly as ``trio.testing.assert_checkpoints`` counts them (``Task._cancel_points``).
There are three kinds, and they differ in when the check happens relative to the suspension:

* ``trio.lowlevel.checkpoint()`` (``trio.sleep(0)``): suspends shielded first, then checks on
  resuming;
* a blocking wait (a receive with nothing ready, ``trio.sleep(1)``, a contended lock, an event):
  checks when it suspends, and stays cancellable while suspended;
* Trio's fast paths (``checkpoint_if_cancelled()`` then ``cancel_shielded_checkpoint()``, as in a
  receive with data ready or an uncontended lock): check first, then suspend shielded.

Counting suspensions is therefore not counting cancel points. The sweep counts the checks
themselves: in the operation's tasks, ``Task._cancel_points`` is replaced by an ``int`` subclass
whose ``+ 1`` reports each check, with its kind (read from the calling Trio function). Run k
then cancels the operation's scope right after check k - 1 has passed (before the operation
starts for k = 1): for a fast path, at once; for ``checkpoint()``, when that call returns; for a
blocking wait, just before the next step of the operation's tasks. So check k is the first to
see the cancellation: every check, the last one included, is swept exactly once.

Trio's scheduler shuffles runnable tasks; each run reseeds the generator it uses (as Trio's own
Hypothesis integration does), so the same operation gives the same points on every run.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from .._excgroups import only_cancelled, reraise_bare
from .._trio_internals import (
    TRIO_DIR,
    count_cancel_points,
    require_cancel_point_counter,
    scheduler_rng,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import CodeType, FrameType

_THIS_FILE = os.path.abspath(__file__)
_SEED = 1_000_003

# Which Trio function counted a check tells its kind (any other caller is Trio's run loop, at a
# blocking wait): checkpoint_if_cancelled (a fast path) or checkpoint(); their code objects are
# read when the sweep is called (require_cancel_point_counter), never at import.


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
    return path.startswith(TRIO_DIR) or path == _THIS_FILE or "/outcome/" in path


def _describe(frame: FrameType, lineno: int) -> str:
    return f"{frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}"


def _stack_location(frame: FrameType | None, task: trio.lowlevel.Task) -> str | None:
    """The innermost frame outside Trio and this module on the running stack of ``task``
    (not below its own coroutine: what calls that is Trio's run loop)."""
    root = getattr(task.coro, "cr_frame", None)
    while frame is not None:
        if not _is_internal(frame.f_code.co_filename):
            return _describe(frame, frame.f_lineno)
        if frame is root:
            break
        frame = frame.f_back
    return None


def _suspended_location(task: trio.lowlevel.Task) -> str | None:
    found = None
    for frame, lineno in task.iter_await_frames():
        if not _is_internal(frame.f_code.co_filename):
            found = _describe(frame, lineno)
    return found


_FAST, _RESUME, _WAIT = "fast path", "checkpoint()", "blocking wait"


class _Watcher(trio.abc.Instrument):
    """Counts the cancel points of the operation's tasks; in run k, makes check k the first
    to see a cancellation of ``scope``.

    A fast-path check followed, in the same task step, by a blocking wait is one operation
    (a receive, an acquire that found nothing and blocks): one point, swept at its first
    check.
    """

    def __init__(
        self,
        scope: trio.CancelScope,
        target: int | None,
        target_kind: str | None,
        max_points: int | None,
        codes: tuple[CodeType, CodeType],
    ) -> None:
        self.check_then_count, self.count_then_check = codes
        self.tasks: set[trio.lowlevel.Task] = set()
        self.count = 0
        self.kinds: list[str] = []
        self.locations: list[str] = []
        self.scope = scope
        self.target = target
        self.target_kind = target_kind
        self.max_points = max_points
        self.too_many = False
        self.stepping: trio.lowlevel.Task | None = None
        self.step = 0
        self.last: tuple[int, str] | None = None
        self.profile_restore: list[object] = []
        watcher = self

        class _Counter(int):
            __slots__ = ()

            def __add__(self, other: int) -> _Counter:
                watcher.point(sys._getframe(1))
                return _Counter(int(self) + other)

        self.counter_type = _Counter

    def watch(self, task: trio.lowlevel.Task) -> None:
        self.tasks.add(task)
        count_cancel_points(task, self.counter_type)

    def cancel(self) -> None:
        self.scope.cancel(reason=f"cancel_at_each_checkpoint: point {self.target}")

    def point(self, caller: FrameType) -> None:
        task = self.stepping
        if task is None or task not in self.tasks:
            return
        code = caller.f_code
        kind = (
            _FAST
            if code is self.check_then_count
            else _RESUME
            if code is self.count_then_check
            else _WAIT
        )
        previous, self.last = self.last, (self.step, kind)
        if kind is _WAIT and previous == (self.step, _FAST):
            return  # the blocking half of the operation whose fast check was just counted
        self.count += 1
        self.kinds.append(kind)
        # at a blocking wait the caller is the run loop and the task is suspended
        location = _suspended_location(task) if kind is _WAIT else _stack_location(caller, task)
        self.locations.append(location or _spawn_location(task))
        if self.max_points is not None and self.count > self.max_points:
            self.too_many = True
            self.scope.cancel(
                reason=f"cancel_at_each_checkpoint: more than max_points={self.max_points}"
            )
            return
        if self.target is None:
            return
        if self.target_kind is not _FAST:
            if self.count == self.target:
                self.cancel()  # before this check, which follows at once
        elif self.count == self.target - 1:
            self.cancel_at_next_fast_check()

    def cancel_at_next_fast_check(self) -> None:
        """A fast path checks before it counts: cancel when the next one is called."""
        previous = sys.getprofile()
        self.profile_restore.append(previous)

        def profile(frame: FrameType, event: str, arg: object) -> None:
            fast = frame.f_code is self.check_then_count
            if event == "call" and fast and self.stepping in self.tasks:
                self.restore_profile()
                self.cancel()

        sys.setprofile(profile)

    def restore_profile(self) -> None:
        if self.profile_restore:
            sys.setprofile(self.profile_restore.pop())  # type: ignore[arg-type]

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.stepping = task
        self.step += 1

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.stepping = None

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        nursery = task.parent_nursery
        if nursery is not None and nursery.parent_task in self.tasks:
            self.watch(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.tasks.discard(task)


def _spawn_location(task: trio.lowlevel.Task) -> str:
    """For a task whose frames are all Trio's (``start_soon(trio.sleep, 1)``): where its
    nearest ancestor outside Trio is, naming the task."""
    ancestor: trio.lowlevel.Task | None = task
    while ancestor is not None:
        nursery = ancestor.parent_nursery
        ancestor = nursery.parent_task if nursery is not None else None
        if ancestor is not None:
            found = _suspended_location(ancestor)
            if found is not None:
                return f"{found} (in its child task {task.name!r})"
    return f"<task {task.name!r}>"


@attrs.define
class _Run:
    count: int = 0
    locations: list[str] = attrs.Factory(list)
    cancelled: bool = False
    error: BaseException | None = None
    too_many: bool = False
    kinds: list[str] = attrs.Factory(list)


async def _run_once(
    async_fn: Callable[[], Awaitable[object]],
    target: int | None,
    target_kind: str | None,
    max_points: int | None,
    codes: tuple[CodeType, CodeType],
) -> _Run:
    scope = trio.CancelScope()
    watcher = _Watcher(scope, target, target_kind, max_points, codes)
    run = _Run()

    async def runner() -> None:  # noqa: ASYNC910 - a task root
        watcher.watch(trio.lowlevel.current_task())
        if target == 1:
            if target_kind is _FAST:
                watcher.cancel_at_next_fast_check()
            else:
                watcher.cancel()
        with scope:
            try:
                await _awaitable_of(async_fn, "async_fn")
            except BaseException as exc:  # noqa: ASYNC103 - Cancelled is re-raised
                if only_cancelled(exc) or _holds_interrupt(exc) or isinstance(exc, _UsageError):
                    raise  # KeyboardInterrupt and the like are not the sweep's business
                run.error = exc  # reported as the sweep's failure
        run.cancelled = scope.cancelled_caught

    rng = scheduler_rng()
    saved = rng.getstate() if rng is not None else None
    if rng is not None:
        rng.seed(_SEED)
    trio.lowlevel.add_instrument(watcher)
    try:
        async with trio.open_nursery(strict_exception_groups=True) as nursery:
            nursery.start_soon(runner, name="cancel_at_each_checkpoint operation")
    except BaseExceptionGroup as group:
        # This nursery is the sweep's own: what the operation raised leaves as itself.
        if len(group.exceptions) == 1:
            reraise_bare(group.exceptions[0])
        raise  # pragma: no cover - one task only
    finally:
        watcher.restore_profile()
        trio.lowlevel.remove_instrument(watcher)
        if rng is not None and saved is not None:
            rng.setstate(saved)
    run.count = watcher.count
    run.locations = watcher.locations
    run.too_many = watcher.too_many
    run.kinds = watcher.kinds
    return run


class _UsageError(TypeError):
    """A usage mistake found while running: raised from the sweep as a ``TypeError``."""


def _holds_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is, or is a group holding, a ``BaseException`` that is neither an
    ``Exception`` nor ``trio.Cancelled`` (KeyboardInterrupt, SystemExit): not a finding of the
    sweep, so it propagates."""
    if isinstance(exc, BaseExceptionGroup):
        return (
            exc.split(lambda e: not isinstance(e, Exception | trio.Cancelled | BaseExceptionGroup))[
                0
            ]
            is not None
        )
    return not isinstance(exc, Exception | trio.Cancelled)


def _check_async_fn(fn: object, name: str) -> None:
    """``TypeError`` at the call for what is certainly not an async function to call."""
    if inspect.isawaitable(fn):
        if inspect.iscoroutine(fn):
            fn.close()  # no "never awaited" warning on top of the error
        shown = getattr(fn, "__name__", None) or "op"
        raise TypeError(
            f"{name} must be an async function to call, not an awaitable: pass the function "
            f"itself ({shown}, not {shown}()); bind arguments with functools.partial or a lambda"
        )
    if not callable(fn):
        raise TypeError(f"{name} must be an async function, not {type(fn).__name__}")
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.isasyncgenfunction(target):
        raise TypeError(f"{name} must be an async function, not an async generator function")
    plain = inspect.isfunction(target) or inspect.ismethod(target) or inspect.isbuiltin(target)
    lambda_ = getattr(target, "__name__", "") == "<lambda>"  # may return a coroutine
    if plain and not lambda_ and not inspect.iscoroutinefunction(target):
        raise TypeError(
            f"{name} must be an async function (async def); {target.__qualname__!r} is synchronous"
        )


def _awaitable_of(fn: Callable[[], Awaitable[object]], name: str) -> Awaitable[object]:
    """``fn()``, which must be awaitable (a lambda returning a coroutine is fine)."""
    result = fn()
    if not inspect.isawaitable(result):
        raise _UsageError(
            f"{name} must be an async function, but {name} returned {type(result).__name__}"
        )
    return result


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
    twice, every resource released. ``async_fn`` is called N + 1 times: have it start from fresh
    state each time.

    What counts as a checkpoint: every *cancel point* of the task running ``async_fn`` and of
    every task it spawns, i.e. every moment Trio checks for cancellation (what
    ``trio.testing.assert_checkpoints`` counts): each ``trio.lowlevel.checkpoint()`` /
    ``trio.sleep(0)``, each blocking wait (a receive with nothing ready, ``trio.sleep(t)``, a
    contended lock, ``Event.wait()``), and each of Trio's fast paths (a receive with data
    ready, an uncontended lock: ``checkpoint_if_cancelled()``). A schedule point that does not
    check (``cancel_shielded_checkpoint()``) is not one; an ``await`` of your own async
    function counts only through the Trio operations inside it. Run k cancels the operation's
    scope right after check k - 1 has passed, so check k is the first to see it, whatever its
    kind: every checkpoint, the last one included, is swept exactly once. A ``trio.Cancelled``
    that escapes ``async_fn`` is the expected outcome; any other exception is a failure.
    Checkpoints are counted from 1. Works under pytest-trio and with
    :class:`trio.testing.MockClock` (autojump included). Deterministic: Trio's scheduler
    shuffle is reseeded for each run, so the same operation gives the same sequence of points.

    Returns:
        A :class:`SweepResult` (how many points, where they are, how many runs were cancelled).

    Raises:
        CancelSafetyError: ``async_fn`` raised something other than ``trio.Cancelled``, or
            ``check()`` failed, after a run; ``.point`` is k (0 for the counting run) and
            ``.location`` where the cancellation landed. The original error is its ``__cause__``.
        ValueError: The operation passed more than ``max_points`` checkpoints: raised as soon
            as the counting run passes the limit (the operation is cancelled there), so an
            operation that never ends does not hang the sweep.
        RuntimeError: This Trio has no per-task cancel point counter to count with, or is a
            version the helper was not checked on (it replaces a private Trio attribute).
        TypeError: ``async_fn`` or ``check`` is not an async function to call (a coroutine
            such as ``op()`` instead of ``op``, a ``def`` function, or one that returned
            something not awaitable): raised at the call, never a :exc:`CancelSafetyError`.
        KeyboardInterrupt: Or any other ``BaseException`` that is neither an ``Exception`` nor
            ``trio.Cancelled``, raised by ``async_fn`` or ``check``: it propagates as it was
            raised (bare, or in the ``BaseExceptionGroup`` a nursery wrapped it in); it is not
            a finding of the sweep.

    Cancellation:
        Always a checkpoint. If the caller is cancelled, the sweep stops; the run in progress
        is cancelled like any other Trio code.
    """
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 0:
        raise ValueError(f"max_points must be an int >= 0, not {max_points!r}")
    _check_async_fn(async_fn, "async_fn")
    if check is not None:
        _check_async_fn(check, "check")
    codes = require_cancel_point_counter("cancel_at_each_checkpoint()")
    counting = await _run_once(async_fn, None, None, max_points, codes)
    if counting.too_many:
        raise ValueError(
            f"the operation passed more than max_points={max_points} checkpoints (it was "
            "cancelled there; raise max_points if it really has that many)"
        )
    if counting.error is not None:
        location = counting.locations[-1] if counting.locations else "<no checkpoint>"
        raise CancelSafetyError(
            f"the uncancelled run raised {counting.error!r}", point=0, location=location
        ) from counting.error
    await _check(check, 0, "uncancelled run")
    n = counting.count
    cancelled = 0
    for k in range(1, n + 1):
        run = await _run_once(async_fn, k, counting.kinds[k - 1], None, codes)
        # Where check k was in this run (the same place as in the counting run, since the
        # run is deterministic up to there); the counting run's if it was never reached.
        location = run.locations[k - 1] if len(run.locations) >= k else counting.locations[k - 1]
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
        await _awaitable_of(check, "check")
    except _UsageError:
        raise
    except Exception as exc:
        where = "after the uncancelled run" if k == 0 else f"at checkpoint {k} of {n} ({location})"
        raise CancelSafetyError(
            f"check() failed {where}: {exc!r}", point=k, location=location
        ) from exc
