"""Graceful shutdown in two phases, with a report of who landed and who had to be forced.

Phase 1 (``trigger``) cancels a token: tasks that take one wind down cooperatively, finishing
what they were doing. Phase 2 comes ``grace`` seconds later: every task still running is
aborted (its scope cancelled: ``trio.Cancelled`` at its next checkpoint). ``wait`` returns a
:class:`LandingReport` once every task has exited.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
import unicodedata
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, final, overload

import attrs
import trio

from . import _hooks
from ._checks import check_grace, check_trio_thread, with_token
from ._nursery import NurseryOwner, OwnedNursery
from ._outcome import Aborted, Completed, Failed, Outcome
from ._process import ProcessExit, check_command, run_process_group, signal_name
from ._task import check_task_arguments, start_task
from ._token import CancellationToken
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
    from contextlib import AbstractContextManager

    from ._task import TaskHandle

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")

_log = logging.getLogger("trio_cancel")


PHASES = ("drain", "trigger", "listener_closed", "phase_two", "exit")
"""The phases a :class:`LandingReport` records, in their order."""


def _detail_text(detail: str | Mapping[str, object]) -> str:
    if isinstance(detail, str):
        return detail
    return " ".join(f"{key}={value}" for key, value in detail.items() if value is not None)


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
        detail: What the task's owner tells about it, or ``None``: for a request of
            ``trio_cancel.asgi``, a read-only mapping of its ``method``, ``path``,
            ``request_id`` and the ``status`` sent.
    """

    name: str
    outcome: Outcome[Any]
    seconds: float | None
    forced: bool
    abandoned: tuple[str, ...] = ()
    detail: str | Mapping[str, object] | None = None


@final
@attrs.frozen
class LandingReport(metaclass=NoPublicConstructor):
    """What :meth:`GracefulShutdown.wait` returns: one :class:`TaskLanding` per task that was
    running at the trigger or spawned after it.

    Iterating the report gives the landings in the order the tasks were spawned;
    ``str(report)`` renders them as a table, slowest first, one line per task whatever the
    names (a name is cut to 60 columns, an outcome to 160, control characters are escaped);
    :meth:`to_dict` gives plain data for logs, with the full names. Tasks that ended before
    the trigger are not kept (a server's requests would otherwise grow without bound):
    :attr:`ended_before` counts them.

    Attributes:
        tasks: The landings, in spawn order.
        reason: The reason of the ``trigger()``.
        grace: The grace period, in seconds.
        ended_before: How many tasks ended before the trigger, by outcome kind:
            ``{"completed": n, "failed": n, "aborted": n}``.
        phases: When each phase began, in seconds from the trigger (negative before it):
            ``"drain"``, ``"trigger"``, ``"listener_closed"``, ``"phase_two"``, ``"exit"``;
            ``None`` for a phase that did not happen (a drain and a listener belong to a
            server: ``trio_cancel.asgi.serve_until_shutdown`` records them).
    """

    tasks: tuple[TaskLanding, ...]
    reason: str | None
    grace: float
    ended_before: Mapping[str, int] = attrs.field(
        factory=lambda: {"completed": 0, "failed": 0, "aborted": 0}
    )
    phases: Mapping[str, float | None] = attrs.field(factory=lambda: dict.fromkeys(PHASES))

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
                    "detail": t.detail
                    if t.detail is None or isinstance(t.detail, str)
                    else dict(t.detail),
                }
            )
        return {
            "reason": self.reason,
            "grace": self.grace,
            "landed": len(self.tasks) - len(self.forced),
            "forced": len(self.forced),
            "ended_before": dict(self.ended_before),
            "phases": dict(self.phases),
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
        reason = _one_line(repr(self.reason), _OUTCOME_COLUMNS)[0]
        if not self.tasks:
            before = sum(self.ended_before.values())
            if not before:
                return f"shutdown {reason}: no task was running"
            kinds = ", ".join(f"{n} {kind}" for kind, n in self.ended_before.items() if n)
            return (
                f"shutdown {reason}: no task was running ({before} had ended before the "
                f"trigger: {kinds})"
            )
        landed = len(self.tasks) - len(self.forced)
        lines = [
            f"shutdown {reason}: {landed} of {len(self.tasks)} tasks landed within "
            f"the {self.grace:g} s grace period, {len(self.forced)} forced"
        ]
        rows = sorted(self.tasks, key=lambda t: -1.0 if t.seconds is None else t.seconds)
        rows.reverse()
        names = [_one_line(t.name, _NAME_COLUMNS) for t in rows]
        width = max([4, *(columns for _, columns in names)])
        lines.append(f"  {'task':<{width}}  {'seconds':>8}  {'how':<7}  outcome")
        for t, (name, columns) in zip(rows, names, strict=True):
            seconds = "before" if t.seconds is None else f"{t.seconds:.3f}"
            how = "forced" if t.forced else "landed"
            outcome = _one_line(repr(t.outcome), _OUTCOME_COLUMNS)[0]
            pad = " " * (width - columns)
            lines.append(f"  {name}{pad}  {seconds:>8}  {how:<7}  {outcome}")
            lines.extend(
                f"  {'':<{width}}  abandoned thread: {_one_line(call, _OUTCOME_COLUMNS)[0]}"
                for call in t.abandoned
            )
            if t.detail:
                detail = _one_line(_detail_text(t.detail), _OUTCOME_COLUMNS)[0]
                lines.append(f"  {'':<{width}}  {detail}")
        if any(self.phases.get(name) is not None for name in ("drain", "listener_closed")):
            lines.append(
                "  phases (s from the trigger): "
                + ", ".join(
                    f"{name} {'-' if at is None else f'{at:.3f}'}"
                    for name, at in self.phases.items()
                )
            )
        return "\n".join(lines)


# The report's table: a name takes at most this many columns, an outcome (or a reason) this
# many; the full text stays in the report's data.
_NAME_COLUMNS = 60
_OUTCOME_COLUMNS = 160


def _one_line(text: str, limit: int) -> tuple[str, int]:
    """``text`` as one table cell of at most ``limit`` terminal columns, and its width.

    Characters that are not printable (line breaks, tabs, other controls) are shown escaped as
    in a ``repr``, so a cell is never split across lines; East Asian wide characters count two
    columns, combining marks none; a longer text is cut and ends with ``…``. The work is
    bounded by ``limit``, not by the length of ``text``.
    """
    if text.isascii() and text.isprintable():  # the common case
        if len(text) <= limit:
            return text, len(text)
        return text[: limit - 1] + "…", limit
    pieces: list[tuple[str, int]] = []
    columns = 0
    complete = True
    for index, char in enumerate(text):
        if index == 4 * limit:  # combining marks take no column: bound the characters too
            complete = False
            break
        piece = char if char.isprintable() else repr(char)[1:-1]
        if len(piece) > 1:
            w = len(piece)
        elif unicodedata.combining(char):
            w = 0
        else:
            w = 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if columns + w > limit:
            complete = False
            break
        pieces.append((piece, w))
        columns += w
    if not complete:
        while pieces and columns > limit - 1:
            columns -= pieces.pop()[1]
        pieces.append(("…", 1))
        columns += 1
    return "".join(piece for piece, _ in pieces), columns


# The process-wide signal dispatcher. Every receiver (open_signal_batches: a GracefulShutdown's
# install_signal_handlers(), a serve_until_shutdown()) joins it, so that several can be open at
# once, in one task or in independent ones, and exit in any order:
#
# 1. While at least one receiver is open for a signal, _dispatch is its handler (installed when
#    the first one opened, unless a handler installed over ours later still holds the place).
# 2. Every open receiver of a signal gets every instance of it (fan-out): _dispatch queues the
#    signal in each, in the handler itself (the main thread, between two bytecodes).
# 3. The program's handler (_originals: the one found when the first receiver opened) comes back
#    when the last receiver of the signal closes, before it leaves _receivers: a signal at any
#    moment reaches an open receiver or the program's handler. If a handler installed over
#    ours puts ours back after that (a trio.open_signal_receiver opened inside and closed after
#    the last receiver), _dispatch, finding no receiver, restores the program's handler and
#    raises the signal again for it.
_receivers: dict[int, tuple[SignalBatches, ...]] = {}
_originals: dict[int, Any] = {}


def _dispatch(signum: int, frame: object) -> None:
    receivers = _receivers.get(signum)
    if receivers:
        for receiver in receivers:
            receiver._add(signum)
    else:
        original = _originals.get(signum)
        signal.signal(signum, signal.SIG_DFL if original is None else original)
        signal.raise_signal(signum)


@attrs.define(eq=False)
class SignalBatches:
    """The signals caught by :func:`open_signal_batches`, received in *batches*.

    A batch is every signal whose handler ran since the last :meth:`receive` took one, each
    signal once: signals that arrive together are received together. (CPython runs the
    handlers of the signals pending at one moment one after the other, in signal-number
    order; the handler queues its signal here at once and wakes the receiving task with
    :meth:`trio.lowlevel.TrioToken.run_sync_soon`.) Trio's own receiver yields signals one at a
    time, which would make SIGINT and SIGTERM sent together look like a signal and then a
    second one.
    """

    _trio_token: trio.lowlevel.TrioToken
    # The signals this receiver joined the dispatcher for.
    _signals: tuple[int, ...] = ()
    # Written by the signal handler, which may run between any two bytecodes of this thread:
    # receive() takes the dict whole and puts a new one in its place (a handler that runs in
    # between adds to the taken one, which is returned after).
    _pending: dict[int, None] = attrs.field(factory=dict)
    _arrived: trio.Event = attrs.field(factory=trio.Event)

    def _add(self, signum: int) -> None:
        """In the signal handler: queue ``signum`` and wake the receiving task."""
        self._pending[signum] = None
        with contextlib.suppress(trio.RunFinishedError):
            self._trio_token.run_sync_soon(self._wake, idempotent=True)

    def _wake(self) -> None:
        self._arrived.set()

    async def receive(self) -> list[int]:
        """The next batch, in the order the handlers ran (one receiving task at a time).

        Cancellation: always a checkpoint; cancelled, nothing is taken.
        """
        if self._pending:
            await trio.lowlevel.checkpoint()
        else:
            while True:
                self._arrived = trio.Event()
                await self._arrived.wait()
                if self._pending:  # (a wake-up for a batch already taken is spurious)
                    break
        batch = self._pending
        self._pending = {}
        return list(batch)


def _join(receiver: SignalBatches, signum: int) -> None:
    """Add ``receiver`` to the dispatcher for ``signum`` (the first one installs it).

    Raises:
        ValueError, OSError: As :func:`signal.signal` (nothing changed then).
    """
    receivers = _receivers.get(signum)
    if receivers is None:
        # In _receivers before the handler is installed: a signal never finds it empty.
        _receivers[signum] = (receiver,)
        try:
            previous = signal.signal(signum, _dispatch)
        except BaseException:
            del _receivers[signum]
            raise
        if previous is not _dispatch:  # (ours, left by a handler that was installed over it)
            _originals[signum] = previous
    else:
        _receivers[signum] = (*receivers, receiver)
    receiver._signals = (*receiver._signals, signum)


@trio.lowlevel.enable_ki_protection
def _leave(receiver: SignalBatches) -> None:
    """Remove ``receiver`` from the dispatcher; for the signals it was the last receiver of,
    restore the program's handlers and raise again the ones it caught but did not hand out,
    here and now (each one is delivered, also when a handler raises; what a handler raises
    propagates from here). A signal that other receivers still hold is not raised again: they
    had it too."""
    restored: set[int] = set()
    for signum in receiver._signals:
        others = tuple(r for r in _receivers.get(signum, ()) if r is not receiver)
        if others:
            _receivers[signum] = others
        else:
            original = _originals.get(signum)
            signal.signal(signum, signal.SIG_DFL if original is None else original)
            _receivers.pop(signum, None)
            restored.add(signum)
    receiver._signals = ()
    pending = receiver._pending
    receiver._pending = {}
    _raise_again([signum for signum in pending if signum in restored])


def _raise_again(signums: list[int]) -> None:
    if signums:
        try:
            signal.raise_signal(signums[0])
        finally:
            _raise_again(signums[1:])


@contextlib.contextmanager
def open_signal_batches(signals: Iterable[int]) -> Iterator[SignalBatches]:
    """Catch ``signals`` while the block runs, received in batches (:class:`SignalBatches`).

    Several blocks may be open at once (in one task or in independent ones, exiting in any
    order): each gets every signal it asked for. The program's handlers come back when the
    last block catching a signal exits; the signals that block caught but did not receive are
    then raised again for them, from the exit itself (what their handler raises propagates
    from the ``with`` statement). A handler installed over these blocks' (by
    :func:`trio.open_signal_receiver` inside one, say) takes the signals until it exits.

    Raises:
        RuntimeError: Not in the main thread, or outside ``trio.run``.
        ValueError, OSError: As :func:`signal.signal` for a number it refuses (nothing is
            left installed then).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("signal handlers can be installed only from the main thread")
    batches = SignalBatches(trio.lowlevel.current_trio_token())
    try:
        for signum in dict.fromkeys(signals):
            _join(batches, signum)
        yield batches
    finally:
        _leave(batches)


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
    # Tasks of start() calls that have not called started() yet: phase 2 aborts them too.
    _starting: set[TaskHandle[Any]] = attrs.field(factory=set, init=False)
    _running: int = attrs.field(default=0, init=False)
    _all_exited: trio.Event = attrs.field(factory=trio.Event, init=False)
    _triggered_at: float | None = attrs.field(default=None, init=False)
    _reason: str | None = attrs.field(default=None, init=False)
    _report: LandingReport | None = attrs.field(default=None, init=False)
    _signals: AbstractContextManager[Any] | None = attrs.field(default=None, init=False)
    # Set when phase 2 begins (wait_forcing()).
    _forcing: trio.Event = attrs.field(factory=trio.Event, init=False)
    # When each phase began (Trio's clock), for the report; a server adds its own phases.
    _phase_times: dict[str, float] = attrs.field(factory=dict, init=False)
    # Per task, what its owner tells about it (TaskLanding.detail), asked at the report.
    _details: dict[TaskHandle[Any], Callable[[], str | Mapping[str, object] | None]] = attrs.field(
        factory=dict, init=False
    )

    @property
    def token(self) -> CancellationToken:
        """The root token; phase 1 cancels it. Tasks that take ``token`` get a child of it."""
        return self._token

    @property
    def grace(self) -> float:
        """The grace period: seconds from the trigger to phase 2."""
        return self._grace

    @property
    def forcing(self) -> bool:
        """Whether phase 2 has begun (by the grace period, :meth:`force` or a second
        signal)."""
        return self._phase_two_reason is not None

    async def wait_forcing(self) -> None:
        """Wait until phase 2 begins (at once if it has).

        Cancellation:
            A checkpoint; cancelling the wait changes nothing else.
        """
        await self._forcing.wait()

    def _mark_phase(self, name: str) -> None:
        """Record when the phase ``name`` (one of :data:`PHASES`) began; the first time stays."""
        self._phase_times.setdefault(name, trio.current_time())

    def _describe(
        self,
        handle: TaskHandle[Any],
        detail: Callable[[], str | Mapping[str, object] | None],
    ) -> None:
        """Give the task's :attr:`TaskLanding.detail`, asked for when the report is made."""
        if handle in self._tracked:
            self._details[handle] = detail

    @property
    def report(self) -> LandingReport | None:
        """The :class:`LandingReport` once every task has exited; ``None`` until then."""
        return self._report

    @overload
    def spawn(
        self,
        async_fn: Callable[[*PosArgsT], Awaitable[T]],
        *args: *PosArgsT,
        name: str | None = None,
    ) -> TaskHandle[T]: ...
    @overload
    def spawn(
        self,
        async_fn: Callable[..., Awaitable[T]],
        *args: object,
        name: str | None = None,
    ) -> TaskHandle[T]: ...  # async_fn takes the injected token= (no checker can say that)

    def spawn(
        self,
        async_fn: Callable[..., Awaitable[T]],
        *args: object,
        name: str | None = None,
    ) -> TaskHandle[T]:
        """Start a tracked task. If ``async_fn`` declares ``token: CancellationToken`` (the one
        rule for the word, as for :func:`~trio_cancel.spawn`), it is called with ``token=`` a
        child of :attr:`token`.

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
            self._force_task(handle, self._phase_two_reason)
        return handle

    async def start(
        self,
        async_fn: Callable[..., Awaitable[T]],
        *args: object,
        name: str | None = None,
    ) -> tuple[TaskHandle[T], Any]:
        """As :func:`~trio_cancel.start`, tracked: returns ``(handle, value)`` once the task
        has called ``task_status.started(value)``; only then is it tracked (and in the report).
        As for :meth:`spawn`, a function declaring ``token: CancellationToken`` gets a child
        of :attr:`token`.

        A task aborted (phase 2) or whose token fires (the trigger) before ``started()``
        makes this raise :exc:`~trio_cancel.OperationCancelledError`, and it is not in the
        report; so does an error before ``started()`` (it propagates). Started after phase 2
        began, it is aborted at once.

        Raises:
            RuntimeError: Outside the ``async with`` block, or once every task has landed;
                the task returned without calling ``started()``.

        Cancellation:
            As :func:`~trio_cancel.start`: always a checkpoint; cancelled while waiting for
            ``started()``, the task is cancelled and is not tracked.
        """
        what = "GracefulShutdown.start()"
        nursery = self._tasks.require_open(what)
        if self._report is not None:
            raise RuntimeError("every task has landed already; this GracefulShutdown is done")
        name = check_task_arguments(nursery, async_fn, name, None, what)
        await trio.lowlevel.checkpoint_if_cancelled()
        fn = with_token(async_fn, args, None, what, make_token=self._token.child_token)
        injected = fn.keywords["token"] if isinstance(fn, functools.partial) else None
        # Running from now on: a landing waits for a pending start, and phase 2 aborts it.
        started = False

        def on_started(handle: TaskHandle[T]) -> None:
            nonlocal started
            started = True
            self._task_started(handle)

        self._running += 1
        if self._all_exited.is_set():  # started after everything else had landed
            self._all_exited = trio.Event()
        try:
            return await start_task(
                nursery,
                fn,
                args,
                name,
                None,
                what,
                injected=injected,
                on_started=on_started,
                on_done=self._task_done,
                starting=self._starting,
                abort_reason=self._phase_two_reason,
                on_abort=self._aborted_at_start,
            )
        finally:
            if not started:  # ended (or never began) before started(): not a tracked task
                self._running -= 1
                if self._running == 0 and self._triggered_at is not None:
                    self._all_exited.set()

    def _aborted_at_start(self, handle: TaskHandle[Any]) -> None:
        # start() after phase 2 began: the abort stands for the forced shutdown (not tracked,
        # as the task cannot reach started()).
        _hooks.forced(self, handle)  # trio_cancel.otel: the source

    def _force_task(self, handle: TaskHandle[Any], reason: str, *, tracked: bool = True) -> None:
        """Phase 2 aborts ``handle`` (counted as forced in the report if ``tracked``)."""
        if tracked:
            self._forced.add(handle)
        handle.abort(reason)
        _hooks.forced(self, handle)  # trio_cancel.otel: the source

    def _task_started(self, handle: TaskHandle[Any]) -> None:
        self._starting.discard(handle)
        self._tracked[handle] = None
        if self._phase_two_reason is not None and not handle.is_finished():
            self._force_task(handle, self._phase_two_reason)

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
            self._details.pop(handle, None)
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
        self._triggered_at = self._phase_times["trigger"] = trio.current_time()
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
                self._mark_phase("phase_two")
                self._forcing.set()
                _hooks.shutdown(self, "phase 2", why)  # trio_cancel.otel.instrument()
            reason = self._phase_two_reason
            for handle in list(self._tracked):
                if not handle.is_finished() and handle not in self._forced:
                    self._force_task(handle, reason)
            for handle in list(self._starting):  # start() calls still waiting for started()
                self._force_task(handle, reason, tracked=False)

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
            triggered_at = self._triggered_at
            assert triggered_at is not None
            self._mark_phase("exit")
            times = self._phase_times
            self._report = LandingReport._create(
                tuple(self._landing(h) for h in self._tracked),
                self._reason,
                self._grace,
                dict(self._ended_before),
                {
                    name: None if name not in times else times[name] - triggered_at
                    for name in PHASES
                },
            )
        return self._report

    def _trigger_implicitly(self, reason: str = "shutdown") -> None:
        """``trigger()`` on behalf of ``wait()``, the exit or a signal: callback errors are kept
        for the block's exit, after the landing, so that the landing itself still happens."""
        try:
            self.trigger(reason)
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
        describe = self._details.get(handle)
        detail = None if describe is None else describe()
        return TaskLanding(handle.name, outcome, exited - triggered_at, forced, abandoned, detail)

    def install_signal_handlers(self, *signals: int) -> None:
        """Trigger on a signal (default SIGINT and SIGTERM); a second signal forces phase 2.

        The first signal is a trigger also when :meth:`trigger` (or the end of the block)
        triggered before it: then it changes nothing (the first reason stays), and only a
        second signal forces.

        The trigger's reason is ``"signal SIGINT"`` (the signal's name; a real-time signal is
        named as ``kill -l`` does, ``SIGRTMIN+1``). Signals that arrive together (their
        handlers ran before the watcher took them, as when SIGINT and SIGTERM are sent at
        once) count as one signal, named by the first one CPython dispatched (the lowest
        number): they trigger, and never trigger *and* force. A signal's trigger is
        as graceful as the implicit one: if ``on_cancel`` callbacks on :attr:`token` raise, the
        landing goes on (phase 2 still waits for ``grace``, the report is produced) and their
        :exc:`ExceptionGroup` is raised at the block's exit. Several shutdowns (and
        ``trio_cancel.asgi.serve_until_shutdown`` calls) may catch signals at once, nested or
        not: each gets every signal, and the program's handlers come back when the last of
        them exits, whatever the order. Call it from the main thread.

        Raises:
            RuntimeError: Outside the ``async with`` block, called twice, or not from the main
                thread.
            ValueError, OSError: A signal number that :func:`signal.signal` refuses (SIGKILL,
                say); no handler is left installed.

        Not a checkpoint; never blocks.
        """
        if self._tasks.state != "open":
            raise RuntimeError(
                "install_signal_handlers() works only inside the 'async with' "
                f"(this GracefulShutdown is {self._state})"
            )
        if self._signals is not None:
            raise RuntimeError("signal handlers are already installed")
        cm = open_signal_batches(signals or (signal.SIGINT, signal.SIGTERM))
        receiver = cm.__enter__()  # installed now, not when a task first runs
        self._signals = cm
        self._start_helper(self._watch_signals, receiver)

    async def _watch_signals(self, receiver: SignalBatches) -> None:
        # Signals that arrive together are one batch: they count once. The first signal is a
        # trigger, also after trigger() or the exit's implicit trigger (then it changes
        # nothing: the first reason stays); only a second one forces.
        name = signal_name((await receiver.receive())[0])
        # As graceful as the implicit trigger: callback errors wait for the exit.
        self._trigger_implicitly(f"signal {name}")
        while True:
            name = signal_name((await receiver.receive())[0])
            self._force(f"forced by a second signal ({name})")

    def _landed(self) -> bool:
        """Whether every task has exited since the trigger (for a server: nothing to force)."""
        return self._triggered_at is not None and self._running == 0

    def _running_names(self) -> list[str]:
        """The names of the tracked tasks still running (for a server's warning)."""
        return [handle.name for handle in self._tracked if not handle.is_finished()]

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
