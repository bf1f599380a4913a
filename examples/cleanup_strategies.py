"""E27: three ways to get async cleanup done from an exit that cannot await.

Source: the async Rust book's chapter on cancellation (what happens when a pending future is
dropped).

Rust's ``Drop`` cannot await, so async clean-up is scheduled from it: by spawning a task on the
runtime, by enqueueing a message on a channel, or by spawning a background thread. A synchronous
``__exit__`` (or a ``__del__``, or a callback such as ``on_cancel``) has the same limit in
Python. The Trio counterparts:

1. a service nursery that outlives the resource: the exit calls ``nursery.start_soon(cleanup)``;
2. a cleanup channel with one worker task: the exit calls ``send_nowait`` (never blocks);
3. a background thread, for blocking cleanup: the exit starts it; the program joins it.

Each resource below is used in a block that is cancelled mid-await, and each cleanup is shown
completing. (Where the exit *can* await, ``tc.async_guard`` runs the cleanup in place: E02.)
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Self

import trio

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

done: list[str] = []


async def async_cleanup(name: str) -> None:
    await trio.sleep(0.02)  # a goodbye message, a remote unlock...
    done.append(name)
    print(f"  {name}: async cleanup finished")


def blocking_cleanup(name: str) -> None:
    time.sleep(0.02)  # a blocking client library
    done.append(name)
    print(f"  {name}: blocking cleanup finished in a thread")


class Resource:
    """Its ``__exit__`` cannot await; it hands the cleanup to ``schedule``."""

    def __init__(self, name: str, schedule: Callable[[str], None]) -> None:
        self.name = name
        self._schedule = schedule

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        how = "cancelled" if isinstance(exc, trio.Cancelled) else "normal"
        print(f"  {self.name}: exit ({how}), cleanup scheduled")
        self._schedule(self.name)


async def use(resource: Resource) -> None:
    with trio.move_on_after(0.01), resource:
        await trio.sleep(10)


async def cleanup_worker(receive: trio.MemoryReceiveChannel[str]) -> None:
    async with receive:
        async for name in receive:
            await async_cleanup(name)


async def main() -> None:
    threads: list[threading.Thread] = []

    def start_thread(name: str) -> None:
        thread = threading.Thread(target=blocking_cleanup, args=(name,))
        thread.start()
        threads.append(thread)

    async with trio.open_nursery() as service:  # outlives every resource below
        print("1. spawn a task in a service nursery:")
        await use(Resource("spawned", lambda name: service.start_soon(async_cleanup, name)))

        print("2. enqueue on a cleanup channel:")
        send, receive = trio.open_memory_channel[str](100)
        service.start_soon(cleanup_worker, receive)
        async with send:
            await use(Resource("queued", send.send_nowait))

        print("3. a background thread:")
        await use(Resource("threaded", start_thread))
        for thread in threads:
            await trio.to_thread.run_sync(thread.join)
    print(f"all three completed: {sorted(done) == ['queued', 'spawned', 'threaded']}")


if __name__ == "__main__":
    trio.run(main)
