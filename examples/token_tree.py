"""E09: a tree of workers under child tokens, stopped by one root ``cancel()``.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases), its ``spawn_worker_tree(token, depth=3, width=10)``.

The Rust code gives every level a ``child_token()``, spawns ``width`` subtrees per level, and
each leaf loops on ``select!`` between ``token.cancelled()`` and a 100 ms sleep (a tick). After
2 s the root token is cancelled and the whole tree of 1,000 leaves winds down.

Trio version: each level is a nursery (``tokio::spawn`` + awaiting the handles); each leaf runs
its tick loop inside ``with token.cancel_scope():``, which is the ``select!`` on
``token.cancelled()``: the scope is cancelled when the token (or any ancestor) is. The tick
loop is ``trio_util.periodic(0.1)`` (a fixed rhythm, like tokio's ``interval``). Run with
``--seconds S`` to change how long the tree ticks before the root is cancelled.
"""

from __future__ import annotations

import argparse

import attrs
import trio
import trio_util

import trio_cancel as tc


@attrs.define
class Stats:
    leaves: int = 0
    ticks: int = 0
    cancelled: int = 0
    tokens: int = 1


async def leaf_worker(token: tc.CancellationToken, stats: Stats) -> None:
    stats.leaves += 1
    with token.cancel_scope():
        # trio_util.periodic keeps the 100 ms rhythm, counting the loop body's own time.
        async for _ in trio_util.periodic(0.1):
            stats.ticks += 1
    stats.cancelled += 1


async def spawn_worker_tree(
    token: tc.CancellationToken, depth: int, width: int, stats: Stats
) -> None:
    if depth == 0:
        await leaf_worker(token, stats)
        return
    async with trio.open_nursery() as nursery:
        for _ in range(width):
            stats.tokens += 1
            nursery.start_soon(spawn_worker_tree, token.child_token(), depth - 1, width, stats)


async def main(seconds: float) -> None:
    stats = Stats()
    root = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spawn_worker_tree, root, 3, 10, stats)
        await trio.sleep(seconds)
        print(f"{stats.leaves} leaf workers running under {stats.tokens} tokens")
        print(f"{stats.ticks} ticks in {seconds:.1f} s")
        t0 = trio.current_time()
        root.cancel("root cancelled")
    elapsed = trio.current_time() - t0
    print(f"root.cancel(): {stats.cancelled} of {stats.leaves} leaves cancelled")
    print(f"the whole tree was joined {elapsed * 1000:.1f} ms after cancel()")
    assert stats.cancelled == stats.leaves == 1000


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    trio.run(main, parser.parse_args().seconds)
