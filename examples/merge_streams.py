"""E28: interleaving a socket and a channel: ``select!`` in a loop loses items, ``merge`` does not.

Source: the async Rust book's chapter on cancellation (what happens when a pending future is
dropped).

The article warns that ``select!`` in a loop is only safe if every branch is cancel-safe: when
one branch wins, the others are dropped, and a branch that had already taken an item loses it.
It recommends ``StreamExt::merge`` to interleave, say, a socket and a channel.

Trio version: a real TCP connection on 127.0.0.1 delivers lines; a Trio memory channel delivers
messages. The naive loop calls ``tc.select`` on both each round and keeps only the winner,
ignoring ``also_completed``: when both sources had data ready, both receives completed and one
item is dropped. ``tc.merge`` keeps every completed item for its next iteration, so nothing is
lost. The same counts are printed for both.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import trio

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

N = 20
END = object()


class LineChannel(trio.abc.ReceiveChannel[str]):
    """Lines from a byte stream. Cancel-safe: bytes already read stay in the buffer."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def receive(self) -> str:
        await trio.lowlevel.checkpoint_if_cancelled()
        while b"\n" not in self._buffer:
            data = await self.stream.receive_some()
            if not data:
                raise trio.EndOfChannel
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        await trio.lowlevel.cancel_shielded_checkpoint()
        return line.decode()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def serve_lines(stream: trio.SocketStream) -> None:
    async with stream:
        await stream.send_all(b"".join(f"sock-{i}\n".encode() for i in range(N)))


async def open_sources(
    nursery: trio.Nursery,
) -> tuple[LineChannel, trio.MemoryReceiveChannel[str]]:
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, serve_lines, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    lines = LineChannel(await trio.open_tcp_stream("127.0.0.1", port))
    send, recv = trio.open_memory_channel[str](N)
    async with send:
        for i in range(N):
            send.send_nowait(f"chan-{i}")
    # Wait until the server's bytes have arrived: both sources then have data ready.
    await trio.lowlevel.wait_readable(lines.stream.socket)
    await trio.sleep(0.01)
    return lines, recv


async def or_end(receive: Callable[[], Awaitable[str]]) -> object:
    try:
        return await receive()
    except trio.EndOfChannel:
        return END


async def naive_select_loop() -> list[str]:
    received: list[str] = []
    async with trio.open_nursery() as nursery:
        lines, chan = await open_sources(nursery)
        open_: dict[str, Callable[[], Awaitable[object]]] = {
            "sock": functools.partial(or_end, lines.receive),
            "chan": functools.partial(or_end, chan.receive),
        }
        while open_:
            result: tc.Selected[object] = await tc.select(
                **open_
            )  # the bug: result.also_completed is ignored
            if result.value is END:
                del open_[result.name]
            else:
                received.append(str(result.value))
        nursery.cancel_scope.cancel()
    return received


async def merged() -> list[str]:
    async with trio.open_nursery() as nursery:
        lines, chan = await open_sources(nursery)
        received = [item async for item in tc.merge(lines, chan)]
        nursery.cancel_scope.cancel()
    return received


async def main() -> None:
    total = 2 * N
    naive = await naive_select_loop()
    print(f"naive select loop: received {len(naive)} of {total} items, {total - len(naive)} lost")
    good = await merged()
    print(f"tc.merge:          received {len(good)} of {total} items, {total - len(good)} lost")
    socket_lines = [item for item in good if item.startswith("sock-")]
    assert socket_lines == [f"sock-{i}" for i in range(N)], "each source keeps its order"
    print("tc.merge kept each source's order and interleaved them:", ", ".join(good[:6]), "...")


if __name__ == "__main__":
    trio.run(main)
