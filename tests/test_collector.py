"""The garbage collector's settings belong to the application: the library changes them only
inside ``deferred_full_collections()`` (entered by the application) and ``cancel()``'s bounded
pause, and what the program last set comes back on every path."""

from __future__ import annotations

import ast
import gc
import random
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import trio_cancel as tc
from trio_cancel import _collector
from trio_cancel._collector import DEFERRED

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Iterator

BIG = 1100
PROGRAM = (700, 10, 10)


@pytest.fixture(autouse=True)
def thresholds() -> Iterator[tuple[int, int, int]]:
    saved, enabled = gc.get_threshold(), gc.isenabled()
    gc.set_threshold(*PROGRAM)
    yield gc.get_threshold()
    assert _collector._deferring == 0, "a test left an entry open"
    assert _collector._pausing == 0
    assert gc.get_threshold()[2] != DEFERRED, "a test left full collections deferred"
    gc.set_threshold(*saved)
    if enabled:
        gc.enable()


async def _sleep_and_see(seen: list[int]) -> None:
    try:
        await trio.sleep_forever()
    finally:
        seen.append(gc.get_threshold()[2])  # while this task unwinds


async def _lands_after(delay: float) -> None:
    """Waits until aborted, then takes ``delay`` seconds to land."""
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.sleep(delay)


# ---------------------------------------------------------------- nothing implicit


def test_library_source_changes_gc_settings_only_in_the_collector_module() -> None:
    """A scan of the library's code (not its prose): ``gc.set_threshold``, ``disable``,
    ``enable``, ``freeze`` and ``unfreeze`` are used nowhere but in ``_collector.py``, which
    uses only ``set_threshold`` (``cancel()`` pauses through it); ``gc`` is never imported under
    another name."""
    package = Path(tc.__file__).parent
    changing = {"set_threshold", "disable", "enable", "freeze", "unfreeze"}
    found: list[str] = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "gc":
                found.append(f"{path.name}: from gc import ...")
            elif isinstance(node, ast.Import) and any(
                alias.name == "gc" and alias.asname for alias in node.names
            ):
                found.append(f"{path.name}: import gc as ...")
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "gc"
                and node.attr in changing
            ):
                found.append(f"{path.name}: gc.{node.attr}")
    assert sorted(set(found)) == ["_collector.py: gc.set_threshold"]


async def test_a_large_joinset_shutdown_leaves_the_collector_alone() -> None:
    seen: list[int] = []
    async with tc.JoinSet() as js:
        for _ in range(BIG):
            js.spawn(_sleep_and_see, seen)
        await trio.testing.wait_all_tasks_blocked()
        await js.shutdown("big")
    assert set(seen) == {10}  # no deferral unless the application asks for it
    assert gc.get_threshold() == PROGRAM


async def test_a_large_joinset_exit_leaves_the_collector_alone() -> None:
    seen: list[int] = []
    with pytest.raises(ValueError, match="body"):
        async with tc.JoinSet() as js:
            for _ in range(BIG):
                js.spawn(_sleep_and_see, seen)
            await trio.testing.wait_all_tasks_blocked()
            raise ValueError("body")
    assert set(seen) == {10}


async def test_an_unrelated_thread_sees_the_programs_thresholds_during_a_long_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    samples: list[tuple[int, int, int]] = []

    def sample() -> None:
        samples.append(gc.get_threshold())

    async with tc.JoinSet() as js:
        for _ in range(BIG):
            js.spawn(_lands_after, 1.0)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(js.shutdown)
            await trio.sleep(0.5)  # every task is landing now
            await trio.to_thread.run_sync(sample)
    assert samples == [PROGRAM]


# ---------------------------------------------------------------- the public context manager


async def test_deferral_around_a_joinset_holds_full_collections_while_tasks_unwind() -> None:
    seen: list[int] = []
    with tc.deferred_full_collections():
        assert gc.get_threshold() == (700, 10, DEFERRED)
        async with tc.JoinSet() as js:
            for _ in range(BIG):
                js.spawn(_sleep_and_see, seen)
            await trio.testing.wait_all_tasks_blocked()
            await js.shutdown("big")
    assert gc.get_threshold() == PROGRAM
    assert set(seen) == {DEFERRED}


async def test_deferral_runs_no_full_collection_but_young_ones() -> None:
    gc.set_threshold(50, 2, 1)  # a full collection whenever the collector may
    generations: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    async def allocating() -> None:
        try:
            await trio.sleep_forever()
        finally:
            for _ in range(20):
                cycle: list[object] = []
                cycle.append(cycle)  # young cyclic garbage, for the young collections

    async with trio.open_nursery() as nursery:
        for _ in range(BIG):
            nursery.start_soon(allocating)
        await trio.testing.wait_all_tasks_blocked()
        gc.callbacks.append(record)
        try:
            with tc.deferred_full_collections():
                nursery.cancel_scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
        finally:
            gc.callbacks.remove(record)
    assert 0 in generations  # young collections went on
    assert 2 not in generations
    assert gc.get_threshold() == (50, 2, 1)
    gc.set_threshold(*PROGRAM)


async def test_deferral_around_a_graceful_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[int] = []

    async def worker(*, token: tc.CancellationToken) -> None:
        await token.wait_cancelled()
        seen.append(gc.get_threshold()[2])

    with tc.deferred_full_collections():
        async with tc.GracefulShutdown(grace=1) as gs:
            for _ in range(10):
                gs.spawn(worker)
            await trio.testing.wait_all_tasks_blocked()
    assert seen == [DEFERRED] * 10
    assert gc.get_threshold() == PROGRAM


def test_deferral_restores_when_the_block_raises() -> None:
    with pytest.raises(ValueError, match="body"), tc.deferred_full_collections():
        raise ValueError("body")
    assert gc.get_threshold() == PROGRAM


def test_deferral_restores_on_keyboard_interrupt() -> None:
    async def main() -> None:
        with tc.deferred_full_collections():
            signal.raise_signal(signal.SIGINT)
            await trio.sleep_forever()

    with pytest.raises(KeyboardInterrupt):
        trio.run(main)
    assert gc.get_threshold() == PROGRAM


async def test_deferral_restores_when_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    with trio.move_on_after(1) as scope, tc.deferred_full_collections():
        await trio.sleep_forever()
    assert scope.cancelled_caught
    assert gc.get_threshold() == PROGRAM


def test_the_programs_own_changes_meanwhile_are_kept() -> None:
    with tc.deferred_full_collections():
        assert gc.get_threshold() == (700, 10, DEFERRED)
        gc.set_threshold(5000)  # the young threshold: the program's, kept
        with tc.deferred_full_collections():  # a nested entry keeps it too
            assert gc.get_threshold() == (5000, 10, DEFERRED)
    assert gc.get_threshold() == (5000, 10, 10)
    with tc.deferred_full_collections():
        gc.set_threshold(700, 10, 25)  # the oldest one, set by the program: its value stays
    assert gc.get_threshold() == (700, 10, 25)


def test_deferral_never_enables_or_disables_the_collector() -> None:
    gc.disable()
    try:
        with tc.deferred_full_collections():
            assert not gc.isenabled()
            gc.enable()  # the program's decision, made inside the block
        assert gc.isenabled()
        with tc.deferred_full_collections():
            gc.disable()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_collector_without_thresholds_is_left_alone() -> None:
    gc.set_threshold(0)
    with tc.deferred_full_collections():
        assert gc.get_threshold() == (0, 10, 10)
    assert gc.get_threshold() == (0, 10, 10)
    gc.set_threshold(*PROGRAM)


def test_each_call_is_entered_once() -> None:
    cm = tc.deferred_full_collections()
    with cm:
        with pytest.raises(RuntimeError, match="already entered"), cm:
            pass
        assert gc.get_threshold() == (700, 10, DEFERRED)
    assert gc.get_threshold() == PROGRAM


def test_entries_from_several_threads_restore_after_the_last() -> None:
    barrier = threading.Barrier(4)
    inside: list[int] = []

    def worker() -> None:
        with tc.deferred_full_collections():
            barrier.wait()
            inside.append(gc.get_threshold()[2])
            barrier.wait()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert inside == [DEFERRED] * 4
    assert gc.get_threshold() == PROGRAM


async def test_entries_from_several_tasks_restore_after_the_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    order: list[tuple[str, int]] = []

    async def one(name: str, hold: float) -> None:
        with tc.deferred_full_collections():
            await trio.sleep(hold)
        order.append((name, gc.get_threshold()[2]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "quick", 0.001)
        nursery.start_soon(one, "slow", 0.05)
    assert order == [("quick", DEFERRED), ("slow", 10)]


def test_entering_and_leaving_are_keyboard_interrupt_protected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    protected: list[bool] = []
    real_get = gc.get_threshold

    def spy() -> tuple[int, int, int]:
        protected.append(trio.lowlevel.currently_ki_protected())
        return real_get()

    async def main() -> None:
        monkeypatch.setattr(gc, "get_threshold", spy)
        with tc.deferred_full_collections():
            pass
        monkeypatch.undo()

    trio.run(main)
    assert protected == [True, True]


def test_a_pause_inside_a_deferral_restores_both_in_any_order() -> None:
    with tc.deferred_full_collections():
        _collector.pause_collector()
        assert gc.get_threshold() == (DEFERRED, 10, DEFERRED)
        _collector.resume_collector()
        assert gc.get_threshold() == (700, 10, DEFERRED)
    cm = tc.deferred_full_collections()
    _collector.pause_collector()
    cm.__enter__()
    _collector.resume_collector()
    assert gc.get_threshold() == (700, 10, DEFERRED)
    cm.__exit__(None, None, None)
    assert gc.get_threshold() == PROGRAM


@pytest.mark.parametrize("seed", range(20))
def test_random_interleavings_of_entries_pauses_and_program_changes_always_restore(
    seed: int,
) -> None:
    """Seeded interleavings of entries and exits (several at once, exits in any order), pauses
    and the program's own changes: after each change of ours, the held generations are out of
    reach and the others are what the program last set; once everything is closed the
    thresholds are exactly what the program last set."""
    rng = random.Random(seed)
    entries: list[contextlib.AbstractContextManager[None]] = []
    last_set = PROGRAM
    try:
        last_set = _interleave(rng, entries, last_set)
    finally:
        for entry in entries:
            entry.__exit__(None, None, None)
        for _ in range(_collector._pausing):
            _collector.resume_collector()
    assert gc.get_threshold() == last_set
    gc.set_threshold(*PROGRAM)


def _interleave(
    rng: random.Random,
    entries: list[contextlib.AbstractContextManager[None]],
    last_set: tuple[int, int, int],
) -> tuple[int, int, int]:
    pauses = 0
    for _ in range(300):
        action = rng.choice(["enter", "exit", "pause", "resume", "program"])
        if action == "enter":
            entries.append(tc.deferred_full_collections())
            entries[-1].__enter__()
        elif action == "exit" and entries:
            entries.pop(rng.randrange(len(entries))).__exit__(None, None, None)
        elif action == "pause":
            _collector.pause_collector()
            pauses += 1
        elif action == "resume" and pauses:
            _collector.resume_collector()
            pauses -= 1
        elif action == "program":
            last_set = (rng.choice([0, 500, 700]), rng.choice([5, 10]), rng.choice([5, 10, 20]))
            gc.set_threshold(*last_set)  # in force at once, held again by the next change
            continue
        else:
            continue  # nothing to exit or resume: no change was made
        young, middle, oldest = gc.get_threshold()
        assert middle == last_set[1]
        if last_set[0] == 0:
            assert (young, oldest) == (0, last_set[2])  # automatic collection off: untouched
        else:
            assert young == (DEFERRED if pauses else last_set[0])
            assert oldest == (DEFERRED if pauses or entries else last_set[2])
    return last_set
