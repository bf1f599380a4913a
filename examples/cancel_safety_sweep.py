"""Finding a cancel-safety bug mechanically with ``trio_cancel.testing.cancel_at_each_checkpoint``.

Not a seed example; it is the walk-through of the docs page "Testing cancel-safety", built on
the hazard the source articles warn about (``select!`` in a loop is only safe if every branch is
cancel-safe). A reader of length-prefixed frames takes the header, then waits for the body. In a
loop that races it against a heartbeat timer, the reader is cancelled whenever the heartbeat
wins: if that happens between header and body, the naive reader has already consumed the header
and drops it, and the stream is out of step from then on.

The sweep cancels one read at each of its checkpoints and checks after each run that no chunk
was lost. It finds the naive reader's bug (and says where), and passes the fixed reader, which
keeps a consumed header in its own state until the frame is complete.
"""

from __future__ import annotations

import functools

import attrs
import trio

import trio_cancel as tc
from trio_cancel.testing import CancelSafetyError, cancel_at_each_checkpoint


@attrs.define
class FrameReader:
    chunks: trio.MemoryReceiveChannel[str]
    pending_header: str | None = None

    async def read_frame_naive(self) -> tuple[str, str]:
        header = await self.chunks.receive()
        body = await self.chunks.receive()  # cancelled here: the header is gone
        return header, body

    async def read_frame(self) -> tuple[str, str]:
        if self.pending_header is None:
            self.pending_header = await self.chunks.receive()
        body = await self.chunks.receive()
        header, self.pending_header = self.pending_header, None
        return header, body


async def heartbeat_loop(reader: FrameReader, frames: list[tuple[str, str]]) -> None:
    """The loop the bug hides in: each round races the reader against a heartbeat."""
    while True:
        result = await tc.select(
            frame=reader.read_frame, heartbeat=functools.partial(trio.sleep, 0.01)
        )
        # A frame can complete in the same round as a winning heartbeat: it is then in
        # also_completed, and must not be dropped either.
        frame = result.value if result.name == "frame" else result.also_completed.get("frame")
        if frame is not None:
            frames.append(frame)
            if len(frames) == 2:
                return


@attrs.define
class Scenario:
    """One frame ("header", "body") in a channel; after the read, is every chunk accounted for?"""

    naive: bool
    reader: FrameReader | None = None
    frame: tuple[str, str] | None = None

    async def read_one(self) -> None:
        send, recv = trio.open_memory_channel[str](2)
        send.send_nowait("5")
        send.send_nowait("hello")
        self.reader = FrameReader(recv)
        self.frame = None
        read = self.reader.read_frame_naive if self.naive else self.reader.read_frame
        self.frame = await read()

    async def check(self) -> None:
        await trio.lowlevel.checkpoint()
        assert self.reader is not None
        chunks: list[str] = []
        if self.frame is not None:
            chunks += self.frame
        if self.reader.pending_header is not None:
            chunks.append(self.reader.pending_header)
        while True:
            try:
                chunks.append(self.reader.chunks.receive_nowait())
            except trio.WouldBlock:
                break
        assert chunks == ["5", "hello"], f"chunks accounted for: {chunks}"


async def main() -> None:
    naive = Scenario(naive=True)
    try:
        await cancel_at_each_checkpoint(naive.read_one, check=naive.check)
    except CancelSafetyError as exc:
        print(f"naive reader: NOT cancel-safe at checkpoint {exc.point}")
        print(f"  cancelled at {exc.location.rsplit('/', 1)[-1]}")
        print(f"  {exc.__cause__}")
    fixed = Scenario(naive=False)
    result = await cancel_at_each_checkpoint(fixed.read_one, check=fixed.check)
    print(f"fixed reader: cancel-safe at all {result.points} checkpoints")

    send, recv = trio.open_memory_channel[str](10)
    frames: list[tuple[str, str]] = []

    async def slow_sender() -> None:
        for chunk in ("5", "hello", "3", "abc"):
            await trio.sleep(0.015)  # heartbeats win in between chunks
            await send.send(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_sender)
        await heartbeat_loop(FrameReader(recv), frames)
    print(f"heartbeat loop with the fixed reader got {frames}")


if __name__ == "__main__":
    trio.run(main)
