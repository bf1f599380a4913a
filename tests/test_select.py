"""Tests of select (tokio select!) and merge."""

from __future__ import annotations

import contextlib
import functools
import random
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


async def _after(delay: float, value: str) -> str:
    await trio.sleep(delay)
    return value


async def test_select_first_to_return_wins_losers_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cleaned: list[str] = []

    async def slow() -> str:
        try:
            await trio.sleep(10)
            return "slow"  # pragma: no cover
        finally:
            cleaned.append("slow cleaned up")

    result = await tc.select(fast=functools.partial(_after, 1, "fast"), slow=slow)
    assert result.name == "fast"
    assert result.value == "fast"
    assert dict(result.also_completed) == {}
    assert cleaned == ["slow cleaned up"]  # finished before select returned
    assert trio.current_time() == 1
    name, value = result
    assert (name, value) == ("fast", "fast")


async def test_select_loser_that_completed_anyway_is_kept() -> None:
    send_a, recv_a = trio.open_memory_channel[str](1)
    send_b, recv_b = trio.open_memory_channel[str](1)
    send_a.send_nowait("a")
    send_b.send_nowait("b")
    result = await tc.select(a=recv_a.receive, b=recv_b.receive)
    # Both receives found an item ready and took it before any cancellation could land.
    assert {result.name, *result.also_completed} == {"a", "b"}
    assert {result.value, *result.also_completed.values()} == {"a", "b"}


async def test_select_disabled_branch_never_runs(autojump_clock: trio.testing.MockClock) -> None:
    ran: list[str] = []

    async def never() -> str:
        ran.append("never")  # pragma: no cover
        return "x"  # pragma: no cover

    result = await tc.select(off=None, on=functools.partial(_after, 1, "on"))
    assert result.name == "on"
    paused = True
    result = await tc.select(
        data=None if paused else never, ctrl=functools.partial(_after, 1, "ctrl")
    )
    assert result.name == "ctrl"
    assert ran == []


async def test_select_all_disabled_is_value_error() -> None:
    with pytest.raises(ValueError, match="at least one enabled branch"):
        await tc.select(a=None)
    with pytest.raises(ValueError, match="at least one enabled branch"):
        await tc.select()


async def test_select_non_callable_branch_is_type_error() -> None:
    with pytest.raises(TypeError, match="branch 'a'"):
        await tc.select(a=3)  # type: ignore[arg-type]


async def test_select_one_branch_raises_bare(autojump_clock: trio.testing.MockClock) -> None:
    cleaned: list[str] = []

    async def boom() -> str:
        await trio.sleep(1)
        raise KeyError("branch failed")

    async def other() -> str:
        try:
            await trio.sleep(10)
            return "other"  # pragma: no cover
        finally:
            cleaned.append("other cancelled")

    with pytest.raises(KeyError, match="branch failed"):
        await tc.select(boom=boom, other=other)
    assert cleaned == ["other cancelled"]


async def test_select_several_branches_raise_group() -> None:
    async def boom(exc: Exception) -> str:
        await trio.lowlevel.cancel_shielded_checkpoint()
        raise exc

    with pytest.RaisesGroup(KeyError, ValueError):
        await tc.select(
            a=functools.partial(boom, KeyError("a")), b=functools.partial(boom, ValueError("b"))
        )


async def test_select_cancelled_from_outside_before_winner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.move_on_after(1) as scope:
        await tc.select(a=functools.partial(_after, 5, "a"), b=functools.partial(_after, 6, "b"))
    assert scope.cancelled_caught


async def test_select_cancelled_before_call() -> None:
    started: list[str] = []

    async def branch() -> str:
        started.append("x")
        await trio.lowlevel.checkpoint()
        return "x"  # pragma: no cover

    with trio.CancelScope() as cs:
        cs.cancel()
        await tc.select(a=branch)
    assert cs.cancelled_caught


async def test_select_winner_kept_when_outside_cancel_lands_during_loser_cleanup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outer = trio.CancelScope()

    async def loser() -> str:
        try:
            await trio.sleep(10)
            return "loser"  # pragma: no cover
        finally:
            outer.cancel("outside, during cleanup")

    with outer:
        result = await tc.select(win=functools.partial(_after, 1, "won"), lose=loser)
        assert result.value == "won"  # the received value is not lost
        await trio.lowlevel.checkpoint()  # the outside cancellation still lands here
        pytest.fail("not reached")  # pragma: no cover
    assert outer.cancelled_caught


async def test_select_is_a_checkpoint() -> None:
    async def immediate() -> str:
        return "now"

    with trio.testing.assert_checkpoints():
        assert (await tc.select(a=immediate)).value == "now"


async def test_select_with_token_branch(nursery: trio.Nursery) -> None:
    token = tc.CancellationToken()
    send, recv = trio.open_memory_channel[str](0)

    async def canceller() -> None:
        await trio.testing.wait_all_tasks_blocked()
        token.cancel("stop")

    nursery.start_soon(canceller)
    result = await tc.select(msg=recv.receive, stop=token.wait_cancelled)
    assert result.name == "stop"
    await send.aclose()


def _run_loose(async_fn: Callable[[], Awaitable[None]]) -> None:
    """``trio.run(async_fn, strict_exception_groups=False)``: Trio's deprecated mode. Its
    deprecation warning is expected here (filterwarnings=error would make it a failure)."""
    with pytest.warns(trio.TrioDeprecationWarning, match="strict_exception_groups=False"):
        trio.run(async_fn, strict_exception_groups=False)


def test_select_keeps_the_value_under_loose_exception_groups() -> None:
    seen: list[object] = []

    async def main() -> None:
        async def win() -> str:
            return "value"

        async def boom() -> str:
            raise ValueError("boom")

        try:
            await tc.select(a=win, b=boom)
        except tc.SelectError as exc:
            seen.append(exc.selected)
            seen.extend(type(e) for e in exc.exceptions)

    _run_loose(main)
    assert seen == [tc.Selected("a", "value"), ValueError]


def test_select_keeps_the_value_under_loose_groups_when_cancelled_after_winning() -> None:
    seen: list[object] = []

    async def main() -> None:
        with trio.CancelScope() as cs:

            async def win_and_cancel() -> str:
                cs.cancel()
                return "won"

            seen.append(await tc.select(a=win_and_cancel, b=trio.sleep_forever))
            await trio.lowlevel.checkpoint()
        seen.append(cs.cancelled_caught)

    _run_loose(main)
    assert seen == [tc.Selected("a", "won"), True]


def test_select_errors_under_loose_groups_are_as_under_strict_ones() -> None:
    seen: list[object] = []

    async def main() -> None:
        async def boom() -> str:
            raise ValueError("alone")

        with pytest.raises(ValueError, match="alone"):
            await tc.select(a=boom, b=trio.sleep_forever)
        seen.append("bare")

    _run_loose(main)
    assert seen == ["bare"]


# ---------------------------------------------------------------- merge


async def test_merge_interleaves_and_ends_when_all_sources_end(nursery: trio.Nursery) -> None:
    send_a, recv_a = trio.open_memory_channel[str](10)
    send_b, recv_b = trio.open_memory_channel[str](10)
    for i in range(3):
        send_a.send_nowait(f"a{i}")
        send_b.send_nowait(f"b{i}")
    await send_a.aclose()
    await send_b.aclose()
    items = [item async for item in tc.merge(recv_a, recv_b)]
    assert sorted(items) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert items[:2] == ["a0", "b0"]  # round-robin among ready sources


async def test_merge_waits_for_any_source(autojump_clock: trio.testing.MockClock) -> None:
    send_a, recv_a = trio.open_memory_channel[str](0)
    _, recv_b = tc.open_oneshot_channel[str]()
    merged = tc.merge(recv_a, recv_b)

    async def producer() -> None:
        await trio.sleep(1)
        await send_a.send("late")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        assert await merged.receive() == "late"
    assert trio.current_time() == 1


async def test_merge_with_trio_cancel_receivers() -> None:
    bsend, brecv = tc.open_broadcast_channel[str](4)
    wsend, wrecv = tc.open_watch_channel("initial")
    bsend.send("b")
    wsend.send("w")
    merged = tc.merge(brecv, wrecv)
    got = {await merged.receive(), await merged.receive()}
    assert got == {"b", "w"}


async def test_merge_consumer_cancelled_between_items_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send_a, recv_a = trio.open_memory_channel[int](100)
    send_b, recv_b = trio.open_memory_channel[int](100)
    merged = tc.merge(recv_a, recv_b)
    received: list[int] = []

    async def producer(send: trio.MemorySendChannel[int], start: int) -> None:
        async with send:
            for i in range(start, start + 50):
                await send.send(i)
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer, send_a, 0)
        nursery.start_soon(producer, send_b, 1000)
        deadline = 0.0
        while True:
            deadline += 0.007  # cancel the consumer at odd moments
            with trio.move_on_at(deadline):
                try:
                    received.append(await merged.receive())
                except trio.EndOfChannel:
                    break
    assert sorted(received) == [*range(50), *range(1000, 1050)]


async def test_merge_ready_items_both_taken_in_one_race_are_kept() -> None:
    send_a, recv_a = trio.open_memory_channel[str](1)

    class Slow(trio.abc.ReceiveChannel[str]):
        """A source without receive_nowait, so merge must race it."""

        def __init__(self, value: str) -> None:
            self.value: str | None = value

        async def receive(self) -> str:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self.value is None:
                await trio.sleep_forever()
            value, self.value = self.value, None
            assert value is not None
            await trio.lowlevel.cancel_shielded_checkpoint()
            return value

        async def aclose(self) -> None:
            await trio.lowlevel.checkpoint()

    send_a.send_nowait("a")
    merged = tc.merge(Slow("x"), Slow("y"))
    first = await merged.receive()
    second = await merged.receive()
    assert {first, second} == {"x", "y"}
    assert "2 sources open, 0 buffered" in repr(merged)
    await send_a.aclose()
    await recv_a.aclose()


async def test_merge_source_error_propagates_bare() -> None:
    send, recv = trio.open_memory_channel[int](0)
    await recv.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await tc.merge(recv).receive()
    await send.aclose()


async def test_merge_rejects_non_channels() -> None:
    with pytest.raises(TypeError, match="argument 0 is list"):
        tc.merge([])  # type: ignore[arg-type]


async def test_merge_aclose_and_closed_use() -> None:
    _send, recv = trio.open_memory_channel[int](1)
    merged = tc.merge(recv)
    await merged.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await merged.receive()


async def test_merge_no_sources_ends_at_once() -> None:
    with trio.testing.assert_checkpoints(), pytest.raises(trio.EndOfChannel):
        await tc.merge().receive()


# ---------------------------------------------------------------- checkpoints everywhere


async def test_every_channel_fast_path_is_a_checkpoint() -> None:
    o_send, o_recv = tc.open_oneshot_channel[int]()
    o_send.send(1)
    b_send, b_recv = tc.open_broadcast_channel[int](2)
    b_send.send(1)
    w_send, w_recv = tc.open_watch_channel(0)
    w_send.send(1)
    w_other = w_send.subscribe()
    w_other.close()
    for ready in (
        o_recv.receive,
        b_recv.receive,
        w_recv.receive,
        lambda: w_recv.wait_for(lambda v: True),
        b_recv.aclose,
        w_send.aclose,
    ):
        with trio.testing.assert_checkpoints():
            await ready()
    merged = tc.merge(trio.open_memory_channel[int](1)[1])
    with trio.testing.assert_checkpoints():
        await merged.aclose()


# ---------------------------------------------------------------- reliability regressions


def _raising_when_cancelled(error: Exception) -> Callable[[], Awaitable[str]]:
    """A branch that waits forever and raises ``error`` from its ``finally`` as it is cancelled."""

    async def branch() -> str:
        try:
            await trio.sleep_forever()
        finally:
            raise error

    return branch


async def test_select_keeps_winner_value_when_a_loser_raises_while_cancelled() -> None:
    send, recv = trio.open_memory_channel[str](1)
    send.send_nowait("job-1")
    heartbeat = _raising_when_cancelled(ConnectionError("heartbeat: peer gone while closing"))

    with pytest.raises(tc.SelectError) as info:
        await tc.select(job=recv.receive, beat=heartbeat)
    err = info.value
    assert isinstance(err, ExceptionGroup)  # every error is an Exception
    assert err.selected == tc.Selected("job", "job-1")
    assert [type(e) for e in err.exceptions] == [ConnectionError]


async def test_select_keeps_value_when_other_branch_raised_first() -> None:
    """A value taken by one branch survives another branch's error, whichever came first."""
    lost = 0
    for _ in range(50):
        send, recv = trio.open_memory_channel[str](1)
        send.send_nowait("job")

        async def lagged() -> str:
            raise tc.LaggedError(3)

        try:
            result = await tc.select(job=recv.receive, lag=lagged)
            got = [result.value]
        except tc.SelectError as err:
            got = [err.selected.value]
        except tc.LaggedError:
            got = []
        with contextlib.suppress(trio.WouldBlock):
            got.append(recv.receive_nowait())
        lost += got != ["job"]
    assert lost == 0


async def test_select_error_base_flavour_and_split_keep_selected() -> None:
    async def quick() -> str:
        return "1"

    with pytest.raises(tc.SelectError) as info:
        await tc.select(a=quick, b=_raising_when_cancelled(ValueError("cleanup failed")))
    matched, rest = info.value.split(ValueError)
    assert rest is None
    selected = getattr(matched, "selected", None)
    assert isinstance(selected, tc.Selected)
    assert selected.value == "1"
    base = tc.SelectError("m", [KeyboardInterrupt()], selected)
    assert not isinstance(base, ExceptionGroup)  # a BaseException among the errors
    assert base.selected is selected


async def test_select_is_a_checkpoint_when_a_branch_returns_at_once() -> None:
    async def quick() -> int:
        return 1

    with trio.testing.assert_checkpoints():
        await tc.select(a=quick)
    with trio.CancelScope() as cs:
        cs.cancel()
        await tc.select(a=quick)
        pytest.fail("select did not raise in a cancelled scope")  # pragma: no cover
    assert cs.cancelled_caught


async def test_select_polling_loop_sees_its_deadline(mock_clock: trio.testing.MockClock) -> None:
    async def quick() -> int:
        return 1

    n = 0
    with trio.move_on_after(1):
        while n < 1_000:
            await tc.select(a=quick)
            n += 1
            if n == 10:
                mock_clock.jump(2)  # the deadline passes while the loop polls
    assert n <= 11  # seen at the first cancel point after the deadline was processed


async def test_select_rejects_sync_branch_before_running_any() -> None:
    started: list[str] = []

    async def fine() -> int:
        started.append("fine")
        return 1

    def sync() -> int:
        return 2

    with pytest.raises(TypeError, match="synchronous"):
        await tc.select(a=fine, b=sync)  # type: ignore[arg-type]
    assert started == []


async def test_merge_with_thousands_of_ended_sources() -> None:
    ended = []
    for _ in range(10_000):
        s, r = trio.open_memory_channel[str](0)
        s.close()
        ended.append(r)
    live_send, live_recv = trio.open_memory_channel[str](1)
    live_send.send_nowait("item")
    merged = tc.merge(*ended, live_recv)
    assert await merged.receive() == "item"
    live_send.close()
    with pytest.raises(trio.EndOfChannel):
        await merged.receive()


async def test_merge_several_receivers_all_see_the_end(nursery: trio.Nursery) -> None:
    send_a, recv_a = trio.open_memory_channel[int](10)
    send_b, recv_b = trio.open_memory_channel[int](10)
    merged = tc.merge(recv_a, recv_b)
    outcomes: list[str] = []

    async def consumer() -> None:
        try:
            await merged.receive()
        except trio.EndOfChannel:
            outcomes.append("end")

    async with trio.open_nursery() as inner:
        for _ in range(3):
            inner.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()  # every consumer is waiting
        send_a.close()
        send_b.close()
    assert outcomes == ["end", "end", "end"]


async def test_merge_several_receivers_each_item_to_exactly_one() -> None:
    send_a, recv_a = trio.open_memory_channel[int](0)
    send_b, recv_b = trio.open_memory_channel[int](0)
    merged = tc.merge(recv_a, recv_b)
    got: dict[str, list[int]] = {"x": [], "y": []}

    async def consumer(name: str) -> None:
        async for item in merged:
            got[name].append(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer, "x")
        nursery.start_soon(consumer, "y")
        for i in range(100):
            await (send_a if i % 2 else send_b).send(i)
        send_a.close()
        send_b.close()
    assert sorted(got["x"] + got["y"]) == list(range(100))
    assert got["x"]
    assert got["y"]  # both took part


@pytest.mark.parametrize("seed", range(200))
async def test_merge_several_receivers_random_schedules(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    rng = random.Random(seed)
    n_sources = rng.randint(1, 4)
    n_consumers = rng.randint(2, 4)
    channels = [
        trio.open_memory_channel[tuple[int, int]](rng.choice([0, 1, 5])) for _ in range(n_sources)
    ]
    merged = tc.merge(*(recv for _, recv in channels))
    sent: list[tuple[int, int]] = []
    received: list[tuple[int, int]] = []
    ends: list[int] = []

    async def producer(index: int, send: trio.MemorySendChannel[tuple[int, int]]) -> None:
        async with send:
            for i in range(rng.randint(0, 20)):
                await trio.sleep(rng.choice([0, 0, 0.001, 0.01]))
                await send.send((index, i))
                sent.append((index, i))

    async def consumer(index: int) -> None:
        while True:
            # a cancellation at a random moment: a cancelled receive consumes nothing
            with trio.move_on_after(rng.choice([0, 0.0005, 0.002, 0.02, 1])):
                try:
                    item = await merged.receive()
                except trio.EndOfChannel:
                    ends.append(index)
                    return
                received.append(item)
            await trio.sleep(rng.choice([0, 0, 0.001]))

    async with trio.open_nursery() as nursery:
        for index in range(n_consumers):
            nursery.start_soon(consumer, index)
        for index, (send, _) in enumerate(channels):
            nursery.start_soon(producer, index, send)
    assert sorted(received) == sorted(sent)  # nothing lost, nothing twice
    assert sorted(ends) == list(range(n_consumers))  # every receiver saw the end


async def test_merge_close_wakes_a_waiting_receiver(nursery: trio.Nursery) -> None:
    _send, recv = trio.open_memory_channel[int](0)
    merged = tc.merge(recv)
    outcomes: list[str] = []

    async def consumer() -> None:
        try:
            await merged.receive()
        except trio.ClosedResourceError:
            outcomes.append("closed")

    async with trio.open_nursery() as inner:
        inner.start_soon(consumer)
        inner.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        await merged.aclose()
    assert outcomes == ["closed", "closed"]
