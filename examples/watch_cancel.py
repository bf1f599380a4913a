"""E17: a watch channel as a cancel flag; and the late-subscriber pitfall.

Source: the blog post on tokio task cancellation patterns.

``watch::channel(false)``; each of two tasks loops on ``select!`` between ``rx.changed()`` (then
checks ``*rx.borrow()``: true means cancel) and a 10 s sleep, then cleans up. Main sends
``true`` after 100 ms. The seed warns that a receiver only sees the latest value: a task that
starts after the value was sent may miss it and never cancel.

Trio version: ``tc.open_watch_channel(False)``, ``recv.wait_changed()`` and ``recv.borrow()``
inside ``tc.select``. Then the pitfall, exactly: a receiver subscribed after ``send(True)`` has
already "seen" it, so ``wait_changed()`` waits for a change that never comes (bounded here by
``trio.move_on_after``). The fix is ``wait_for``, which checks the current value first.
"""

from __future__ import annotations

import functools

import trio

import trio_cancel as tc


async def changed_to_true(recv: tc.WatchReceiver[bool]) -> None:
    while True:
        await recv.wait_changed()
        if recv.borrow():
            return


async def task(n: int, recv: tc.WatchReceiver[bool]) -> None:
    result = await tc.select(
        cancel=functools.partial(changed_to_true, recv), sleep=functools.partial(trio.sleep, 10)
    )
    if result.name == "cancel":
        print(f"Task {n} is cancelling...")
    else:
        print(f"Task {n} completed normally")
    print(f"Task {n} is cleaning up")


async def main() -> None:
    send, recv1 = tc.open_watch_channel(False)
    recv2 = send.subscribe()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task, 1, recv1)
        nursery.start_soon(task, 2, recv2)
        await trio.sleep(0.1)
        send.send(True)

    print("--- the late subscriber pitfall")
    late = send.subscribe()  # subscribed after send(True): it has already "seen" True
    with trio.move_on_after(0.2) as waited:
        await late.wait_changed()
    if waited.cancelled_caught:
        print("late subscriber: wait_changed() missed the cancel (gave up after 200 ms)")
    value = await late.wait_for(bool)
    print(f"late subscriber: wait_for() sees the current value at once: {value}")


if __name__ == "__main__":
    trio.run(main)
