"""E16: a broadcast channel cancelling two tasks, each of which cleans up.

Source: the blog post on tokio task cancellation patterns.

``broadcast::channel(1)`` gives ``tx`` and ``rx1``; ``rx2 = tx.subscribe()``. Each task runs
``select!`` between its receiver's ``recv()`` (print "Task N is cancelling...") and a 10 s
sleep, then prints "Task N is cleaning up". Main sends ``()`` after 100 ms and joins both.

Trio version: ``tc.open_broadcast_channel(1)``, ``send.subscribe()`` and ``tc.select``; the
nursery's exit is ``tokio::join!``. Every receiver sees the value, so both tasks stop.

Then the receive loop that survives lag: a receiver slower than its sender misses values (the
channel keeps only ``capacity`` of them); its ``receive()`` raises ``LaggedError`` once, with
the count, and the loop counts the loss and goes on instead of ending.
"""

from __future__ import annotations

import functools

import trio

import trio_cancel as tc


async def task(n: int, recv: tc.BroadcastReceiver[None]) -> None:
    async with recv:
        result = await tc.select(cancel=recv.receive, sleep=functools.partial(trio.sleep, 10))
    if result.name == "cancel":
        print(f"Task {n} is cancelling...")
    else:
        print(f"Task {n} completed normally")
    print(f"Task {n} is cleaning up")


async def slow_consumer(recv: tc.BroadcastReceiver[int]) -> None:
    seen: list[int] = []
    skipped = 0
    async with recv:
        while True:
            try:
                value = await recv.receive()
            except tc.LaggedError as lag:
                skipped += lag.skipped  # values this receiver will never see
                continue
            except trio.EndOfChannel:
                break
            seen.append(value)
            await trio.sleep(0.01)  # slower than the sender
    print(f"slow consumer: saw {len(seen)} of 100 values, skipped {skipped}, last {seen[-1]}")


async def main() -> None:
    send, recv1 = tc.open_broadcast_channel[None](1)
    recv2 = send.subscribe()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task, 1, recv1)
        nursery.start_soon(task, 2, recv2)
        await trio.sleep(0.1)
        print(f"sent to {send.send(None)} receivers")

    numbers, slow = tc.open_broadcast_channel[int](8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_consumer, slow)
        async with numbers:
            for i in range(1, 101):
                numbers.send(i)
                await trio.sleep(0.002)


if __name__ == "__main__":
    trio.run(main)
