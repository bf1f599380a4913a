"""E24: spawn, cancel, join, and the three ways a task ends.

Source: the essay "Perspectives on Async Cancellation".

The article imagines a runtime where ``spawn`` returns a task, ``task.cancel()`` requests
cancellation, and ``task.join().await`` reports how it ended: ``Completed(return_value)``,
``Error(err)`` (a panic) or ``Canceled(reason)``.

Trio version: ``tc.spawn`` and ``TaskHandle.abort(reason)`` / ``join()``; the three outcomes
are ``tc.Completed(value)``, ``tc.Failed(error)`` and ``tc.Aborted(reason)``, matched with
``match`` and printed under the library's names (the article's ``Error`` is ``Failed``, its
``Canceled`` is ``Aborted``). A failing task does not take its siblings down: its exception
is its outcome.
"""

from __future__ import annotations

import trio

import trio_cancel as tc


async def compute() -> int:
    await trio.sleep(0.05)
    return 42


async def crash() -> int:
    await trio.sleep(0.05)
    raise ValueError("disk on fire")


async def long_job() -> int:
    await trio.sleep(3600)
    return 0


def describe(name: str, outcome: tc.Outcome[int]) -> str:
    match outcome:
        case tc.Completed(value):
            return f"{name}: Completed({value})"
        case tc.Failed(error):
            return f"{name}: Failed({error!r})"
        case tc.Aborted(reason):
            return f"{name}: Aborted({reason!r})"


async def main() -> None:
    async with trio.open_nursery() as nursery:
        tasks = {
            "compute": tc.spawn(nursery, compute),
            "crash": tc.spawn(nursery, crash),
            "long_job": tc.spawn(nursery, long_job),
        }
        await trio.sleep(0.1)
        tasks["long_job"].abort("user pressed stop")
        for name, task in tasks.items():
            print(describe(name, await task.join()))


if __name__ == "__main__":
    trio.run(main)
