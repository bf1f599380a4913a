"""Tests of open_broadcast_channel (API.md: Channels, Precise points)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_cancel as tc


async def test_every_receiver_sees_every_value() -> None:
    send, r1 = tc.open_broadcast_channel[int](4)
    r2 = send.subscribe()
    assert send.send(1) == 2
    assert send.send(2) == 2
    assert [await r1.receive(), await r1.receive()] == [1, 2]
    assert [r2.receive_nowait(), r2.receive_nowait()] == [1, 2]


async def test_subscribe_sees_only_later_values() -> None:
    send, _r1 = tc.open_broadcast_channel[int](4)
    send.send(1)
    late = send.subscribe()
    with pytest.raises(trio.WouldBlock):
        late.receive_nowait()
    send.send(2)
    assert late.receive_nowait() == 2
    again = late.resubscribe()
    send.send(3)
    assert again.receive_nowait() == 3
    assert late.receive_nowait() == 3


async def test_lagged_once_then_oldest_kept() -> None:
    send, recv = tc.open_broadcast_channel[int](2)
    for v in range(5):
        send.send(v)
    with pytest.raises(tc.LaggedError) as info:
        await recv.receive()
    assert info.value.skipped == 3
    assert [await recv.receive(), await recv.receive()] == [3, 4]
    with pytest.raises(trio.WouldBlock):
        recv.receive_nowait()


async def test_exactly_capacity_values_kept() -> None:
    send, recv = tc.open_broadcast_channel[int](3)
    for v in range(3):
        send.send(v)
    assert [recv.receive_nowait() for _ in range(3)] == [0, 1, 2]
    for v in range(4):
        send.send(v)
    with pytest.raises(tc.LaggedError, match="skipped 1"):
        recv.receive_nowait()


async def test_send_without_receivers_is_broken_nothing_stored() -> None:
    send, recv = tc.open_broadcast_channel[int](2)
    recv.close()
    assert send.is_closed()
    assert send.receiver_count == 0
    with pytest.raises(trio.BrokenResourceError):
        send.send(1)
    fresh = send.subscribe()
    with pytest.raises(trio.WouldBlock):
        fresh.receive_nowait()


async def test_end_of_channel_after_all_senders_closed_and_drained() -> None:
    send, recv = tc.open_broadcast_channel[int](4)
    other = send.clone()
    send.send(1)
    send.close()
    other.send(2)
    assert recv.receive_nowait() == 1
    assert recv.receive_nowait() == 2
    with pytest.raises(trio.WouldBlock):
        recv.receive_nowait()  # the clone is still open
    other.close()
    with pytest.raises(trio.EndOfChannel):
        recv.receive_nowait()


async def test_async_for_drains_then_ends() -> None:
    send, recv = tc.open_broadcast_channel[int](4)
    with send:
        send.send(1)
        send.send(2)
    assert [v async for v in recv] == [1, 2]


async def test_waiting_receivers_woken_by_send_and_by_last_close(nursery: trio.Nursery) -> None:
    send, recv = tc.open_broadcast_channel[str](1)
    receivers = [recv, send.subscribe(), send.subscribe()]
    got: list[str] = []

    async def consume(r: tc.BroadcastReceiver[str]) -> None:
        async for v in r:
            got.append(v)  # noqa: PERF401 - appended as it arrives, checked midway
        got.append("end")

    for r in receivers:
        nursery.start_soon(consume, r)
    await trio.testing.wait_all_tasks_blocked()
    send.send("stop")
    await trio.testing.wait_all_tasks_blocked()
    assert got == ["stop"] * 3
    send.close()
    await trio.testing.wait_all_tasks_blocked()
    assert got.count("end") == 3


async def test_receive_cancelled_consumes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    send, recv = tc.open_broadcast_channel[int](2)
    with trio.move_on_after(1):
        await recv.receive()
    send.send(7)
    with trio.CancelScope() as cs:
        cs.cancel()
        await recv.receive()
    assert cs.cancelled_caught
    assert await recv.receive() == 7


async def test_closed_endpoints_raise_closed_resource_error(nursery: trio.Nursery) -> None:
    send, recv = tc.open_broadcast_channel[int](2)
    spare = send.subscribe()
    blocked: list[str] = []

    async def waiter() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await recv.receive()
        blocked.append("woken")

    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    recv.close()
    await trio.testing.wait_all_tasks_blocked()
    assert blocked == ["woken"]
    with pytest.raises(trio.ClosedResourceError):
        recv.resubscribe()
    send.close()
    for call in (lambda: send.send(1), send.subscribe, send.clone):
        with pytest.raises(trio.ClosedResourceError):
            call()
    await spare.aclose()


async def test_capacity_validation() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        tc.open_broadcast_channel[int](0)
    with pytest.raises(TypeError, match="int"):
        tc.open_broadcast_channel[int](1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        tc.open_broadcast_channel[int](True)


async def test_receiver_count_and_reprs() -> None:
    send, recv = tc.open_broadcast_channel[int](8)
    r2 = send.subscribe()
    assert send.receiver_count == 2
    send.send(1)
    assert repr(recv) == "<BroadcastReceiver 1 unread>"
    assert repr(send) == "<BroadcastSender open, 2 receivers, capacity 8>"
    r2.close()
    assert send.receiver_count == 1
    assert repr(r2) == "<BroadcastReceiver closed>"


async def test_ten_thousand_receivers_one_send(nursery: trio.Nursery) -> None:
    send, first = tc.open_broadcast_channel[int](1)
    receivers = [first, *(send.subscribe() for _ in range(9_999))]
    done = 0

    async def consume(r: tc.BroadcastReceiver[int]) -> None:
        nonlocal done
        assert await r.receive() == 1
        done += 1

    for r in receivers:
        nursery.start_soon(consume, r)
    await trio.testing.wait_all_tasks_blocked()
    assert send.send(1) == 10_000
    await trio.testing.wait_all_tasks_blocked()
    assert done == 10_000
