"""Graceful shutdown in two phases, with a report of who landed and who had to be forced.

Phase 1 (``trigger``) cancels a token: tasks that take one wind down cooperatively, finishing
what they were doing. Phase 2 comes ``grace`` seconds later: every task still running is
aborted (its scope cancelled: ``trio.Cancelled`` at its next checkpoint). ``wait`` returns a
:class:`LandingReport` once every task has exited.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Any, TypeVar, final

import attrs
import trio

from . import _hooks
from ._checks import check_grace, check_trio_thread, with_token
from ._nursery import NurseryOwner, OwnedNursery
from ._outcome import Aborted, Completed, Failed, Outcome
from ._process import ProcessExit, check_command, run_process_group
from ._token import CancellationToken
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
    from contextlib import AbstractContextManager

    from ._task import TaskHandle

T = TypeVar("T")

_log = logging.getLogger("trio_cancel")


def _kind(outcome: Outcome[Any]) -> str:
    if isinstance(outcome, Completed):
        return "completed"
    return "failed" if isinstance(outcome, Failed) else "aborted"


@final
@attrs.frozen
class TaskLanding:
    """How one task of a :class:`GracefulShutdown` ended.

    Attributes:
        name: The task's name.
        outcome: ``Completed``, ``Failed`` or ``Aborted``.
        seconds: Seconds from ``trigger()`` to the task's exit, on Trio's clock (exact under
            ``MockClock``); ``None`` only for a task that ended before the trigger.
        forced: Whether the task was still running when phase 2 began, whether the abort
            reached it or it ended on its own after that (a task that held the CPU past the
            grace period without a checkpoint is forced too).
        abandoned: Blocking calls of the task (:func:`run_sync_interruptible`, database
            statements) that did not return within their grace period after being
            interrupted, and whose threads were abandoned, by name.
    """

    name: str
    outcome: Outcome[Any]
    seconds: float | None
    forced: bool
    abandoned: tuple[str, ...] = ()


@final
@attrs.frozen
class LandingReport(metaclass=NoPublicConstructor):
    """What :meth:`GracefulShutdown.wait` returns: one :class:`TaskLanding` per task that was
    running at the trigger or spawned after it.

    Iterating the report gives the landings in the order the tasks were spawned;
    ``str(report)`` renders them as a table, slowest first; :meth:`to_dict` gives plain data
    for logs. Tasks that ended before the trigger are not kept (a server's requests would
    otherwise grow without bound): :attr:`ended_before` counts them.

    Attributes:
        tasks: The landings, in spawn order.
        reason: The reason of the ``trigger()``.
        grace: The grace period, in seconds.
        ended_before: How many tasks ended before the trigger, by outcome kind:
            ``{"completed": n, "failed": n, "aborted": n}``.
    """

    tasks: tuple[TaskLanding, ...]
    reason: str | None
    grace: float
    ended_before: Mapping[str, int] = attrs.field(
        factory=lambda: {"completed": 0, "failed": 0, "aborted": 0}
    )

    def to_dict(self) -> dict[str, Any]:
        """The report as plain, JSON-serialisable data: the reason, the grace period, the
        counts, and per task its name, outcome kind, abort reason or error, seconds and
        whether it was forced. Return values of completed tasks are left out."""
        tasks = []
        for t in self.tasks:
            outcome = t.outcome
            tasks.append(
                {
                    "name": t.name,
                    "outcome": _kind(outcome),
                    "reason": outcome.reason if isinstance(outcome, Aborted) else None,
                    "error": repr(outcome.error) if isinstance(outcome, Failed) else None,
                    "seconds": t.seconds,
                    "forced": t.forced,
                    "abandoned": list(t.abandoned),
                }
            )
        return {
            "reason": self.reason,
            "grace": self.grace,
            "landed": len(self.tasks) - len(self.forced),
            "forced": len(self.forced),
            "ended_before": dict(self.ended_before),
            "tasks": tasks,
        }

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
            lines.extend(f"  {'':<{width}}  abandoned thread: {call}" for call in t.abandoned)
        return "\n".join(lines)


@final
@attrs.define(eq=False, repr=False)
class GracefulShutdown(NurseryOwner):
    """Tracks tasks and shuts them down in two phases: ``async with tc.GracefulShutdown(5.0)``.

    Lifecycle: *new*, *open* inside the ``async with`` (tasks can be spawned), *triggered*
    (phase 1: :attr:`token` cancelled), *forcing* (phase 2, ``grace`` seconds after the
    trigger: the tasks still running are aborted), *landed* (every task has exited: the
    :class:`LandingReport` is ready). Leaving the block without :meth:`wait` does
    ``trigger()`` and ``wait()``; an exception from the body propagates as itself after that.

    Cancellation:
        Entering is a checkpoint, before any task can be spawned. Leaving the block triggers
        (if needed) and waits for every task to land, phase 2 included. A cancellation from
        outside the block (an enclosing scope) is not a graceful shutdown: as for any nursery,
        Trio cancels every task at once.

    Args:
        grace: Seconds between phase 1 and phase 2; ``math.inf`` never forces.
    """

    _grace: float = attrs.field(converter=check_grace, alias="grace")
    _token: CancellationToken = attrs.field(factory=CancellationToken, init=False)
    _state: str = attrs.field(default="new", init=False)
    _tasks: OwnedNursery = attrs.field(factory=lambda: OwnedNursery("GracefulShutdown"), init=False)
    # The scopes of the helper tasks (phase-2 timer, signal watcher), cancelled at exit.
    _helpers: list[trio.CancelScope] = attrs.field(factory=list, init=False)
    # Tasks running, plus (after the trigger) those that ended since: the report's rows, in
    # spawn order. A task that ends before the trigger leaves it and is only counted.
    _tracked: dict[TaskHandle[Any], None] = attrs.field(factory=dict, init=False)
    _ended_before: dict[str, int] = attrs.field(
        factory=lambda: {"completed": 0, "failed": 0, "aborted": 0}, init=False
    )
    _exited_at: dict[TaskHandle[Any], float] = attrs.field(factory=dict, init=False)
    # The abort reason of phase 2 once it began (None before): later spawns are aborted at once.
    _phase_two_reason: str | None = attrs.field(default=None, init=False)
    # on_cancel callbacks' errors from an implicit trigger, raised at the block's exit.
    _trigger_error: BaseException | None = attrs.field(default=None, init=False)
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
        at the end of the same grace period; one spawned after phase 2 began is aborted at once
        (it never runs its function).

        Raises:
            RuntimeError: Outside the ``async with`` block.
            TypeError: ``async_fn`` is not an async function, or ``name`` is not a string.

        Not a checkpoint; never blocks.
        """
        self._tasks.require_open("GracefulShutdown.spawn()")
        if self._report is not None:
            raise RuntimeError("every task has landed already; this GracefulShutdown is done")
        if name is None:
            name = getattr(async_fn, "__qualname__", None) or repr(async_fn)
        fn: Callable[..., Awaitable[T]] = async_fn
        if callable(async_fn):
            # The one rule for the word: a child of the shutdown's token, not bound to the
            # task's scope (phase 1 is cooperative).
            fn = with_token(
                async_fn,
                args,
                None,
                "GracefulShutdown.spawn()",
                make_token=self._token.child_token,
            )
        handle = self._tasks.spawn(
            "GracefulShutdown.spawn()", fn, args, name, None, self._task_done
        )
        self._tracked[handle] = None
        self._running += 1
        if self._all_exited.is_set():  # spawned after everything else had landed
            self._all_exited = trio.Event()
        if self._phase_two_reason is not None:
            self._forced.add(handle)
            handle.abort(self._phase_two_reason)
        return handle

    def spawn_process(
        self,
        command: Sequence[str] | str,
        *,
        name: str | None = None,
        kill_grace: float = 5.0,
        **options: Any,  # noqa: ANN401 - passed to trio.lowlevel.open_process
    ) -> TaskHandle[ProcessExit]:
        """Start ``command`` as a tracked subprocess, in a process group of its own.

        At the trigger its whole group gets SIGTERM; ``kill_grace`` seconds later (or at once in
        phase 2, or on a second signal) SIGKILL; a shell that started children leaves no
        survivor. The group is never signalled once it may have been reused. The task's
        outcome is ``Completed(ProcessExit(...))``: the exit code, the signal that ended the
        process and the last one sent, as its :class:`TaskLanding` shows.

        Raises:
            RuntimeError: Outside the ``async with`` block.
            NotImplementedError: The platform lacks process groups, or a way to see a process
                exit without reaping it (a pidfd or ``waitid``).
            TypeError: ``command`` is empty or not a list of arguments (or a string with
                ``shell=True``); an option ``subprocess.Popen`` does not take, or a text-mode
                option.
            ValueError: ``kill_grace`` is negative or NaN; ``start_new_session=False``,
                ``process_group=``, or a pipe for ``stdin``, ``stdout`` or ``stderr``.

        Not a checkpoint; never blocks (the process starts in the task).
        """
        check_command(command, options)
        kill_grace = check_grace(kill_grace)
        if name is None:
            name = command if isinstance(command, str) else " ".join(map(str, command))
        return self.spawn(run_process_group, command, kill_grace, options, name=name[:80])

    def _task_done(self, handle: TaskHandle[Any]) -> None:
        self._running -= 1
        if self._triggered_at is None:
            # Ended before the trigger: counted, not kept (flat memory for a long-lived server).
            del self._tracked[handle]
            outcome = handle._outcome
            assert outcome is not None
            self._ended_before[_kind(outcome)] += 1
            if isinstance(outcome, Failed):
                handle._retrieved = True  # reported here, not again when the handle goes
                err = outcome.error
                _log.error(
                    "GracefulShutdown: task %r failed",
                    handle.name,
                    exc_info=(type(err), err, err.__traceback__),
                )
            return
        self._exited_at[handle] = trio.current_time()
        _hooks.shutdown(self, "exit", handle)  # trio_cancel.otel.instrument()
        if self._running == 0 and self._triggered_at is not None:
            self._all_exited.set()

    @trio.lowlevel.enable_ki_protection
    def trigger(self, reason: str = "shutdown") -> None:
        """Phase 1: cancel :attr:`token` with ``reason``; phase 2 follows after ``grace`` s.

        Idempotent: the first reason stays. Phase 2 is scheduled before the token is
        cancelled, so it comes whatever the token's ``on_cancel`` callbacks do; if they raise,
        their :exc:`ExceptionGroup` is raised from here.

        Raises:
            RuntimeError: Outside the ``async with`` block, or from another thread (nothing
                changed: use ``trio.from_thread.run_sync(gs.trigger)``).
            TypeError: ``reason`` is not a string.

        Not a checkpoint; never blocks; ``KeyboardInterrupt``-protected.
        """
        if not isinstance(reason, str):
            raise TypeError(f"trigger() needs a str reason, not {type(reason).__name__}")
        if self._triggered_at is not None:
            return
        if self._state != "open":
            raise RuntimeError(
                f"GracefulShutdown.trigger() works only inside its 'async with' "
                f"(this GracefulShutdown is {self._state})"
            )
        check_trio_thread("GracefulShutdown.trigger()")  # before any change
        self._state = "triggered"
        self._triggered_at = trio.current_time()
        self._reason = reason
        if self._running == 0:
            self._all_exited.set()
        self._start_helper(self._phase_two)
        _hooks.will_cancel(self._token, "shutdown")  # trio_cancel.otel: the source
        self._token.cancel(reason)
        _hooks.shutdown(self, "trigger", reason)  # trio_cancel.otel.instrument()

    @trio.lowlevel.enable_ki_protection
    def force(self) -> None:
        """Phase 2 now: abort every task still running (triggers first if needed).

        The abort reason is ``"<trigger reason>: forced by force()"``.

        Not a checkpoint; never blocks; ``KeyboardInterrupt``-protected.
        """
        self._force("forced by force()")

    def _force(self, why: str) -> None:
        try:
            if self._triggered_at is None:
                self.trigger()
        finally:
            if self._phase_two_reason is None:
                self._phase_two_reason = f"{self._reason}: {why}"
                _hooks.shutdown(self, "phase 2", why)  # trio_cancel.otel.instrument()
            reason = self._phase_two_reason
            for handle in list(self._tracked):
                if not handle.is_finished() and handle not in self._forced:
                    self._forced.add(handle)
                    handle.abort(reason)
                    _hooks.forced(self, handle)  # trio_cancel.otel: the source

    def _start_helper(self, async_fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Start a helper task (not tracked) whose scope exists before it first runs, so that
        the exit can cancel it even if it never got to run."""
        scope = trio.CancelScope()
        self._tasks.start_soon("GracefulShutdown", self._in_scope, scope, async_fn, *args)
        self._helpers.append(scope)

    @staticmethod
    async def _in_scope(
        scope: trio.CancelScope, async_fn: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        with scope:
            await async_fn(*args)

    async def _phase_two(self) -> None:
        assert self._triggered_at is not None
        await trio.sleep_until(self._triggered_at + self._grace)
        self._force("forced after the grace period")

    async def wait(self) -> LandingReport:
        """Wait until every task has exited and return the :class:`LandingReport`.

        Triggers first if :meth:`trigger` was not called. Tasks still running ``grace``
        seconds after the trigger are aborted (phase 2).

        Cancellation:
            Always a checkpoint. If the wait is cancelled, nothing else changes: the tasks go on
            landing, phase 2 still comes, and a later ``wait()`` returns the report.
        """
        if self._triggered_at is None:
            self._trigger_implicitly()
        while True:
            await self._all_exited.wait()
            if self._running == 0:
                break
        if self._report is None:
            assert self._triggered_at is not None
            self._report = LandingReport._create(
                tuple(self._landing(h) for h in self._tracked),
                self._reason,
                self._grace,
                dict(self._ended_before),
            )
        return self._report

    def _trigger_implicitly(self) -> None:
        """``trigger()`` on behalf of ``wait()`` or the exit: callback errors are kept for the
        block's exit, after the landing, so that the landing itself still happens."""
        try:
            self.trigger()
        except BaseExceptionGroup as group:
            self._trigger_error = group

    def _landing(self, handle: TaskHandle[Any]) -> TaskLanding:
        triggered_at = self._triggered_at
        assert triggered_at is not None
        outcome = handle.outcome
        assert outcome is not None
        exited = self._exited_at[handle]
        # Still running when phase 2 was due (it may have held the CPU so that phase 2 could
        # not run): forced, even if it then ended on its own.
        forced = handle in self._forced or exited > triggered_at + self._grace
        abandoned = tuple(handle._abandoned or ())
        return TaskLanding(handle.name, outcome, exited - triggered_at, forced, abandoned)

    def install_signal_handlers(self, *signals: int) -> None:
        """Trigger on a signal (default SIGINT and SIGTERM); a second signal forces phase 2.

        The trigger's reason is ``"signal SIGINT"`` (the signal's name). The previous handlers
        come back when the ``async with`` block exits. Call it from the main thread.

        Raises:
            RuntimeError: Outside the ``async with`` block, or called twice.

        Not a checkpoint; never blocks.
        """
        if self._tasks.state != "open":
            raise RuntimeError(
                "install_signal_handlers() works only inside the 'async with' "
                f"(this GracefulShutdown is {self._state})"
            )
        if self._signals is not None:
            raise RuntimeError("signal handlers are already installed")
        cm = trio.open_signal_receiver(*(signals or (signal.SIGINT, signal.SIGTERM)))
        receiver = cm.__enter__()  # installed now, not when a task first runs
        self._signals = cm
        self._start_helper(self._watch_signals, receiver)

    async def _watch_signals(self, receiver: Any) -> None:  # noqa: ANN401 - Trio's private type
        async for signum in receiver:
            name = signal.Signals(signum).name
            if self._triggered_at is None:
                self.trigger(f"signal {name}")
            else:
                self._force(f"forced by a second signal ({name})")

    def _opened(self) -> None:
        self._state = "open"
        _hooks.shutdown(self, "open", None)  # trio_cancel.otel.instrument()

    async def _leave(self, exc: BaseException | None) -> bool:
        """Leaving the ``async with``: trigger if needed, land every task, close the nursery."""
        try:
            if not isinstance(exc, trio.Cancelled):
                if self._state == "open":
                    self._trigger_implicitly()
                await self.wait()  # noqa: ASYNC102 - landing the tasks is this exit's job
        finally:
            for scope in self._helpers:
                scope.cancel()
            self._state = "landed"
            _hooks.shutdown(self, "landed", None)  # trio_cancel.otel.instrument()
            try:
                result = await self._tasks.exit(exc)  # noqa: ASYNC102
            except BaseException as error:
                trigger_error, self._trigger_error = self._trigger_error, None
                if trigger_error is None:
                    raise
                raise BaseExceptionGroup(  # noqa: ASYNC104 - both travel on, in one group
                    "the GracefulShutdown block raised, and on_cancel callbacks raised when "
                    "leaving it triggered the shutdown",
                    [error, trigger_error],
                ) from None
            finally:
                if self._signals is not None:
                    self._signals.__exit__(None, None, None)
        trigger_error, self._trigger_error = self._trigger_error, None
        if trigger_error is not None:
            raise trigger_error  # the implicit trigger's callback errors, after the landing
        return result

    def __repr__(self) -> str:
        return (
            f"<GracefulShutdown {self._state}, {len(self._tracked)} tasks tracked, "
            f"{self._running} running, grace {self._grace:g} s>"
        )
