"""E20: ``cancel_me()`` prints "1", awaits, prints "2"; cancelled at the await.

Source: the essay "Perspectives on Async Cancellation".

The Rust ``cancel_me`` prints "1", awaits ``some_other_async_fn()`` and prints "2". Dropped
while pending at that ``.await``, it printed "1" and never "2". A future can also be dropped
before its first poll, and then none of its body runs at all.

Trio version: the ``.await`` is a checkpoint where a ``trio.Cancelled`` lands; here a
``trio.move_on_after`` cancels it. The drop-before-first-poll case maps onto
``token.run_until_cancelled`` with an already cancelled token: the function is never started.
One Trio difference is shown too: a coroutine entered inside an already-cancelled scope does
start, and runs up to its first checkpoint (it prints "1").
"""

from __future__ import annotations

import trio

import trio_cancel as tc


async def some_other_async_fn() -> None:
    await trio.sleep(1)


async def cancel_me() -> None:
    print("1")
    await some_other_async_fn()
    print("2")


async def main() -> None:
    print("--- cancelled while pending at the await")
    with trio.move_on_after(0.05) as scope:
        await cancel_me()
    print(f"cancelled at the await: {scope.cancelled_caught}; '2' was never printed")

    print("--- dropped before it ever ran (token already cancelled)")
    token = tc.CancellationToken()
    token.cancel("not needed any more")

    async def cancel_me_and_report() -> str:
        await cancel_me()
        return "finished"

    result = await token.run_until_cancelled(cancel_me_and_report)
    print(f"run_until_cancelled returned {result}; cancel_me never started")

    print("--- Trio difference: a cancelled scope still runs the body up to its first checkpoint")
    with trio.CancelScope() as scope:
        scope.cancel()
        await cancel_me()
    print(f"cancelled at its first checkpoint: {scope.cancelled_caught}")


if __name__ == "__main__":
    trio.run(main)
