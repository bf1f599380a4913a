"""E22: a child future that is never polled does nothing; ``race`` cancels the loser.

Source: the essay "Perspectives on Async Cancellation".

``parent()`` creates ``cancel_me()`` and drops it without ever polling it: its body never runs.
``parent2()`` races ``cancel_me()`` against ``or_maybe_cancel_me()``: the first to finish wins
and the other is dropped (cancelled).

Trio version: calling an async function only creates a coroutine; closing it unawaited runs
none of its body (the counterpart of dropping an unpolled future). ``tc.select`` is the race:
the loser is cancelled at its checkpoint, runs its ``finally``, and has finished before
``select`` returns.
"""

from __future__ import annotations

import trio

import trio_cancel as tc


async def cancel_me() -> str:
    print("cancel_me: started")
    try:
        await trio.sleep(0.2)
        print("cancel_me: finished")
        return "cancel_me"
    finally:
        print("cancel_me: cleaned up")


async def or_maybe_cancel_me() -> str:
    print("or_maybe_cancel_me: started")
    try:
        await trio.sleep(0.05)
        print("or_maybe_cancel_me: finished")
        return "or_maybe_cancel_me"
    finally:
        print("or_maybe_cancel_me: cleaned up")


async def parent() -> None:
    coro = cancel_me()  # created, never awaited
    coro.close()  # dropped: none of its body ran
    print("parent: dropped an un-polled cancel_me(); it printed nothing")


async def parent2() -> None:
    result = await tc.select(a=cancel_me, b=or_maybe_cancel_me)
    print(f"parent2: race won by {result.value}; the loser had finished before this line")


async def main() -> None:
    await parent()
    await parent2()


if __name__ == "__main__":
    trio.run(main)
