"""Tests of open_oneshot_channel (API.md: Channels, Precise points)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_cancel as tc


async def test_send_then_receive_once_then_end() -> None:
    send, recv = tc.open_oneshot_channel[int]()
    send.send(5)
    with trio.testing.assert_checkpoints():
        assert await recv.receive() == 5
    with pytest.raises(trio.EndOfChannel):
        await recv.receive()


async def test_receive_waits_for_send(nursery: trio.Nursery) -> None:
    send, recv = tc.open_oneshot_channel[str]()
    got: list[str] = []

    async def receiver() -> None:
        got.append(await recv.receive())

    nursery.start_soon(receiver)
    await trio.testing.wait_all_tasks_blocked()
    assert got == []
    send.send("hi")
    await trio.testing.wait_all_tasks_blocked()
    assert got == ["hi"]


async def test_sender_closed_without_sending_is_end_of_channel(nursery: trio.Nursery) -> None:
    send, recv = tc.open_oneshot_channel[int]()
    errors: list[type[BaseException]] = []

    async def receiver() -> None:
        try:
            await recv.receive()
        except trio.EndOfChannel:
            errors.append(trio.EndOfChannel)

    nursery.start_soon(receiver)
    await trio.testing.wait_all_tasks_blocked()
    send.close()
    await trio.testing.wait_all_tasks_blocked()
    assert errors == [trio.EndOfChannel]
    with pytest.raises(trio.EndOfChannel):
        recv.receive_nowait()


async def test_receive_nowait_states() -> None:
    send, recv = tc.open_oneshot_channel[int]()
    with pytest.raises(trio.WouldBlock):
        recv.receive_nowait()
    send.send(1)
    assert recv.receive_nowait() == 1
    with pytest.raises(trio.EndOfChannel):
        recv.receive_nowait()


async def test_send_twice_is_closed_resource_error_value_kept() -> None:
    send, recv = tc.open_oneshot_channel[int]()
    send.send(1)
    with pytest.raises(trio.ClosedResourceError, match="spent"):
        send.send(2)
    assert await recv.receive() == 1


async def test_send_after_own_close_is_closed_resource_error() -> None:
    send, _recv = tc.open_oneshot_channel[int]()
    send.close()
    with pytest.raises(trio.ClosedResourceError):
        send.send(1)


async def test_send_to_closed_receiver_is_broken() -> None:
    send, recv = tc.open_oneshot_channel[int]()
    recv.close()
    assert send.is_closed()
    with pytest.raises(trio.BrokenResourceError):
        send.send(1)


async def test_receive_on_closed_receiver_with_value_waiting_is_closed_error() -> None:
    send, recv = tc.open_oneshot_channel[int]()
    send.send(1)
    recv.close()
    with pytest.raises(trio.ClosedResourceError):
        await recv.receive()
    with pytest.raises(trio.ClosedResourceError):
        recv.receive_nowait()


async def test_close_receiver_wakes_its_waiter_with_closed_error(nursery: trio.Nursery) -> None:
    _send, recv = tc.open_oneshot_channel[int]()
    seen: list[str] = []

    async def receiver() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await recv.receive()
        seen.append("closed")

    nursery.start_soon(receiver)
    await trio.testing.wait_all_tasks_blocked()
    recv.close()
    await trio.testing.wait_all_tasks_blocked()
    assert seen == ["closed"]


async def test_receive_cancelled_while_waiting_consumes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, recv = tc.open_oneshot_channel[int]()
    with trio.move_on_after(1) as scope:
        await recv.receive()
    assert scope.cancelled_caught
    send.send(3)
    with trio.CancelScope() as cs:
        cs.cancel()
        await recv.receive()  # cancelled at its checkpoint: must not take the value
    assert cs.cancelled_caught
    assert await recv.receive() == 3


async def test_wait_closed(nursery: trio.Nursery) -> None:
    send, recv = tc.open_oneshot_channel[int]()
    done: list[bool] = []

    async def waiter() -> None:
        await send.wait_closed()
        done.append(True)

    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    assert done == []
    assert not send.is_closed()
    async with recv:
        pass
    await trio.testing.wait_all_tasks_blocked()
    assert done == [True]
    with trio.testing.assert_checkpoints():
        await send.wait_closed()


async def test_wait_closed_cancellable(autojump_clock: trio.testing.MockClock) -> None:
    send, _recv = tc.open_oneshot_channel[int]()
    with trio.move_on_after(1) as scope:
        await send.wait_closed()
    assert scope.cancelled_caught


async def test_async_for_yields_the_value_once() -> None:
    send, recv = tc.open_oneshot_channel[int]()
    with send:
        send.send(9)
    assert [v async for v in recv] == [9]


async def test_context_managers_and_aclose() -> None:
    send, recv = tc.open_oneshot_channel[int]()
    with send:
        pass
    with pytest.raises(trio.ClosedResourceError):
        send.send(1)
    with trio.testing.assert_checkpoints():
        await recv.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await recv.receive()


async def test_reprs() -> None:
    send, recv = tc.open_oneshot_channel[int]()
    assert repr(send) == "<OneshotSender ready>"
    assert repr(recv) == "<OneshotReceiver empty>"
    send.send(1)
    assert repr(send) == "<OneshotSender spent>"
    assert repr(recv) == "<OneshotReceiver value waiting>"


def test_endpoints_not_constructible() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        tc.OneshotSender(None)  # type: ignore[arg-type]


async def test_aclose_cancelled_before_the_call_still_closes() -> None:
    send, recv = tc.open_oneshot_channel[int]()
    with trio.CancelScope() as cs:
        cs.cancel()
        await recv.aclose()
    assert cs.cancelled_caught
    assert send.is_closed()
    merged = tc.merge(trio.open_memory_channel[int](1)[1])
    with trio.CancelScope() as cs:
        cs.cancel()
        await merged.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await merged.receive()


async def test_send_from_another_thread_changes_nothing_and_retry_delivers() -> None:
    send, recv = tc.open_oneshot_channel[str]()
    trio_token = trio.lowlevel.current_trio_token()
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            send.send("v")
        except RuntimeError as exc:
            errors.append(exc)
        trio.from_thread.run_sync(send.send, "v", trio_token=trio_token)

    got: list[str] = []

    async def receiver() -> None:
        got.append(await recv.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        await trio.to_thread.run_sync(in_thread)
    assert len(errors) == 1
    assert got == ["v"]


def test_send_after_own_close_says_closed() -> None:
    send, _recv = tc.open_oneshot_channel[int]()
    send.close()
    with pytest.raises(trio.ClosedResourceError, match="was closed"):
        send.send(1)
