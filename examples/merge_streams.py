"""E28: a socket and a channel in a ``select`` loop: a line reader with a local buffer loses data.

Source: the async Rust book's chapter on cancellation (what happens when a pending future is
dropped, and which futures are cancel-safe).

The article's case: a loop runs ``select!`` over a socket read and a channel receive. The socket
branch reads a line, keeping the bytes of a partial line in a local variable while it waits for
the rest. When a channel message arrives first, ``select!`` drops the socket branch, and the
bytes it had already taken from the socket go with its local variable: the next read starts in
the middle of a line. The article's advice: only put cancel-safe operations in a ``select!``
loop (keep the buffer in the reader object, not in the future), or interleave the two sources
with ``StreamExt::merge``.

Trio version, on a real TCP connection on 127.0.0.1 and a Trio memory channel: the server sends
each line in two pieces and sends a channel message between them, once the reader holds the
first piece (it waits until every task is blocked, so the run is the same every time; in
production the timing does this). Three consumers:

1. ``tc.select`` in a loop over ``read_line_naive`` (partial line in a local variable): each time
   the channel wins, the socket branch is cancelled holding ``sock-`` and the line is lost; the
   next read returns only its tail.
2. the same loop over ``LineChannel.receive``, which keeps its buffer in the object: cancelled
   just as often, it loses nothing.
3. ``tc.merge(lines, channel)``: every item, each source in its order.

Then ``cancel_at_each_checkpoint`` proves it without a server: it cancels one
``read_line_naive`` call at each of its checkpoints, checks that no byte went missing, and
names the checkpoint and the line of the script where the first loss happens;
``LineChannel`` passes the same sweep at every checkpoint.
"""

from __future__ import annotations

import functools
import linecache
from typing import TYPE_CHECKING

import trio
import trio.testing

import trio_cancel as tc
from trio_cancel.testing import CancelSafetyError, cancel_at_each_checkpoint

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

N = 5
END = "<end>"


async def read_line_naive(stream: trio.abc.ReceiveStream) -> str:
    """Read one line. NOT cancel-safe: the partial line lives in a local variable."""
    line = bytearray()
    while True:
        byte = await stream.receive_some(1)  # a cancellation here drops `line`
        if not byte:
            raise trio.EndOfChannel
        if byte == b"\n":
            return line.decode()
        line += byte


class LineChannel(trio.abc.ReceiveChannel[str]):
    """Lines from a byte stream. Cancel-safe: bytes already read stay in the object's buffer."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def receive(self) -> str:
        await trio.lowlevel.checkpoint_if_cancelled()
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some()
            if not data:
                raise trio.EndOfChannel
            self.buffer += data
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer[:] = rest
        await trio.lowlevel.cancel_shielded_checkpoint()
        return line.decode()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def serve_lines(
    feed: trio.MemorySendChannel[str], stream: trio.abc.HalfCloseableStream
) -> None:
    """Send ``sock-<i>`` in two pieces, with the channel message ``chan-<i>`` in between."""
    async with stream, feed:
        for i in range(N):
            await stream.send_all(b"sock-")
            await trio.testing.wait_all_tasks_blocked()  # the reader holds "sock-" and waits
            await feed.send(f"chan-{i}")
            await trio.testing.wait_all_tasks_blocked()  # the channel item was taken
            await stream.send_all(f"{i}\n".encode())


async def or_end(receive: Callable[[], Awaitable[str]]) -> str:
    try:
        return await receive()
    except trio.EndOfChannel:
        return END


async def run(
    consumer: Callable[[trio.SocketStream, trio.MemoryReceiveChannel[str]], Awaitable[list[str]]],
) -> list[str]:
    async with trio.open_nursery() as nursery:
        send, recv = trio.open_memory_channel[str](0)
        listeners = await nursery.start(
            functools.partial(
                trio.serve_tcp, functools.partial(serve_lines, send), 0, host="127.0.0.1"
            )
        )
        port = listeners[0].socket.getsockname()[1]
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream, recv:
            received = await consumer(stream, recv)
        nursery.cancel_scope.cancel()
    return received


async def select_loop(
    read_line: Callable[[], Awaitable[str]], chan: trio.MemoryReceiveChannel[str]
) -> list[str]:
    received: list[str] = []
    branches = {
        "sock": functools.partial(or_end, read_line),
        "chan": functools.partial(or_end, chan.receive),
    }
    while branches:
        result = await tc.select(**branches)
        # Everything that completed counts, also_completed included: what is lost below is
        # lost inside the cancelled branch, not by this loop.
        for name, value in [(result.name, result.value), *result.also_completed.items()]:
            if value == END:
                del branches[name]
            else:
                received.append(value)
    return received


async def naive_loop(stream: trio.SocketStream, chan: trio.MemoryReceiveChannel[str]) -> list[str]:
    return await select_loop(functools.partial(read_line_naive, stream), chan)


async def buffered_loop(
    stream: trio.SocketStream, chan: trio.MemoryReceiveChannel[str]
) -> list[str]:
    return await select_loop(LineChannel(stream).receive, chan)


async def merged(stream: trio.SocketStream, chan: trio.MemoryReceiveChannel[str]) -> list[str]:
    return [item async for item in tc.merge(LineChannel(stream), chan)]


def summary(name: str, received: list[str]) -> None:
    lines = [item for item in received if not item.startswith("chan-")]
    intact = [line for line in lines if line.startswith("sock-")]
    messages = len(received) - len(lines)
    print(f"{name}: {messages} of {N} channel messages, {len(intact)} of {N} socket lines intact")
    if len(intact) < N:
        print(f"  the socket lines it got: {lines} (each line's first bytes were lost)")


LINE = b"sock-0\n"


class OneLine:
    """Fresh state for each run of the sweep: a stream holding one line, and what was read."""

    def __init__(self, reader: str) -> None:
        self.reader = reader
        self.recv = trio.testing.MemoryReceiveStream()
        self.channel = LineChannel(self.recv)
        self.result = b""

    async def read(self) -> None:
        self.recv = trio.testing.MemoryReceiveStream()
        self.recv.put_data(LINE)  # the line has arrived: no await before the read
        self.channel = LineChannel(self.recv)
        self.result = b""
        if self.reader == "naive":
            self.result = (await read_line_naive(self.recv)).encode() + b"\n"
        else:
            self.result = (await self.channel.receive()).encode() + b"\n"

    async def nothing_lost(self) -> None:
        """What the read returned, what a cancel-safe reader kept and what is still in the
        stream must add up to the line sent."""
        self.recv.put_eof()
        rest = b""
        while data := await self.recv.receive_some():
            rest += data
        kept = bytes(self.channel.buffer) if self.reader == "buffered" else b""
        got = self.result + kept + rest
        assert got == LINE, f"{LINE!r} sent, only {got!r} left: the rest was lost"


async def main() -> None:
    summary("select loop, local-buffer reader", await run(naive_loop))
    summary("select loop, LineChannel", await run(buffered_loop))
    good = await run(merged)
    summary("tc.merge", good)
    print("  in order:", ", ".join(good))

    naive = OneLine("naive")
    try:
        await cancel_at_each_checkpoint(naive.read, check=naive.nothing_lost)
    except CancelSafetyError as exc:
        where = exc.location.rsplit("/", 1)[-1]
        print(
            f"cancel_at_each_checkpoint(read_line_naive): NOT cancel-safe at checkpoint {exc.point}"
        )
        path, _, rest = exc.location.partition(":")
        source = linecache.getline(path, int(rest.split()[0])).strip()
        print(f"  cancelled at {where}: {source}")
        print(f"  check: {exc.__cause__}")
    buffered = OneLine("buffered")
    result = await cancel_at_each_checkpoint(buffered.read, check=buffered.nothing_lost)
    name = "cancel_at_each_checkpoint(LineChannel.receive)"
    print(f"{name}: cancel-safe at all {result.points} checkpoints")


if __name__ == "__main__":
    trio.run(main)
