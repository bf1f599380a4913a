"""The collector during a large JoinSet shutdown: full collections wait, young ones go on, and
the program's thresholds come back on every path."""

from __future__ import annotations

import gc
import random
import threading
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import trio_cancel as tc
from trio_cancel import _collector
from trio_cancel._collector import DEFERRED, GC_PAUSE_AT, DeferFullCollections

if TYPE_CHECKING:
    from collections.abc import Iterator

BIG = GC_PAUSE_AT + 10


@pytest.fixture(autouse=True)
def thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    assert gc.get_threshold()[2] != DEFERRED, "a test left full collections deferred"
    gc.set_threshold(*saved)


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


async def test_large_shutdown_defers_full_collections_while_tasks_unwind() -> None:
    seen: list[int] = []
    async with tc.JoinSet() as js:
        for _ in range(BIG):
            js.spawn(_sleep_and_see, seen)
        await trio.testing.wait_all_tasks_blocked()
        await js.shutdown("big")
        assert gc.get_threshold() == (700, 10, 10)  # restored as soon as the last one landed
    assert len(seen) == BIG
    assert set(seen) == {DEFERRED}


async def test_large_shutdown_runs_no_full_collection_but_young_ones() -> None:
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

    async with tc.JoinSet() as js:
        for _ in range(BIG):
            js.spawn(allocating)
        await trio.testing.wait_all_tasks_blocked()
        gc.callbacks.append(record)
        try:
            await js.shutdown()
        finally:
            gc.callbacks.remove(record)
    assert 0 in generations  # young collections went on
    assert 2 not in generations


async def test_large_shutdown_cancelled_before_the_call_touches_nothing() -> None:
    async with tc.JoinSet() as js:
        handles = [js.spawn(trio.sleep_forever) for _ in range(BIG)]
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await js.shutdown()
        assert gc.get_threshold() == (700, 10, 10)
        assert not any(handle.is_finished() for handle in handles)  # nothing aborted
        await trio.testing.wait_all_tasks_blocked()
        assert not any(handle.is_finished() for handle in handles)


async def test_small_shutdown_leaves_the_collector_alone() -> None:
    seen: list[int] = []
    async with tc.JoinSet() as js:
        for _ in range(10):
            js.spawn(_sleep_and_see, seen)
        await trio.testing.wait_all_tasks_blocked()
        await js.shutdown()
    assert seen == [10] * 10


async def test_large_exit_defers_and_restores_also_when_the_body_raises() -> None:
    seen: list[int] = []
    with pytest.raises(ValueError, match="body"):
        async with tc.JoinSet() as js:
            for _ in range(BIG):
                js.spawn(_sleep_and_see, seen)
            await trio.testing.wait_all_tasks_blocked()
            raise ValueError("body")
    assert set(seen) == {DEFERRED}
    assert gc.get_threshold() == (700, 10, 10)


async def test_large_set_cancelled_from_outside_defers_while_landing_and_restores(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Trio's scope cancels the tasks directly; the exit then waits for those still landing.
    seen: list[int] = []

    async def lands_then_sees() -> None:
        try:
            await _lands_after(0.01)
        finally:
            seen.append(gc.get_threshold()[2])

    with trio.CancelScope() as outside:
        async with tc.JoinSet() as js:
            for _ in range(BIG):
                js.spawn(lands_then_sees)
            await trio.testing.wait_all_tasks_blocked()
            outside.cancel()
            await trio.sleep_forever()
    assert outside.cancelled_caught
    assert seen == [DEFERRED] * BIG
    assert gc.get_threshold() == (700, 10, 10)


async def test_shutdown_cancelled_while_waiting_restores_the_thresholds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[int] = []

    async def slow_to_land() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1)  # still landing when the waiter gives up
            seen.append(gc.get_threshold()[2])

    async with tc.JoinSet() as js:
        for _ in range(BIG):
            js.spawn(slow_to_land)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01):
            await js.shutdown()
        assert gc.get_threshold() == (700, 10, 10)
        await js.join_all()
    assert seen == [10] * BIG  # the landing went on with the collector as the program set it


async def test_keyboard_interrupt_from_a_landing_task_restores_the_thresholds() -> None:
    async def interrupted() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise KeyboardInterrupt

    with pytest.raises(BaseExceptionGroup) as info:
        async with tc.JoinSet() as js:
            js.spawn(interrupted)
            for _ in range(BIG):
                js.spawn(trio.sleep_forever)
            await trio.testing.wait_all_tasks_blocked()
            await js.shutdown()
    assert info.group_contains(KeyboardInterrupt)
    assert gc.get_threshold() == (700, 10, 10)


async def test_overlapping_shutdowns_restore_after_the_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    order: list[tuple[str, int]] = []

    async def one_set(name: str, landing: float) -> None:
        async with tc.JoinSet() as js:
            for _ in range(BIG):
                js.spawn(_lands_after, landing)
            await trio.testing.wait_all_tasks_blocked()
            await js.shutdown()
            order.append((name, gc.get_threshold()[2]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_set, "quick", 0.001)
        nursery.start_soon(one_set, "slow", 0.05)
    assert order == [("quick", DEFERRED), ("slow", 10)]


def test_the_programs_own_changes_meanwhile_are_kept() -> None:
    with DeferFullCollections(True):
        assert gc.get_threshold() == (700, 10, DEFERRED)
        gc.set_threshold(5000)  # the young threshold: the program's, kept
    assert gc.get_threshold() == (5000, 10, 10)
    with DeferFullCollections(True):
        gc.set_threshold(700, 10, 25)  # the oldest one, set by the program: its value stays
    assert gc.get_threshold() == (700, 10, 25)


def test_a_collector_without_thresholds_is_left_alone() -> None:
    gc.set_threshold(0)
    with DeferFullCollections(True):
        assert gc.get_threshold() == (0, 10, 10)
    assert gc.get_threshold() == (0, 10, 10)
    gc.set_threshold(700)
    with DeferFullCollections(False):
        assert gc.get_threshold() == (700, 10, 10)


def test_entries_from_several_threads_restore_after_the_last() -> None:
    barrier = threading.Barrier(4)
    inside: list[int] = []

    def worker() -> None:
        with DeferFullCollections(True):
            barrier.wait()
            inside.append(gc.get_threshold()[2])
            barrier.wait()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert inside == [DEFERRED] * 4
    assert gc.get_threshold() == (700, 10, 10)


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
        with DeferFullCollections(True):
            pass
        monkeypatch.undo()

    trio.run(main)
    assert protected == [True, True]


@pytest.mark.parametrize("seed", range(8))
async def test_random_overlapping_shutdowns_always_restore(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Seeded schedules of large and small sets, shut down or left, some waits cancelled,
    some tasks slow to land: the threshold is back once every set is closed."""
    rng = random.Random(seed)

    async def one_set() -> None:
        size = rng.choice([5, BIG])
        await trio.sleep(rng.random() / 10)
        async with tc.JoinSet() as js:
            for _ in range(size):
                js.spawn(_lands_after, rng.choice([0, 0, rng.random() / 20]))
            await trio.sleep(rng.random() / 10)
            how = rng.choice(["shutdown", "cancelled shutdown", "leave"])
            if how == "shutdown":
                await js.shutdown()
            elif how == "cancelled shutdown":
                with trio.move_on_after(rng.random() / 50):
                    await js.shutdown()

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one_set)
    assert gc.get_threshold() == (700, 10, 10)
    assert _collector._depth == 0
