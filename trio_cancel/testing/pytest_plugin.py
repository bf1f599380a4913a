"""pytest plugin of trio_cancel (loaded automatically when trio_cancel is installed).

Fixtures:

``cancel_sweep``
    An async function with the signature of :func:`cancel_at_each_checkpoint` that also records
    how many cancellation points each test checked: the count is attached to the test report
    (``user_properties``, shown in JUnit XML) and the session ends with a summary line
    "trio_cancel: N cancellation points checked in M sweeps".

``trio_cancel_leaks``
    Fails the test if, when the test is over, it leaves behind: tasks it started still running
    (tasks that the test's code, or a task it started, spawned with ``tc.spawn`` or any
    ``start_soon``, into any nursery), channel endpoints of trio_cancel it opened and never
    closed, or ``on_cancel`` callbacks still registered on a token that was never cancelled.
    Tasks count as left running if they were still running when the test's task ended. Not
    reported: tasks that other fixtures start (their background services), Trio system tasks
    (such as the library's own ``cancel_after`` timer service), and tasks left in pytest-trio's
    own ``nursery`` fixture (pytest-trio cancels them before the test's task ends, by design).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from .._debug import CURRENT, LeakTracker
from ._sweep import SweepResult, cancel_at_each_checkpoint

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from _pytest.terminal import TerminalReporter

_SWEEPS = pytest.StashKey[list[tuple[str, int]]]()


class CancelSweep:
    """The ``cancel_sweep`` fixture's value: call it like :func:`cancel_at_each_checkpoint`."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    async def __call__(
        self,
        async_fn: Callable[[], Awaitable[object]],
        *,
        check: Callable[[], Awaitable[object]] | None = None,
        max_points: int = 10_000,
    ) -> SweepResult:
        """Run :func:`cancel_at_each_checkpoint` and record its point count.

        Cancellation:
            As :func:`cancel_at_each_checkpoint`.
        """
        result = await cancel_at_each_checkpoint(async_fn, check=check, max_points=max_points)
        node = self._request.node
        node.user_properties.append(("cancellation_points", result.points))
        self._request.config.stash.setdefault(_SWEEPS, []).append((node.nodeid, result.points))
        return result


@pytest.fixture
def cancel_sweep(request: pytest.FixtureRequest) -> CancelSweep:
    """Sweep an operation with a cancellation at each checkpoint (see the module docstring)."""
    return CancelSweep(request)


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """Print how many cancellation points the run's ``cancel_sweep`` calls checked."""
    sweeps = terminalreporter.config.stash.get(_SWEEPS, [])
    if sweeps:
        points = sum(n for _, n in sweeps)
        terminalreporter.write_line(
            f"trio_cancel: {_plural(points, 'cancellation point')} checked in "
            f"{_plural(len(sweeps), 'sweep')}"
        )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class _TaskWatch(trio.abc.Instrument):
    """The tasks the test started, and those of them still running when the test's task ended.

    A task is the test's when the test's task (pytest-trio's ``<test '...'>``) or another task
    of the test spawned it, into any nursery (a fixture's included). Not the test's: tasks that
    other fixtures spawn, and Trio system tasks (the library's ``cancel_after`` timer service
    is one). The snapshot is taken when the test's task exits, before fixtures are torn down.
    """

    def __init__(self, test_task: trio.lowlevel.Task | None) -> None:
        self.test_task = test_task
        self.root = trio.lowlevel.current_root_task()
        self.alive: dict[trio.lowlevel.Task, None] = {}
        self.at_test_end: list[trio.lowlevel.Task] | None = None

    def _is_system_task(self, task: trio.lowlevel.Task) -> bool:
        nursery = task.parent_nursery
        return nursery is not None and nursery.parent_task is self.root

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if self.test_task is None and task.name.startswith("<test "):
            self.test_task = task  # pragma: no cover - pytest-trio spawns it before fixtures
            return
        if self.at_test_end is not None or self._is_system_task(task):
            return
        try:
            spawner = trio.lowlevel.current_task()
        except RuntimeError:  # pragma: no cover - Trio always spawns from a task
            return
        if spawner is self.test_task or spawner in self.alive:
            self.alive[task] = None

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.alive.pop(task, None)
        if task is self.test_task and self.at_test_end is None:
            self.at_test_end = list(self.alive)

    def left_running(self) -> list[trio.lowlevel.Task]:
        return self.at_test_end if self.at_test_end is not None else list(self.alive)


def _test_task() -> trio.lowlevel.Task | None:
    """pytest-trio's task for the test: a sibling of this fixture's task (pytest-trio spawns
    the test and all its fixtures into one nursery, each as a task)."""
    nursery = trio.lowlevel.current_task().parent_nursery
    if nursery is None:  # pragma: no cover - a fixture task always has a parent
        return None
    for task in nursery.child_tasks:
        if task.name.startswith("<test "):
            return task
    return None  # pragma: no cover - not run by pytest-trio


def find_leaks(tracker: LeakTracker, still_running: list[trio.lowlevel.Task]) -> list[str]:
    """Describe what ``tracker`` and ``still_running`` say was left behind."""
    problems = [f"task {task.name!r} still running" for task in still_running]
    problems += [
        f"{endpoint!r} was never closed"
        for endpoint in tracker.endpoints
        if not getattr(endpoint, "_closed", True)
    ]
    for registration in tracker.registrations:
        token = getattr(registration, "_token", None)
        if token is not None and not token.is_cancelled() and not registration._done:  # type: ignore[attr-defined]
            problems.append(f"{registration!r} still registered on {token!r}")
    return problems


@pytest.fixture
async def trio_cancel_leaks() -> AsyncIterator[LeakTracker]:
    """Fail the test if it leaves tasks, open endpoints or pending callbacks behind."""
    tracker = LeakTracker()
    watch = _TaskWatch(_test_task())
    CURRENT.set(tracker)
    trio.lowlevel.add_instrument(watch)
    try:
        yield tracker
        await trio.testing.wait_all_tasks_blocked()
    finally:
        trio.lowlevel.remove_instrument(watch)
        CURRENT.set(None)
    problems = find_leaks(tracker, watch.left_running())
    if problems:
        pytest.fail("trio_cancel_leaks: the test left behind:\n  " + "\n  ".join(problems))
