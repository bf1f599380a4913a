"""The landing page's quickstart, run as it is shown (tests/test_docs.py)."""

# [docs]
from __future__ import annotations

import trio

import trio_cancel as tc


async def worker(n: int, token: tc.CancellationToken) -> None:
    with token.cancel_scope() as cs:  # cancelled when the token is
        await trio.sleep(3600)
    print(f"worker {n}: cancelled={cs.cancelled_caught}, reason={token.reason!r}")


async def main() -> None:
    root = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(worker, n, root.child_token())
        await trio.sleep(0.1)
        root.cancel("shutting down")  # every child token, scope and waiter, at once


trio.run(main)
# [/docs]
