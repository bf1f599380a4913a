"""E18: one CancellationToken shared by two tasks; a child token cancelled on its own.

Source: the blog post on tokio task cancellation patterns.

The Rust code clones one token into two spawned tasks; each loops on ``select!`` between
``token.cancelled()`` (print "Task N is cancelling...") and a 10 s sleep (print "Task N
completed normally"), then prints "Task N is cleaning up". Main sleeps 100 ms, cancels the token
and joins both tasks. The seed adds that cancelling a ``child_token()``, unlike a clone, does
not cancel its parent.

Trio version: Python shares the token object itself (no ``clone()``); the ``select!`` is
``with token.cancel_scope() as cs:`` around the 10 s sleep, and ``cs.cancelled_caught`` tells
which branch won; ``tokio::join!`` is the nursery's exit.
"""

from __future__ import annotations

import trio

import trio_cancel as tc


async def task(n: int, token: tc.CancellationToken) -> None:
    with token.cancel_scope() as cs:
        await trio.sleep(10)
        print(f"Task {n} completed normally")
    if cs.cancelled_caught:
        print(f"Task {n} is cancelling...")
    print(f"Task {n} is cleaning up")


async def main() -> None:
    token = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task, 1, token)
        nursery.start_soon(task, 2, token)
        await trio.sleep(0.1)
        token.cancel()

    print("--- child_token: cancelling a child leaves its parent alone")
    parent = tc.CancellationToken()
    child = parent.child_token()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task, 3, child)
        await trio.sleep(0.1)
        child.cancel("child only")
    print(f"child cancelled: {child.is_cancelled()}; parent cancelled: {parent.is_cancelled()}")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task, 4, parent)
        await trio.sleep(0.1)
        print("Task 4 still running under the parent token")
        parent.cancel("parent")


if __name__ == "__main__":
    trio.run(main)
