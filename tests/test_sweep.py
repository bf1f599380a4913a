"""Tests of trio_cancel.testing.cancel_at_each_checkpoint, and the sweep of this library's own
primitives: no item lost or duplicated, no outcome lost, whatever checkpoint a cancellation
lands on."""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_cancel as tc
from trio_cancel.testing import CancelSafetyError, SweepResult, cancel_at_each_checkpoint

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from trio_cancel.testing.pytest_plugin import CancelSweep

# ---------------------------------------------------------------- the helper itself


@attrs.define
class Mover:
    """Moves one item from a channel into a list; the naive version loses it when cancelled."""

    naive: bool
    source: trio.MemoryReceiveChannel[str] | None = None
    moved: list[str] = attrs.Factory(list)

    async def run(self) -> None:
        send, self.source = trio.open_memory_channel[str](1)
        send.send_nowait("item")
        self.moved = []
        item = await self.source.receive()
        if self.naive:
            # PLANTED BUG: a checkpoint while the item is only in a local variable
            await trio.lowlevel.checkpoint()
            self.moved.append(item)
        else:
            self.moved.append(item)
            await trio.lowlevel.checkpoint()  # FIXED: the item is stored before the checkpoint

    async def check(self) -> None:
        assert self.source is not None
        left = self.source.statistics().current_buffer_used
        assert len(self.moved) + left == 1, f"moved={self.moved}, left in channel={left}"
        await trio.lowlevel.checkpoint()


def _line_of(marker: str) -> int:
    source, start = inspect.getsourcelines(Mover.run)
    return start + next(i for i, line in enumerate(source) if marker in line)


async def test_sweep_finds_planted_bug_at_right_point_and_location() -> None:
    mover = Mover(naive=True)
    with pytest.raises(CancelSafetyError) as info:
        await cancel_at_each_checkpoint(mover.run, check=mover.check)
    err = info.value
    assert isinstance(err, AssertionError)
    assert err.point == 2
    assert err.location == f"{__file__}:{_line_of('PLANTED BUG') + 1} in run"
    assert "at checkpoint 2 of 2" in str(err)
    assert isinstance(err.__cause__, AssertionError)
    assert "moved=[], left in channel=0" in str(err.__cause__)


async def test_sweep_passes_fixed_version_and_reports_points() -> None:
    mover = Mover(naive=False)
    result = await cancel_at_each_checkpoint(mover.run, check=mover.check)
    assert result == SweepResult(points=2, locations=result.locations, cancelled=result.cancelled)
    assert result.points == 2
    assert result.cancelled == 2
    assert result.locations[1] == f"{__file__}:{_line_of('FIXED')} in run"


async def test_sweep_counting_run_check_failure_is_point_zero() -> None:
    async def op() -> None:
        await trio.lowlevel.checkpoint()

    async def always_fails() -> None:
        raise AssertionError("invariant broken")

    with pytest.raises(CancelSafetyError, match="after the uncancelled run") as info:
        await cancel_at_each_checkpoint(op, check=always_fails)
    assert info.value.point == 0


async def test_sweep_uncancelled_run_raising_is_point_zero() -> None:
    async def op() -> None:
        await trio.lowlevel.checkpoint()
        raise KeyError("broken anyway")

    with pytest.raises(CancelSafetyError, match="uncancelled run raised") as info:
        await cancel_at_each_checkpoint(op)
    assert info.value.point == 0
    assert isinstance(info.value.__cause__, KeyError)


async def test_sweep_non_cancelled_exception_under_cancellation_is_failure() -> None:
    async def op() -> None:
        try:
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            raise RuntimeError("turned a cancellation into an error") from None  # noqa: ASYNC104

    with pytest.raises(CancelSafetyError, match=r"instead of trio\.Cancelled") as info:
        await cancel_at_each_checkpoint(op)
    assert info.value.point == 1
    assert isinstance(info.value.__cause__, RuntimeError)


async def test_sweep_max_points() -> None:
    async def op() -> None:
        for _ in range(20):
            await trio.lowlevel.checkpoint()

    with pytest.raises(ValueError, match="more than max_points=10 checkpoints"):
        await cancel_at_each_checkpoint(op, max_points=10)
    assert (await cancel_at_each_checkpoint(op, max_points=20)).points == 20


async def test_sweep_operation_without_checkpoints_has_zero_points() -> None:
    ran: list[int] = []

    async def op() -> None:  # noqa: ASYNC910 - the point of the test
        ran.append(1)

    result = await cancel_at_each_checkpoint(op)
    assert result.points == 0
    assert ran == [1]


async def test_sweep_counts_checkpoints_of_spawned_tasks_deterministically() -> None:
    async def child(delay: float) -> None:
        await trio.sleep(delay)
        await trio.lowlevel.checkpoint()

    async def op() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child, 0)
            nursery.start_soon(child, 0)
            await trio.lowlevel.checkpoint()

    first = await cancel_at_each_checkpoint(op)
    second = await cancel_at_each_checkpoint(op)
    assert first.points >= 5  # two children's checkpoints count too
    assert first.locations == second.locations


async def test_sweep_with_autojump_clock(autojump_clock: trio.testing.MockClock) -> None:
    async def op() -> None:
        await trio.sleep(3600)
        await trio.sleep(3600)

    start = trio.current_time()
    result = await cancel_at_each_checkpoint(op)
    assert result.points == 2
    assert result.cancelled == 2
    # the counting run sleeps twice; run 1 is cancelled at the first sleep, run 2 at the second
    assert trio.current_time() - start == 7200 + 0 + 3600


async def test_sweep_caller_cancelled_stops_sweep(autojump_clock: trio.testing.MockClock) -> None:
    async def op() -> None:
        await trio.sleep(10)

    with trio.move_on_after(5) as scope:
        await cancel_at_each_checkpoint(op)
    assert scope.cancelled_caught


# ---------------------------------------------------------------- sweeping trio_cancel


@attrs.define
class ItemLedger:
    """Items sent, items received, items left: every item exactly once."""

    sent: list[int] = attrs.Factory(list)
    got: list[int] = attrs.Factory(list)
    left: list[int] = attrs.Factory(list)

    def reset(self) -> None:
        self.sent.clear()
        self.got.clear()
        self.left.clear()

    async def check(self) -> None:
        await trio.lowlevel.checkpoint()
        assert sorted(self.got + self.left) == sorted(self.sent), attrs.asdict(self)
        assert len(set(self.got)) == len(self.got), "duplicated"


def _drain(receive_nowait: functools.partial[int], into: list[int]) -> None:
    while True:
        try:
            into.append(receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return


async def test_sweep_oneshot_receive(cancel_sweep: CancelSweep) -> None:
    ledger = ItemLedger()

    async def op() -> None:
        ledger.reset()
        send, recv = tc.open_oneshot_channel[int]()
        ledger.sent.append(1)
        send.send(1)
        try:
            ledger.got.append(await recv.receive())
        finally:
            _drain(functools.partial(recv.receive_nowait), ledger.left)

    result = await cancel_sweep(op, check=ledger.check)
    assert result.points >= 1


async def test_sweep_broadcast_receive_loop(cancel_sweep: CancelSweep) -> None:
    ledger = ItemLedger()

    async def op() -> None:
        ledger.reset()
        send, recv = tc.open_broadcast_channel[int](8)
        for i in range(4):
            ledger.sent.append(i)
            send.send(i)
        send.close()
        try:
            async for item in recv:
                ledger.got.append(item)
                await trio.lowlevel.checkpoint()
        finally:
            _drain(functools.partial(recv.receive_nowait), ledger.left)

    result = await cancel_sweep(op, check=ledger.check)
    assert result.points >= 8


async def test_sweep_watch_receive_sees_latest_once(cancel_sweep: CancelSweep) -> None:
    seen: list[int] = []
    state: dict[str, tc.WatchReceiver[int]] = {}

    async def op() -> None:
        seen.clear()
        send, recv = tc.open_watch_channel(0)
        state["recv"] = recv
        send.send(1)
        seen.append(await recv.receive())
        send.send(2)
        seen.append(await recv.receive())

    async def check() -> None:
        await trio.lowlevel.checkpoint()
        recv = state["recv"]
        # A value is either received or still unseen: never skipped, never delivered twice.
        assert seen in ([], [1], [1, 2])
        assert recv.has_changed() == (len(seen) < (2 if seen else 1))

    result = await cancel_sweep(op, check=check)
    assert result.points == 2


async def test_sweep_merge_loses_nothing(cancel_sweep: CancelSweep) -> None:
    ledger = ItemLedger()

    async def op() -> None:
        ledger.reset()
        send_a, recv_a = trio.open_memory_channel[int](10)
        bsend, brecv = tc.open_broadcast_channel[int](10)
        for i in range(3):
            ledger.sent += [i, 100 + i]
            send_a.send_nowait(i)
            bsend.send(100 + i)
        send_a.close()
        bsend.close()
        merged = tc.merge(recv_a, brecv)
        try:
            async for item in merged:
                ledger.got.append(item)
        finally:
            # What the merge buffered is still "available to the next iteration".
            ledger.left.extend(merged._buffer)
            _drain(functools.partial(recv_a.receive_nowait), ledger.left)
            _drain(functools.partial(brecv.receive_nowait), ledger.left)

    result = await cancel_sweep(op, check=ledger.check)
    assert result.points >= 6


async def test_sweep_merge_racing_sources_loses_nothing(cancel_sweep: CancelSweep) -> None:
    ledger = ItemLedger()

    class NoNowait(trio.abc.ReceiveChannel[int]):
        def __init__(self, inner: trio.MemoryReceiveChannel[int]) -> None:
            self.inner = inner

        async def receive(self) -> int:
            return await self.inner.receive()

        async def aclose(self) -> None:
            await self.inner.aclose()

    async def op() -> None:
        ledger.reset()
        pairs = [trio.open_memory_channel[int](10) for _ in range(2)]
        for n, (send, _) in enumerate(pairs):
            for i in range(2):
                ledger.sent.append(10 * n + i)
                send.send_nowait(10 * n + i)
            send.close()
        merged = tc.merge(*(NoNowait(recv) for _, recv in pairs))
        try:
            async for item in merged:
                ledger.got.append(item)
        finally:
            ledger.left.extend(merged._buffer)
            for _, recv in pairs:
                _drain(functools.partial(recv.receive_nowait), ledger.left)

    result = await cancel_sweep(op, check=ledger.check)
    assert result.points >= 8


async def test_sweep_select_losers_finished_values_kept(cancel_sweep: CancelSweep) -> None:
    ledger = ItemLedger()
    cleanups: list[str] = []

    async def op() -> None:
        ledger.reset()
        cleanups.clear()
        send_a, recv_a = trio.open_memory_channel[int](1)
        send_b, recv_b = trio.open_memory_channel[int](1)
        ledger.sent += [1, 2]
        send_a.send_nowait(1)
        send_b.send_nowait(2)

        async def branch(recv: trio.MemoryReceiveChannel[int], name: str) -> int:
            try:
                return await recv.receive()
            finally:
                cleanups.append(name)

        try:
            result = await tc.select(
                a=functools.partial(branch, recv_a, "a"), b=functools.partial(branch, recv_b, "b")
            )
            ledger.got.append(result.value)
            ledger.got.extend(result.also_completed.values())
        finally:
            _drain(functools.partial(recv_a.receive_nowait), ledger.left)
            _drain(functools.partial(recv_b.receive_nowait), ledger.left)

    async def check() -> None:
        await ledger.check()
        # cancelled at select's first checkpoint, no branch started; otherwise every branch
        # has finished before select returned or raised
        assert sorted(cleanups) in ([], ["a", "b"]), "a branch was still running after select"

    result = await cancel_sweep(op, check=check)
    assert result.points >= 3


async def test_sweep_joinset_join_next_never_loses_an_outcome(
    cancel_sweep: CancelSweep, autojump_clock: trio.testing.MockClock
) -> None:
    outcomes: list[tc.Outcome[object]] = []
    sets: list[tc.JoinSet] = []

    async def op() -> None:
        outcomes.clear()
        sets.clear()
        async with tc.JoinSet() as js:
            sets.append(js)
            js.spawn(trio.sleep, 1)
            js.spawn(trio.sleep, 2)
            while (outcome := await js.join_next()) is not None:
                outcomes.append(outcome)

    async def check() -> None:
        await trio.lowlevel.checkpoint()
        if not sets:
            return  # cancelled at the entry checkpoint: nothing was spawned
        js = sets[0]
        # Every task's outcome was either returned by join_next or is still in the set.
        assert len(outcomes) + len(js) == 2

    result = await cancel_sweep(op, check=check)
    assert result.points >= 3


async def test_sweep_run_until_cancelled_and_token_scope(cancel_sweep: CancelSweep) -> None:
    log: list[str] = []

    async def work() -> str:
        await trio.lowlevel.checkpoint()
        log.append("work done")
        await trio.lowlevel.checkpoint()
        return "value"

    async def op() -> None:
        log.clear()
        token = tc.CancellationToken()
        with token.cancel_scope():
            result = await token.run_until_cancelled(work)
            log.append(f"result {result}")
        assert repr(token) == "<CancellationToken live>"  # every scope unregistered

    async def check() -> None:
        await trio.lowlevel.checkpoint()
        assert log in ([], ["work done"], ["work done", "result value"])

    result = await cancel_sweep(op, check=check)
    assert result.points >= 3


async def test_sweep_notify_permit_not_lost(cancel_sweep: CancelSweep) -> None:
    state: dict[str, object] = {}

    async def op() -> None:
        notify = tc.Notify()
        state["notify"] = notify
        state["woken"] = False
        notify.notify_one()
        await notify.wait()
        state["woken"] = True

    async def check() -> None:
        await trio.lowlevel.checkpoint()
        notify = state["notify"]
        assert isinstance(notify, tc.Notify)
        permit_left = "permit stored" in repr(notify)
        assert permit_left != state["woken"], "the permit was lost or used twice"

    await cancel_sweep(op, check=check)


# ---------------------------------------------------------------- reliability regressions


def _landing_op(
    kind: str, landed: list[object], feed: trio.MemoryReceiveChannel[int]
) -> Callable[[], Awaitable[None]]:
    async def op() -> None:
        reached = 0
        try:
            for i in range(1, 4):
                reached = i
                if kind == "checkpoint":
                    await trio.lowlevel.checkpoint()
                elif kind == "sleep":
                    await trio.sleep(1)
                elif kind == "blocking receive":  # fed by a producer outside the operation
                    await feed.receive()
                elif kind == "receive ready":
                    send, recv = trio.open_memory_channel[int](1)
                    send.send_nowait(i)
                    await recv.receive()
                elif kind == "free lock":
                    async with trio.Lock():
                        pass
        except trio.Cancelled:
            landed.append(reached)
            raise
        landed.append("completed")

    return op


async def _producer(send: trio.MemorySendChannel[int]) -> None:
    while True:
        await trio.sleep(1)
        with contextlib.suppress(trio.WouldBlock):
            send.send_nowait(0)


@pytest.mark.parametrize(
    "kind", ["checkpoint", "sleep", "blocking receive", "receive ready", "free lock"]
)
async def test_sweep_run_k_lands_at_checkpoint_k(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    landed: list[object] = []
    send, feed = trio.open_memory_channel[int](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_producer, send)
        result = await cancel_at_each_checkpoint(_landing_op(kind, landed, feed))
        nursery.cancel_scope.cancel()
    assert result.points == 3
    assert landed == ["completed", 1, 2, 3]  # run k at checkpoint k; the last one swept too


async def test_sweep_finds_a_loss_at_the_last_checkpoint() -> None:
    queue: list[str] = []
    delivered: list[str] = []

    async def op() -> None:
        await trio.lowlevel.checkpoint()  # checkpoint 1
        item = queue.pop()
        await trio.lowlevel.checkpoint()  # checkpoint 2, the last: a cancel here loses `item`
        delivered.append(item)

    async def check() -> None:
        total = len(queue) + len(delivered)
        queue[:] = ["item"]
        delivered.clear()
        assert total == 1, "item lost"

    queue.append("item")
    with pytest.raises(CancelSafetyError) as info:
        await cancel_at_each_checkpoint(op, check=check)
    assert info.value.point == 2
    line = inspect.getsourcelines(op)[1] + 3  # the second checkpoint() line
    assert info.value.location.endswith(f"test_sweep.py:{line} in op"), info.value.location


async def test_sweep_location_in_a_child_task_is_named() -> None:
    async def op() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 0)

    result = await cancel_at_each_checkpoint(op)
    assert all("<unknown>" not in loc for loc in result.locations), result.locations
    assert any("child task 'trio.sleep'" in loc for loc in result.locations), result.locations


async def test_sweep_max_points_stops_an_operation_that_never_ends() -> None:
    async def runaway() -> None:
        while True:
            await trio.lowlevel.checkpoint()

    with trio.fail_after(5):  # a safety net: it raises long before
        with pytest.raises(ValueError, match="max_points=100"):
            await cancel_at_each_checkpoint(runaway, max_points=100)


# ---------------------------------------------------------------- Ctrl+C and usage mistakes


async def test_sweep_lets_a_grouped_keyboard_interrupt_through_in_the_counting_run() -> None:
    async def op() -> None:
        async def child() -> None:
            await trio.lowlevel.checkpoint()
            raise KeyboardInterrupt

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)

    with pytest.raises(BaseExceptionGroup) as info:
        await cancel_at_each_checkpoint(op)
    assert info.value.split(KeyboardInterrupt)[0] is not None  # not a CancelSafetyError


async def test_sweep_lets_a_grouped_keyboard_interrupt_through_in_a_cancelled_run() -> None:
    async def op() -> None:
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            raise BaseExceptionGroup("ctrl+c", [KeyboardInterrupt()]) from None  # noqa: ASYNC104
        await trio.lowlevel.checkpoint()

    with pytest.raises(BaseExceptionGroup, match="ctrl") as info:
        await cancel_at_each_checkpoint(op)
    assert isinstance(info.value.exceptions[0], KeyboardInterrupt)


async def test_sweep_lets_a_bare_keyboard_interrupt_through_as_itself() -> None:
    async def op() -> None:
        await trio.lowlevel.checkpoint()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await cancel_at_each_checkpoint(op)


async def test_sweep_rejects_a_coroutine_instead_of_a_function() -> None:
    async def op() -> None:
        await trio.lowlevel.checkpoint()  # pragma: no cover

    coro = op()
    with pytest.raises(TypeError, match=r"pass the function itself.*not op\(\)"):
        await cancel_at_each_checkpoint(coro)  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited" warning


async def test_sweep_rejects_a_synchronous_function_or_check_before_running() -> None:
    ran: list[str] = []

    async def op() -> None:
        ran.append("op")
        await trio.lowlevel.checkpoint()

    def sync_op() -> None:
        ran.append("sync")  # pragma: no cover

    def sync_check() -> None:
        ran.append("check")  # pragma: no cover

    with pytest.raises(TypeError, match="async_fn must be an async function"):
        await cancel_at_each_checkpoint(sync_op)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="check must be an async function"):
        await cancel_at_each_checkpoint(op, check=sync_check)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="check must be an async function"):
        await cancel_at_each_checkpoint(op, check=op())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="check must be an async function"):
        await cancel_at_each_checkpoint(op, check=42)  # type: ignore[arg-type]
    assert ran == []


async def test_sweep_a_lambda_returning_a_non_awaitable_is_a_type_error() -> None:
    async def op() -> None:
        await trio.lowlevel.checkpoint()

    with pytest.raises(TypeError, match="async_fn returned int"):
        await cancel_at_each_checkpoint(lambda: 1)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="check returned NoneType"):
        await cancel_at_each_checkpoint(op, check=lambda: None)  # type: ignore[arg-type,return-value]
    # a lambda returning a coroutine is fine
    assert (await cancel_at_each_checkpoint(lambda: op(), check=lambda: op())).points == 1
