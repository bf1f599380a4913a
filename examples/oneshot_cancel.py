"""E15: a oneshot channel as a cancel signal, raced against a 10 s sleep.

Source: the blog post on tokio task cancellation patterns.

The Rust task runs ``select!`` between the oneshot receiver (print "Task is cancelling...") and
a 10 s sleep (print "Task completed normally"), then prints "Task is cleaning up". Main sends
``()`` after 100 ms and awaits the task. In Rust the ``_ = rx`` branch also fires when the
sender is dropped without sending.

Trio version: ``tc.open_oneshot_channel()`` and ``tc.select``; the task is started with
``tc.spawn`` and joined. Closing the sender without sending ends the channel
(``trio.EndOfChannel``), which the signal branch treats as a signal too, as ``_ = rx`` does.
"""

from __future__ import annotations

import functools

import trio

import trio_cancel as tc


async def signalled(recv: tc.OneshotReceiver[None]) -> str:
    try:
        await recv.receive()
    except trio.EndOfChannel:
        return "sender closed without sending"
    return "signal received"


async def task(recv: tc.OneshotReceiver[None]) -> None:
    result = await tc.select(
        signal=functools.partial(signalled, recv), sleep=functools.partial(trio.sleep, 10)
    )
    if result.name == "signal":
        print(f"Task is cancelling... ({result.value})")
    else:
        print("Task completed normally")
    print("Task is cleaning up")


async def main() -> None:
    async with trio.open_nursery() as nursery:
        send, recv = tc.open_oneshot_channel[None]()
        handle = tc.spawn(nursery, task, recv)
        await trio.sleep(0.1)
        send.send(None)
        await handle.join()

        print("--- dropping the sender is a signal too")
        send2, recv2 = tc.open_oneshot_channel[None]()
        handle = tc.spawn(nursery, task, recv2)
        await trio.sleep(0.1)
        send2.close()
        await handle.join()


if __name__ == "__main__":
    trio.run(main)
