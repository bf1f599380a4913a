"""E08: a task pool whose ``shutdown()`` stops every pooled task and waits for all of them.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

``TaskPool`` keeps the ``JoinHandle`` of every spawned task and one shared ``Notify``; each task
runs ``select!`` between ``shutdown.notified()`` and its future. ``shutdown()`` calls
``notify_waiters()`` and awaits every handle.

Trio version: ``tc.Notify`` and ``tc.select`` inside tasks started with ``tc.spawn``;
``shutdown()`` joins every handle. One thing is fixed on the way: ``notify_waiters()`` only wakes
tasks that are waiting at that moment, so a task that had not started yet would miss it (in the
Rust code too). The pool sets a ``closing`` flag before notifying, and a task checks it before it
starts waiting; Trio runs one task at a time, so nothing falls between the check and the wait.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import trio

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


class TaskPool:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._shutdown = tc.Notify()
        self._closing = False
        self.handles: list[tc.TaskHandle[str]] = []

    def spawn(self, name: str, work: Callable[[], Awaitable[object]]) -> None:
        async def pooled() -> str:
            if self._closing:
                return "never started"
            result = await tc.select(shutdown=self._shutdown.wait, work=work)
            return "stopped by shutdown" if result.name == "shutdown" else "finished its work"

        self.handles.append(tc.spawn(self._nursery, pooled, name=name))

    async def shutdown(self) -> None:
        self._closing = True
        self._shutdown.notify_waiters()
        for handle in self.handles:
            outcome = await handle.join()
            assert isinstance(outcome, tc.Completed)
            print(f"{handle.name}: {outcome.value}")


async def main() -> None:
    async with trio.open_nursery() as nursery:
        pool = TaskPool(nursery)
        pool.spawn("quick", functools.partial(trio.sleep, 0.01))
        for i in range(4):
            pool.spawn(f"worker-{i}", functools.partial(trio.sleep, 3600))
        await trio.sleep(0.1)
        pool.spawn("late", functools.partial(trio.sleep, 3600))  # not started yet at shutdown
        start = trio.current_time()
        await pool.shutdown()
        print(f"shutdown returned after all {len(pool.handles)} tasks ended")
        print(f"({(trio.current_time() - start) * 1000:.0f} ms; the 3600 s sleeps were cut short)")


if __name__ == "__main__":
    trio.run(main)
