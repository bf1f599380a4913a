"""Graceful shutdown of 1,000 tasks in two phases, and who did not land in time.

Not a seed example: the capability the brief's first sentence asks for. 1,000 workers run
under a ``tc.GracefulShutdown`` with a 2-second grace period: 990 take the token and finish
their current item when it fires (each needs 0.1 to 1.0 s), 10 ignore it. ``trigger()``
cancels the token (phase 1); the 10 still running after the grace period are aborted (phase 2).
The report names them. Runs on Trio's real clock in about 2 seconds.
"""

from __future__ import annotations

import random

import trio

import trio_cancel as tc


async def worker(item_seconds: float, *, token: tc.CancellationToken) -> int:
    done = 0
    while not token.is_cancelled():
        with trio.move_on_after(0.05):
            await token.wait_cancelled()
        done += 1
    await trio.sleep(item_seconds)  # finish the item in hand, then land
    return done


async def legacy_worker() -> None:
    """Knows nothing about tokens: only phase 2 stops it."""
    polls = 0
    while True:
        await trio.sleep(0.05)  # polls an old API that has no way to be told to stop
        polls += 1


async def main() -> None:
    rng = random.Random(7)
    async with tc.GracefulShutdown(grace=2.0) as gs:
        for i in range(990):
            gs.spawn(worker, rng.uniform(0.1, 1.0), name=f"worker-{i:03d}")
        for i in range(10):
            gs.spawn(legacy_worker, name=f"legacy-{i}")
        await trio.sleep(0.2)
        gs.trigger("deploy v2")
        report = await gs.wait()
    lines = str(report).splitlines()
    print(lines[0])
    landed = [t.seconds for t in report if not t.forced and t.seconds is not None]
    print(f"cooperative tasks landed after {min(landed):.2f} to {max(landed):.2f} s")
    print("did not land in time:", ", ".join(t.name for t in report.forced))
    print("the report, slowest first:")
    for line in lines[1:4]:
        print(line)


if __name__ == "__main__":
    trio.run(main)
