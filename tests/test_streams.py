"""Tests of send_all_from / receive_into over a real TCP connection on 127.0.0.1."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    try:
        yield client, server
    finally:
        await client.aclose()
        await server.aclose()
        await listener.aclose()


async def _drain(stream: trio.SocketStream) -> int:
    total = 0
    while data := await stream.receive_some():
        total += len(data)
    return total


async def test_cancelled_send_reports_exactly_what_went_out(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    total = 64 * 1024 * 1024  # more than the kernel buffers: the send blocks on the slow reader
    buf = bytearray(total)
    token = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_when_blocked, token)
        with token.cancel_scope() as cs:
            await tc.send_all_from(client, buf)
    assert cs.cancelled_caught
    sent = total - len(buf)
    assert 0 < sent < total
    # The reader now drains the connection: it receives exactly `sent` bytes.
    await client.send_eof()
    assert await _drain(server) == sent
    # And the rest can still be sent on another connection; here, the count was exact.


async def _cancel_when_blocked(token: tc.CancellationToken) -> None:
    await trio.testing.wait_all_tasks_blocked(0.05)  # the sender is stuck on a full socket
    token.cancel("client went away")


async def test_send_all_from_sends_everything_and_resumes_after_a_cancel(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    total = 16 * 1024 * 1024
    buf = bytearray(i % 251 for i in range(total))
    expected = bytes(buf)
    received = bytearray()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_blocked_scope, cs)
            await tc.send_all_from(client, buf)
        assert 0 < len(buf) < total
        nursery.start_soon(tc.receive_into, server, received, total)
        await tc.send_all_from(client, buf)  # carries on where the cancellation left it
        assert buf == bytearray()
    assert received == expected  # nothing lost, nothing sent twice


async def _cancel_when_blocked_scope(cs: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked(0.05)
    cs.cancel()


async def test_receive_into_keeps_what_arrived_when_the_token_fires(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    token = tc.CancellationToken()
    buf = bytearray()
    await client.send_all(b"x" * 1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_when_blocked, token)
        with token.cancel_scope() as cs:
            await tc.receive_into(server, buf, 5000)
    assert cs.cancelled_caught
    assert buf == b"x" * 1000  # exactly what arrived before the token fired
    await client.send_all(b"y" * 4500)
    await tc.receive_into(server, buf, 5000)  # carries on to the target size
    assert buf == b"x" * 1000 + b"y" * 4000
    await client.send_eof()
    rest = bytearray()
    await tc.receive_into(server, rest, 10_000)  # stops at the end of the stream
    assert rest == b"y" * 500


async def test_checkpoints_and_bad_input(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    with trio.testing.assert_checkpoints():
        await tc.send_all_from(client, bytearray())
    with trio.testing.assert_checkpoints():
        await tc.receive_into(server, bytearray(b"ab"), 2)
    with pytest.raises(TypeError, match="bytearray"):
        await tc.send_all_from(client, b"immutable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SocketStream"):
        await tc.send_all_from(trio.testing.MemorySendStream(), bytearray(b"x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        await tc.receive_into(server, bytearray(), -1)
    with trio.CancelScope() as cs:
        cs.cancel()
        buf = bytearray(b"abc")
        await tc.send_all_from(client, buf)
    assert buf == b"abc"  # cancelled before the first send: nothing went out
