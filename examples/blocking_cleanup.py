"""E12: a blocking write in a cleanup stalls every task; the fix moves it off the Trio thread.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

The anti-pattern is a ``Drop`` that calls the blocking ``std::fs::write``: the whole runtime
thread waits for the disk. The fix spawns ``tokio::fs::write``. In Trio the same mistake is a
blocking call in a cleanup (a ``finally``, an ``__exit__``, an ``async_guard`` cleanup); the fix
is ``await trio.to_thread.run_sync(...)``, which lets every other task run while the write
happens in a worker thread.

Measured: a heartbeat task ticks every 5 ms (``trio_util.periodic``); a worker is cancelled
and its cleanup writes a state file (a real file; a slow disk is simulated by a 200 ms pause
inside the write). The longest gap between two heartbeats shows the stall.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import trio
import trio_util

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

SLOW_DISK = 0.2


def write_state(path: Path, data: bytes) -> None:
    """Blocking: writes and syncs, on a disk that takes SLOW_DISK seconds."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        time.sleep(SLOW_DISK)  # the slow disk
        os.fsync(f.fileno())


async def blocking_cleanup(path: Path) -> None:
    write_state(path, b"state v1")  # wrong: blocks the Trio thread


async def threaded_cleanup(path: Path) -> None:
    await trio.to_thread.run_sync(write_state, path, b"state v2")


async def heartbeat(gaps: list[float]) -> None:
    # trio_util.periodic yields (elapsed, delta): delta is the gap since the previous beat.
    async for _, delta in trio_util.periodic(0.005):
        if delta is not None:
            gaps.append(delta)


async def run(cleanup: Callable[[Path], Awaitable[None]], path: Path) -> float:
    gaps: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat, gaps)
        await trio.sleep(0.05)
        with trio.move_on_after(0.02):
            async with tc.async_guard(cleanup, path, grace=5.0):
                await trio.sleep(10)  # the worker, cancelled
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return max(gaps)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.bin"
        stalled = await run(blocking_cleanup, path)
        print(f"blocking write in the cleanup: longest heartbeat gap {stalled * 1000:.0f} ms")
        print(f"  file written: {path.read_bytes()!r}")
        smooth = await run(threaded_cleanup, path)
        print(f"write in a worker thread:      longest heartbeat gap {smooth * 1000:.0f} ms")
        print(f"  file written: {path.read_bytes()!r}")
        print(f"the blocking version stalled every task: {stalled >= SLOW_DISK > smooth}")


if __name__ == "__main__":
    trio.run(main)
