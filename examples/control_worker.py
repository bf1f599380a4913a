"""E05: a worker driven by a data channel and a control channel (Shutdown, Pause, Resume).

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

The Rust worker loops on ``select!`` over a control receiver (``Shutdown`` breaks the loop,
``Pause``/``Resume`` flip a flag) and a data receiver whose branch is guarded by ``if !paused``,
so no data is taken while paused.

Trio version: the ``mpsc`` channels are Trio's memory channels, used as they are; the loop is
``tc.select`` with the data branch given as ``None`` while paused (the ``if`` precondition).
When both branches complete in the same round, the loser's value arrives in
``result.also_completed`` and is handled too, so no message is lost. The pause flag is a
``trio_util.AsyncBool``: the worker reads it as a plain bool, and ``main`` awaits its change
(``await paused.wait_value(True)``) instead of sleeping until the worker has probably paused.
"""

from __future__ import annotations

import enum

import trio
import trio_util

import trio_cancel as tc


class ControlMsg(enum.Enum):
    SHUTDOWN = "shutdown"
    PAUSE = "pause"
    RESUME = "resume"


async def worker(
    data_rx: trio.MemoryReceiveChannel[str],
    ctrl_rx: trio.MemoryReceiveChannel[ControlMsg],
    paused: trio_util.AsyncBool,
) -> None:
    while True:
        result = await tc.select(
            ctrl=ctrl_rx.receive,
            data=None if paused.value else data_rx.receive,
        )
        if "data" in result.also_completed:  # taken in the same round: process it, never drop it
            print(f"Processing: {result.also_completed['data']}")
        if result.name == "data":
            print(f"Processing: {result.value}")
        msg = result.value if result.name == "ctrl" else result.also_completed.get("ctrl")
        if msg is ControlMsg.SHUTDOWN:
            print("Worker shutting down")
            return
        if msg is ControlMsg.PAUSE:
            paused.value = True
            print("Worker paused")
        elif msg is ControlMsg.RESUME:
            paused.value = False
            print("Worker resumed")


async def main() -> None:
    data_tx, data_rx = trio.open_memory_channel[str](10)
    ctrl_tx, ctrl_rx = trio.open_memory_channel[ControlMsg](10)
    # The pause flag, observable from outside: main waits for the worker to be paused rather
    # than sleeping and hoping (trio_util.AsyncBool: a bool whose changes can be awaited).
    paused = trio_util.AsyncBool(False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker, data_rx, ctrl_rx, paused)
        for item in ("a", "b"):
            await data_tx.send(item)
        await trio.sleep(0.05)
        await ctrl_tx.send(ControlMsg.PAUSE)
        await paused.wait_value(True)
        for item in ("c", "d"):
            await data_tx.send(item)
        print("main: sent c and d while paused")
        await trio.sleep(0.2)
        print(f"main: after 200 ms, {data_rx.statistics().current_buffer_used} items still wait")
        await ctrl_tx.send(ControlMsg.RESUME)
        await trio.sleep(0.05)
        await ctrl_tx.send(ControlMsg.SHUTDOWN)


if __name__ == "__main__":
    trio.run(main)
