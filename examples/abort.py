"""E14: ``handle.abort()`` cancels a running task; its print never happens.

Source: the blog post on tokio task cancellation patterns.

The Rust code spawns a task that sleeps 1 s then prints "Task completed", calls
``handle.abort()`` after 100 ms, waits 2 s and prints "Task was cancelled": the task's print
never appears.

Trio version: ``tc.spawn`` gives a ``TaskHandle`` whose ``abort(reason)`` cancels the task's own
cancel scope; ``await handle.join()`` then reports ``Aborted(reason)`` (tokio's
``JoinError::is_cancelled()``). Main waits past the task's 1 s mark to show that nothing is
printed late.
"""

from __future__ import annotations

import trio

import trio_cancel as tc


async def job() -> None:
    await trio.sleep(1)
    print("Task completed")


async def main() -> None:
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, job)
        await trio.sleep(0.1)
        handle.abort("aborted by main")
        await trio.sleep(1.1)
        print("Task was cancelled")
        outcome = await handle.join()
        print(f"join() -> {outcome!r}")
        assert outcome == tc.Aborted("aborted by main")


if __name__ == "__main__":
    trio.run(main)
