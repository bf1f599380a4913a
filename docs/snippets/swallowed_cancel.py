"""The cancellation page's "Don't do this" and "Do this instead", run side by side."""

from __future__ import annotations

import trio

import trio_cancel as tc


async def do_work() -> str:
    await trio.sleep(3600)
    return "done"


class Naive:
    # [docs-naive]
    async def handler(token: tc.CancellationToken) -> str | None:
        try:
            return await do_work()
        except trio.Cancelled:
            # Swallowed: the caller gets None as if the work were done, and the scope that
            # was cancelled (a deadline, a shutdown) never sees cancelled_caught; the caller
            # carries on until its next checkpoint raises the cancellation again.
            return None
        # [/docs-naive]


class Fixed:
    # [docs-fixed]
    async def handler(token: tc.CancellationToken) -> str | None:
        with token.cancel_scope():  # only the token's own cancellation is absorbed here
            return await do_work()
        return None
        # [/docs-fixed]


async def main() -> None:
    # A deadline cancels the naive handler: it returns None and the deadline's scope never
    # learns that it fired.
    with trio.move_on_after(0.05) as deadline:
        result = await Naive.handler(tc.CancellationToken())
    print(f"naive, deadline: returned {result!r}, cancelled_caught={deadline.cancelled_caught}")
    # The fixed handler lets the deadline through...
    with trio.move_on_after(0.05) as deadline:
        await Fixed.handler(tc.CancellationToken())
    print(f"fixed, deadline: cancelled_caught={deadline.cancelled_caught}")
    # ...and absorbs only its own token's cancellation.
    token = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0)
        token.cancel("stop")
        result = await Fixed.handler(token)
    print(f"fixed, token cancelled: returned {result!r}")


trio.run(main)
