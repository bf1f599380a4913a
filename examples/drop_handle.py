"""E13: dropping a task's handle does not cancel the task.

Source: the blog post on tokio task cancellation patterns.

The Rust code spawns a task that sleeps, then prints "Task completed"; main drops the
``JoinHandle`` after 100 ms, either with ``drop(handle)`` or by letting it go out of scope.
Dropping a ``JoinHandle`` detaches the task: it is not cancelled, only no longer awaitable
(``abort()`` is what cancels).

Trio version: ``tc.spawn`` returns a ``TaskHandle``; deleting every reference to it (``del``,
or returning from the function that held it) leaves the task running in its nursery, which
waits for it as nurseries always do. The task still prints "Task completed". (The Rust task
sleeps 10 s and the program exits before it ends; here it sleeps 1 s so the completion shows.)
"""

from __future__ import annotations

import gc

import trio

import trio_cancel as tc


async def job(label: str) -> None:
    await trio.sleep(1)
    print(f"Task completed ({label})")


def start_and_forget(nursery: trio.Nursery) -> None:
    tc.spawn(nursery, job, "handle went out of scope")  # the handle dies with this frame


async def main() -> None:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, job, "handle dropped with del")
        start_and_forget(nursery)
        await trio.sleep(0.1)
        del handle
        gc.collect()
        print("both handles are gone; the tasks are still running")
    elapsed = trio.current_time() - start
    print(f"nursery joined after {elapsed:.1f} s: dropping a handle cancels nothing")


if __name__ == "__main__":
    trio.run(main)
