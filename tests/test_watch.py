"""Tests of open_watch_channel (API.md: Channels, Precise points)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_cancel as tc


async def test_first_receiver_has_seen_initial() -> None:
    send, recv = tc.open_watch_channel(False)
    assert not recv.has_changed()
    assert recv.borrow() is False
    with pytest.raises(trio.WouldBlock):
        recv.receive_nowait()
    send.send(True)
    assert recv.has_changed()
    assert recv.borrow() is True
    assert recv.has_changed()  # borrow() does not mark seen
    assert recv.borrow_and_update() is True
    assert not recv.has_changed()


async def test_wait_changed_marks_seen(nursery: trio.Nursery) -> None:
    send, recv = tc.open_watch_channel(0)
    woken: list[int] = []

    async def waiter() -> None:
        await recv.wait_changed()
        woken.append(recv.borrow())

    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    send.send(1)
    await trio.testing.wait_all_tasks_blocked()
    assert woken == [1]
    assert not recv.has_changed()


async def test_receive_yields_newest_values_only() -> None:
    send, recv = tc.open_watch_channel(0)
    send.send(1)
    send.send(2)
    assert await recv.receive() == 2
    with send:
        send.send(3)
    assert [v async for v in recv] == [3]


async def test_subscribe_has_seen_current_value_late_subscriber_pitfall() -> None:
    send, _recv = tc.open_watch_channel("running")
    send.send("stopping")
    late = send.subscribe()
    assert not late.has_changed()  # it missed the change: it counts as seen
    assert late.borrow() == "stopping"
    assert await late.wait_for(lambda v: v == "stopping") == "stopping"  # the fix


async def test_clone_copies_seen_state() -> None:
    send, recv = tc.open_watch_channel(0)
    send.send(1)
    twin = recv.clone()
    assert twin.has_changed()
    recv.borrow_and_update()
    assert twin.has_changed()
    assert not recv.clone().has_changed()


async def test_send_without_receivers_is_broken_value_not_stored() -> None:
    send, recv = tc.open_watch_channel(1)
    recv.close()
    assert send.is_closed()
    with pytest.raises(trio.BrokenResourceError):
        send.send(2)
    assert send.borrow() == 1
    assert send.send_replace(3) == 1
    assert send.borrow() == 3


async def test_send_modify_calls_fn_and_notifies() -> None:
    send, recv = tc.open_watch_channel([1])
    send.send_modify(lambda v: v.append(2))
    assert recv.has_changed()
    assert recv.borrow_and_update() == [1, 2]


async def test_send_modify_raising_does_not_notify() -> None:
    send, recv = tc.open_watch_channel([1])

    def broken(v: list[int]) -> None:
        raise KeyError("no")

    with pytest.raises(KeyError):
        send.send_modify(broken)
    assert not recv.has_changed()


async def test_closed_sender_side() -> None:
    send, recv = tc.open_watch_channel(0)
    other = send.clone()
    send.close()
    assert not recv.has_changed()  # a sender (the clone) is still open
    other.send(5)
    other.close()
    with pytest.raises(trio.EndOfChannel):
        recv.has_changed()
    assert await recv.receive() == 5  # the unseen value is still delivered
    with pytest.raises(trio.EndOfChannel):
        await recv.wait_changed()


async def test_wait_changed_woken_by_sender_close(nursery: trio.Nursery) -> None:
    send, recv = tc.open_watch_channel(0)
    ended: list[bool] = []

    async def waiter() -> None:
        with pytest.raises(trio.EndOfChannel):
            await recv.wait_changed()
        ended.append(True)

    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    send.close()
    await trio.testing.wait_all_tasks_blocked()
    assert ended == [True]


async def test_wait_for_checks_current_then_each_new(nursery: trio.Nursery) -> None:
    send, recv = tc.open_watch_channel(0)
    checked: list[int] = []
    result: list[int] = []

    def big(v: int) -> bool:
        checked.append(v)
        return v >= 3

    async def waiter() -> None:
        result.append(await recv.wait_for(big))

    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    for v in (1, 2, 3):
        send.send(v)
        await trio.testing.wait_all_tasks_blocked()
    assert checked == [0, 1, 2, 3]
    assert result == [3]
    assert not recv.has_changed()


async def test_wait_for_closed_never_matching_is_end_of_channel() -> None:
    send, recv = tc.open_watch_channel(0)
    send.close()
    with pytest.raises(trio.EndOfChannel):
        await recv.wait_for(lambda v: v > 0)
    assert await recv.wait_for(lambda v: v == 0) == 0


async def test_wait_for_predicate_error_propagates() -> None:
    _send, recv = tc.open_watch_channel(0)
    with pytest.raises(ZeroDivisionError):
        await recv.wait_for(lambda v: 1 / v > 0)


async def test_cancelled_waits_mark_nothing(autojump_clock: trio.testing.MockClock) -> None:
    send, recv = tc.open_watch_channel(0)
    with trio.move_on_after(1):
        await recv.wait_changed()
    send.send(1)
    for wait in (recv.wait_changed, recv.receive):
        with trio.CancelScope() as cs:
            cs.cancel()
            await wait()
        assert cs.cancelled_caught
        assert recv.has_changed()
    with trio.CancelScope() as cs:
        cs.cancel()
        await recv.wait_for(lambda v: True)
    assert recv.has_changed()
    assert await recv.receive() == 1


async def test_wait_closed_and_receiver_count(nursery: trio.Nursery) -> None:
    send, recv = tc.open_watch_channel(0)
    r2 = send.subscribe()
    assert send.receiver_count == 2
    closed: list[bool] = []

    async def waiter() -> None:
        await send.wait_closed()
        closed.append(True)

    nursery.start_soon(waiter)
    recv.close()
    await trio.testing.wait_all_tasks_blocked()
    assert closed == []
    await r2.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert closed == [True]


async def test_closed_endpoints_raise_closed_resource_error() -> None:
    send, recv = tc.open_watch_channel(0)
    recv.close()
    for call in (recv.borrow, recv.borrow_and_update, recv.has_changed, recv.clone):
        with pytest.raises(trio.ClosedResourceError):
            call()
    with pytest.raises(trio.ClosedResourceError):
        await recv.receive()
    send.close()
    with pytest.raises(trio.ClosedResourceError):
        send.send_replace(1)
    with pytest.raises(trio.ClosedResourceError):
        send.subscribe()


async def test_ten_thousand_waiting_receivers(nursery: trio.Nursery) -> None:
    send, first = tc.open_watch_channel(0)
    receivers = [first, *(send.subscribe() for _ in range(9_999))]
    done = 0

    async def waiter(r: tc.WatchReceiver[int]) -> None:
        nonlocal done
        await r.wait_changed()
        done += 1

    for r in receivers:
        nursery.start_soon(waiter, r)
    await trio.testing.wait_all_tasks_blocked()
    send.send(1)
    await trio.testing.wait_all_tasks_blocked()
    assert done == 10_000


async def test_wait_closed_cancelled_before_and_while_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, recv = tc.open_watch_channel(0)
    with trio.CancelScope() as cs:
        cs.cancel()
        await send.wait_closed()
    assert cs.cancelled_caught
    with trio.move_on_after(1) as waited:
        await send.wait_closed()
    assert waited.cancelled_caught
    assert not send.is_closed()  # cancelling the waits changed nothing
    recv.close()
    with trio.testing.assert_checkpoints():
        await send.wait_closed()


async def test_wait_closed_waits_again_after_a_new_subscribe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, recv = tc.open_watch_channel(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send.wait_closed)  # waiting when the last receiver closes
        await trio.testing.wait_all_tasks_blocked()
        recv.close()
    again = send.subscribe()
    assert not send.is_closed()
    with trio.move_on_after(1) as cs:
        await send.wait_closed()
    assert cs.cancelled_caught  # a receiver is open: it waits, as is_closed() says
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send.wait_closed)
        await trio.testing.wait_all_tasks_blocked()
        again.close()  # wakes the waiter
    assert send.is_closed()


async def test_watch_send_from_another_thread_changes_nothing() -> None:
    send, recv = tc.open_watch_channel(0)
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            send.send(1)
        except RuntimeError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(recv.wait_changed)
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(in_thread)
        assert len(errors) == 1
        assert send.borrow() == 0  # not stored
        send.send(2)
    assert recv.borrow() == 2
