"""may_cancel: an operation that returns its partial progress when its token fires."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_cancel as tc


@tc.may_cancel
async def read_some(
    stream: trio.abc.ReceiveStream, buf: bytearray, n: int, *, token: tc.CancellationToken
) -> int:
    """Read up to ``n`` bytes into ``buf``; when the token fires, return how many arrived."""
    start = len(buf)
    with token.cancel_scope():
        while len(buf) - start < n:
            chunk = await stream.receive_some(n - (len(buf) - start))
            if not chunk:
                break
            buf += chunk
    return len(buf) - start


async def drip(stream: trio.abc.SendStream, data: bytes, every: float) -> None:
    for byte in data:
        await trio.sleep(every)
        await stream.send_all(bytes([byte]))


async def test_plain_await_runs_to_completion(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    send, receive = trio.testing.memory_stream_pair()
    nursery.start_soon(drip, send, b"0123456789", 1.0)
    buf = bytearray()
    assert await read_some(receive, buf, 10) == 10
    assert buf == b"0123456789"
    assert trio.current_time() == pytest.approx(10.0)


async def test_token_stops_it_early_and_nothing_is_lost(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    send, receive = trio.testing.memory_stream_pair()
    nursery.start_soon(drip, send, b"0123456789", 1.0)
    token = tc.CancellationToken()
    token.cancel_after(4.5)
    buf = bytearray()
    got = await read_some(receive, buf, 10).may_cancel_with(token)
    assert got == 4
    assert buf == b"0123"
    # The rest is still in the stream: a second read picks up exactly where this one stopped.
    assert await read_some(receive, buf, 6) == 6
    assert buf == b"0123456789"


async def test_already_cancelled_token_still_runs_the_function() -> None:
    send, receive = trio.testing.memory_stream_pair()
    await send.send_all(b"ab")
    token = tc.CancellationToken()
    token.cancel("stop")
    buf = bytearray()
    assert await read_some(receive, buf, 2).may_cancel_with(token) == 0
    assert buf == b""  # the function decided: nothing read, nothing consumed
    assert await read_some(receive, buf, 2) == 2


async def test_the_function_gets_a_child_of_the_token() -> None:
    seen: list[tc.CancellationToken] = []

    @tc.may_cancel
    async def grab(*, token: tc.CancellationToken) -> None:
        seen.append(token)
        token.cancel("inside")  # cancelling its own token never reaches the caller's
        await trio.lowlevel.checkpoint()

    mine = tc.CancellationToken()
    await grab().may_cancel_with(mine)
    await grab()
    assert seen[0] is not mine
    assert not mine.is_cancelled()
    assert seen[0].is_cancelled()
    mine.cancel("outer")
    other = tc.CancellationToken()
    await grab().may_cancel_with(other)
    other.cancel("later")
    assert seen[2].reason == "inside"


async def test_outside_cancellation_raises_cancelled_as_usual(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    send, receive = trio.testing.memory_stream_pair()
    nursery.start_soon(drip, send, b"0123456789", 1.0)
    token = tc.CancellationToken()
    buf = bytearray()
    with trio.move_on_after(2.5) as outer:
        await read_some(receive, buf, 10).may_cancel_with(token)
    assert outer.cancelled_caught
    assert buf == b"01"  # what arrived stays in the caller's buffer
    assert not token.is_cancelled()


async def test_cancelled_before_start_never_runs_the_function() -> None:
    ran: list[str] = []

    @tc.may_cancel
    async def op(*, token: tc.CancellationToken) -> None:
        ran.append("ran")  # pragma: no cover

    with trio.CancelScope() as outer:
        outer.cancel()
        await op()
    assert outer.cancelled_caught
    assert ran == []


async def test_never_awaited_runs_nothing_and_awaiting_twice_fails() -> None:
    ran: list[str] = []

    @tc.may_cancel
    async def op(*, token: tc.CancellationToken) -> int:
        ran.append("ran")
        await trio.lowlevel.checkpoint()
        return 1

    pending = op()
    assert ran == []
    assert "unstarted" in repr(pending)
    assert await pending == 1
    with pytest.raises(RuntimeError, match="awaited only once"):
        await pending
    with pytest.raises(RuntimeError, match="already awaited"):
        pending.may_cancel_with(tc.CancellationToken())
    bound = op().may_cancel_with(tc.CancellationToken())
    assert "bound" in repr(bound)
    with pytest.raises(RuntimeError, match="already called"):
        bound.may_cancel_with(tc.CancellationToken())
    assert ran == ["ran"]


async def test_bad_input_is_refused_at_the_call() -> None:
    async def no_token(x: int) -> int:  # pragma: no cover
        return x

    async def kwargs_ok(*, token: tc.CancellationToken) -> object:
        return token

    with pytest.raises(TypeError, match="keyword argument 'token'"):
        tc.may_cancel(no_token)
    with pytest.raises(TypeError, match="decorates an async function"):
        tc.may_cancel(42)  # type: ignore[call-overload]
    wrapped = tc.may_cancel(kwargs_ok)
    assert isinstance(await wrapped(), tc.CancellationToken)
    with pytest.raises(TypeError, match="may_cancel_with"):
        wrapped(token=tc.CancellationToken())
    with pytest.raises(TypeError, match="takes a CancellationToken"):
        wrapped().may_cancel_with("soon")  # type: ignore[arg-type]
    assert wrapped.__name__ == "kwargs_ok"


async def test_awaiting_a_quick_maycancel_is_a_schedule_point() -> None:
    @tc.may_cancel
    async def quick(*, token: tc.CancellationToken) -> int:  # noqa: ASYNC910 - the case under test
        return 1

    with trio.testing.assert_checkpoints():
        assert await quick() == 1


async def test_value_returned_as_the_caller_is_cancelled_is_not_lost() -> None:
    @tc.may_cancel
    async def quick(scope: trio.CancelScope, *, token: tc.CancellationToken) -> int:  # noqa: ASYNC910
        scope.cancel()  # the caller is cancelled while the function returns, before a checkpoint
        return 7

    with trio.CancelScope() as cs:
        got = await quick(cs)  # the final schedule point is shielded: the value is kept
        await trio.lowlevel.checkpoint()  # the cancellation is delivered here instead
    assert got == 7
    assert cs.cancelled_caught
