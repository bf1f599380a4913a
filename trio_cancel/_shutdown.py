"""Graceful shutdown in two phases, with a report of who landed and who had to be forced.

Phase 1 (``trigger``) cancels a token: tasks that take one wind down cooperatively, finishing
what they were doing. Phase 2 comes ``grace`` seconds later: every task still running is
aborted (its scope cancelled: ``trio.Cancelled`` at its next checkpoint). ``wait`` returns a
:class:`LandingReport` once every task has exited.
"""

from __future__ import annotations

import functools
import signal
from typing import TYPE_CHECKING, Any, Self, TypeVar, final

import attrs
import trio

from ._guard import _check_grace
from ._task import Outcome, TaskHandle, _make_handle, close_nursery
from ._token import CancellationToken
from ._util import NoPublicConstructor, check_reason, takes_token_keyword

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from contextlib import AbstractAsyncContextManager, AbstractContextManager
    from types import TracebackType

T = TypeVar("T")


@final
@attrs.frozen
class TaskLanding:
    """How one task of a :class:`GracefulShutdown` ended.

    Attributes:
        name: The task's name.
        outcome: ``Completed``, ``Failed`` or ``Aborted``.
        seconds: Seconds from ``trigger()`` to the task's exit; ``None`` if it ended before.
        forced: Whether phase 2 aborted it (it was still running when the grace period ended).
    """

    name: str
    outcome: Outcome[Any]
    seconds: float | None
    forced: bool


@final
@attrs.frozen
class LandingReport(metaclass=NoPublicConstructor):
    """What :meth:`GracefulShutdown.wait` returns: one :class:`TaskLanding` per task.

    Iterating the report gives the landings in the order the tasks were spawned;
    ``str(report)`` renders them as a table, slowest first.

    Attributes:
        tasks: The landings, in spawn order.
        reason: The reason of the ``trigger()``.
        grace: The grace period, in seconds.
    """

    tasks: tuple[TaskLanding, ...]
    reason: str | None
    grace: float

    @property
    def forced(self) -> tuple[TaskLanding, ...]:
        """The tasks that did not land in time and were aborted by phase 2."""
        return tuple(t for t in self.tasks if t.forced)

    def __iter__(self) -> Iterator[TaskLanding]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __str__(self) -> str:
        landed = len(self.tasks) - len(self.forced)
        lines = [
            f"shutdown {self.reason!r}: {landed} of {len(self.tasks)} tasks landed within "
            f"the {self.grace:g} s grace period, {len(self.forced)} forced"
        ]
        rows = sorted(self.tasks, key=lambda t: -1.0 if t.seconds is None else t.seconds)
        rows.reverse()
        width = max([4, *(len(t.name) for t in rows)])
        lines.append(f"  {'task':<{width}}  {'seconds':>8}  {'how':<7}  outcome")
        for t in rows:
            seconds = "before" if t.seconds is None else f"{t.seconds:.3f}"
            how = "forced" if t.forced else "landed"
            lines.append(f"  {t.name:<{width}}  {seconds:>8}  {how:<7}  {t.outcome!r}")
        return "\n".join(lines)


@final
@attrs.define(eq=False, repr=False)
class GracefulShutdown:
    """Tracks tasks and shuts them down in two phases: ``async with tc.GracefulShutdown(5.0)``.

    Lifecycle: *new*, *open* inside the ``async with`` (tasks can be spawned), *triggered*
    (phase 1: :attr:`token` cancelled), *forcing* (phase 2, ``grace`` seconds after the
    trigger: the tasks still running are aborted), *landed* (every task has exited: the
    :class:`LandingReport` is ready). Leaving the block without :meth:`wait` does
    ``trigger()`` and ``wait()``; an exception from the body propagates as itself after that.

    A cancellation from outside the block (an enclosing scope) is not a graceful shutdown: as
    for any nursery, Trio cancels every task at once.

    Args:
        grace: Seconds between phase 1 and phase 2; ``math.inf`` never forces.
    """

    _grace: float = attrs.field(converter=_check_grace)
    _token: CancellationToken = attrs.field(factory=CancellationToken, init=False)
    _state: str = attrs.field(default="new", init=False)
    _nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = attrs.field(
        default=None, init=False
    )
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    # The scopes of the helper tasks (phase-2 timer, signal watcher), cancelled at exit.
    _helpers: list[trio.CancelScope] = attrs.field(factory=list, init=False)
    _handles: list[TaskHandle[Any]] = attrs.field(factory=list, init=False)
    _exited_at: dict[TaskHandle[Any], float] = attrs.field(factory=dict, init=False)
    _forced: set[TaskHandle[Any]] = attrs.field(factory=set, init=False)
    _running: int = attrs.field(default=0, init=False)
    _all_exited: trio.Event = attrs.field(factory=trio.Event, init=False)
    _triggered_at: float | None = attrs.field(default=None, init=False)
    _reason: str | None = attrs.field(default=None, init=False)
    _report: LandingReport | None = attrs.field(default=None, init=False)
    _signals: AbstractContextManager[Any] | None = attrs.field(default=None, init=False)

    @property
    def token(self) -> CancellationToken:
        """The root token; phase 1 cancels it. Tasks that take ``token`` get a child of it."""
        return self._token

    @property
    def report(self) -> LandingReport | None:
        """The :class:`LandingReport` once every task has exited; ``None`` until then."""
        return self._report

    def spawn(
        self,
        async_fn: Callable[..., Awaitable[T]],
        *args: object,
        name: str | None = None,
    ) -> TaskHandle[T]:
        """Start a tracked task. If ``async_fn`` takes a keyword ``token`` (a parameter named
        ``token``, or ``**kwargs``), it is called with ``token=`` a child of :attr:`token`.

        A task spawned after the trigger gets an already-cancelled token and is still forced
        at the end of the same grace period.

        Raises:
            RuntimeError: Outside the ``async with`` block.
            TypeError: ``async_fn`` is not callable, or ``name`` is not a string.

        Not a checkpoint; never blocks.
        """
        if self._state not in ("open", "triggered") or self._nursery is None:
            raise RuntimeError("GracefulShutdown.spawn() works only inside its 'async with'")
        if not callable(async_fn):
            raise TypeError(f"spawn() needs an async function, not {type(async_fn).__name__}")
        if name is None:
            name = getattr(async_fn, "__qualname__", None) or repr(async_fn)
        fn: Callable[..., Awaitable[T]] = async_fn
        if takes_token_keyword(async_fn):
            fn = functools.partial(async_fn, token=self._token.child_token())
        if self._report is not None:
            raise RuntimeError("every task has landed already; this GracefulShutdown is done")
        handle = _make_handle(self._nursery, fn, args, name, None, self._task_done)
        self._handles.append(handle)
        self._running += 1
        if self._all_exited.is_set():  # spawned after everything else had landed
            self._all_exited = trio.Event()
        return handle

    def _task_done(self, handle: TaskHandle[Any]) -> None:
        self._exited_at[handle] = trio.current_time()
        self._running -= 1
        if self._running == 0 and self._triggered_at is not None:
            self._all_exited.set()

    def trigger(self, reason: str = "shutdown") -> None:
        """Phase 1: cancel :attr:`token` with ``reason``; phase 2 follows after ``grace`` s.

        Idempotent: the first reason stays.

        Raises:
            RuntimeError: Outside the ``async with`` block.
            TypeError: ``reason`` is not a string.

        Not a checkpoint; never blocks.
        """
        check_reason(reason)
        if self._triggered_at is not None:
            return
        if self._state != "open" or self._nursery is None:
            raise RuntimeError("GracefulShutdown.trigger() works only inside its 'async with'")
        self._state = "triggered"
        self._triggered_at = trio.current_time()
        self._reason = reason
        if self._running == 0:
            self._all_exited.set()
        self._start_helper(self._phase_two)
        self._token.cancel(reason)

    def force(self) -> None:
        """Phase 2 now: abort every task still running (triggers first if needed).

        Not a checkpoint; never blocks.
        """
        if self._triggered_at is None:
            self.trigger()
        forced_reason = f"{self._reason}: forced after the grace period"
        for handle in self._handles:
            if not handle.is_finished() and handle not in self._forced:
                self._forced.add(handle)
                handle.abort(forced_reason)

    def _start_helper(self, async_fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Start a helper task (not tracked) whose scope exists before it first runs, so that
        the exit can cancel it even if it never got to run."""
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._helpers.append(scope)
        self._nursery.start_soon(self._in_scope, scope, async_fn, *args)

    @staticmethod
    async def _in_scope(
        scope: trio.CancelScope, async_fn: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        with scope:
            await async_fn(*args)

    async def _phase_two(self) -> None:
        assert self._triggered_at is not None
        await trio.sleep_until(self._triggered_at + self._grace)
        self.force()

    async def wait(self) -> LandingReport:
        """Wait until every task has exited and return the :class:`LandingReport`.

        Triggers first if :meth:`trigger` was not called. Tasks still running ``grace``
        seconds after the trigger are aborted (phase 2).

        Cancellation:
            Always a checkpoint. If the wait is cancelled, nothing else changes: the tasks go on
            landing, phase 2 still comes, and a later ``wait()`` returns the report.
        """
        if self._triggered_at is None:
            self.trigger()
        while True:
            await self._all_exited.wait()
            if self._running == 0:
                break
        if self._report is None:
            assert self._triggered_at is not None
            self._report = LandingReport._create(
                tuple(self._landing(h) for h in self._handles), self._reason, self._grace
            )
        return self._report

    def _landing(self, handle: TaskHandle[Any]) -> TaskLanding:
        assert self._triggered_at is not None
        outcome = handle.outcome
        assert outcome is not None
        exited = self._exited_at[handle]
        seconds = None if exited < self._triggered_at else exited - self._triggered_at
        return TaskLanding(handle.name, outcome, seconds, handle in self._forced)

    def install_signal_handlers(self, *signals: int) -> None:
        """Trigger on a signal (default SIGINT and SIGTERM); a second signal forces phase 2.

        The trigger's reason is ``"signal SIGINT"`` (the signal's name). The previous handlers
        come back when the ``async with`` block exits. Call it from the main thread.

        Raises:
            RuntimeError: Outside the ``async with`` block, or called twice.

        Not a checkpoint; never blocks.
        """
        if self._state not in ("open", "triggered") or self._nursery is None:
            raise RuntimeError("install_signal_handlers() works only inside the 'async with'")
        if self._signals is not None:
            raise RuntimeError("signal handlers are already installed")
        cm = trio.open_signal_receiver(*(signals or (signal.SIGINT, signal.SIGTERM)))
        receiver = cm.__enter__()  # installed now, not when a task first runs
        self._signals = cm
        self._start_helper(self._watch_signals, receiver)

    async def _watch_signals(self, receiver: Any) -> None:  # noqa: ANN401 - Trio's private type
        async for signum in receiver:
            if self._triggered_at is None:
                self.trigger(f"signal {signal.Signals(signum).name}")
            else:
                self.force()

    async def __aenter__(self) -> Self:
        """Cancellation: a checkpoint, before any task can be spawned."""
        if self._state != "new":
            raise RuntimeError("a GracefulShutdown can be entered only once")
        await trio.lowlevel.checkpoint()
        cm = self._nursery_cm = trio.open_nursery()
        self._nursery = await cm.__aenter__()
        self._state = "open"
        return self

    async def __aexit__(  # noqa: ASYNC910 - awaiting the nursery exit is the checkpoint
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Cancellation: leaving the block triggers (if needed) and waits for every task to
        land, phase 2 included. A cancellation from outside cancels the tasks at once."""
        try:
            if not isinstance(exc, trio.Cancelled):
                if self._state == "open":
                    self.trigger()
                await self.wait()  # noqa: ASYNC102 - landing the tasks is this exit's job
        finally:
            for scope in self._helpers:
                scope.cancel()
            self._state = "landed"
            try:
                assert self._nursery_cm is not None
                result = await close_nursery(self._nursery_cm, exc_type, exc, tb)  # noqa: ASYNC102
            finally:
                if self._signals is not None:
                    self._signals.__exit__(None, None, None)
        return result

    def __repr__(self) -> str:
        return (
            f"<GracefulShutdown {self._state}, {len(self._handles)} tasks, "
            f"{self._running} running, grace {self._grace:g} s>"
        )
