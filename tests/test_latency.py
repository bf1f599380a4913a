"""Tests of CancellationLatency (cancellation latency observability)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

import trio_cancel as tc


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_latency_records_token_cancelled_tasks_with_reason() -> None:
    clock = FakeClock()
    latency = tc.CancellationLatency(threshold=0.5, clock=clock)
    root = tc.CancellationToken()

    async def worker(cleanup_seconds: float) -> None:
        with root.child_token().cancel_scope():
            try:
                await trio.sleep_forever()
            finally:
                clock.now += cleanup_seconds  # a cleanup that blocks without a checkpoint

    trio.lowlevel.add_instrument(latency)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker, 0.1, name="quick")
            nursery.start_soon(worker, 2.0, name="slow")
            nursery.start_soon(trio.sleep, 0.001, name="deadline only")
            await trio.testing.wait_all_tasks_blocked()
            root.cancel("shutdown")
    finally:
        trio.lowlevel.remove_instrument(latency)
    assert sorted(r.name for r in latency.records) == ["quick", "slow"]
    assert {r.reason for r in latency.records} == {"shutdown"}
    # Landings queue behind each other (the order of the two steps is Trio's to choose); the
    # step that blocked is attributed to the task that ran it.
    assert {r.name for r in latency.worst(2)} == {"quick", "slow"}
    assert latency.percentile(100) >= 2.0
    assert [s.name for s in latency.slow_steps] == ["slow"]
    assert latency.slow_steps[0].seconds == pytest.approx(2.0)
    text = str(latency)
    assert text.startswith("2 cancelled tasks landed; 0 still landing")
    assert "steps over 500.0 ms without a checkpoint:" in text
    assert "slow" in text.splitlines()[-1]


async def test_latency_records_abort(nursery: trio.Nursery) -> None:
    latency = tc.CancellationLatency()
    trio.lowlevel.add_instrument(latency)
    try:
        handle = tc.spawn(nursery, trio.sleep_forever, name="aborted")
        await trio.testing.wait_all_tasks_blocked()
        handle.abort("stop")
        await handle.join()
        await trio.testing.wait_all_tasks_blocked()
    finally:
        trio.lowlevel.remove_instrument(latency)
    assert [(r.name, r.reason) for r in latency.records] == [("aborted", "stop")]


async def test_latency_task_that_keeps_running_is_still_landing(nursery: trio.Nursery) -> None:
    latency = tc.CancellationLatency()
    release = trio.Event()

    async def stubborn() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await release.wait()

    trio.lowlevel.add_instrument(latency)
    try:
        handle = tc.spawn(nursery, stubborn, name="stubborn")
        await trio.testing.wait_all_tasks_blocked()
        handle.abort()
        await trio.testing.wait_all_tasks_blocked()
        assert latency.still_landing == 1
        assert "0 cancelled tasks landed; 1 still landing" in latency.summary()
        release.set()
        await handle.join()
        await trio.testing.wait_all_tasks_blocked()
        assert latency.still_landing == 0
    finally:
        trio.lowlevel.remove_instrument(latency)


def test_latency_empty_and_validation() -> None:
    latency = tc.CancellationLatency()
    assert math.isnan(latency.percentile(50))
    assert latency.worst() == []
    assert repr(latency) == "<CancellationLatency 0 landed, 0 pending>"
    with pytest.raises(ValueError, match="threshold"):
        tc.CancellationLatency(threshold=-1)


def test_latency_percentiles() -> None:
    latency = tc.CancellationLatency()
    latency.records.extend(tc.LatencyRecord(f"t{i}", None, i / 100) for i in range(1, 101))
    assert latency.percentile(50) == 0.5
    assert latency.percentile(99) == 0.99
    assert latency.percentile(100) == 1.0
    assert [r.name for r in latency.worst(2)] == ["t100", "t99"]


async def test_latency_records_cooperative_token_wakeups(nursery: trio.Nursery) -> None:
    latency = tc.CancellationLatency()
    token = tc.CancellationToken()

    async def waiter() -> None:
        await token.wait_cancelled()

    trio.lowlevel.add_instrument(latency)
    try:
        for i in range(3):
            nursery.start_soon(waiter, name=f"waiter-{i}")
        await trio.testing.wait_all_tasks_blocked()
        token.cancel("cooperative")
        await trio.testing.wait_all_tasks_blocked()
    finally:
        trio.lowlevel.remove_instrument(latency)
    assert sorted((r.name, r.reason) for r in latency.records) == [
        (f"waiter-{i}", "cooperative") for i in range(3)
    ]
