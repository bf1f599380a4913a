"""The performance page's snippets: a planned mass shutdown with full collections deferred,
and the latency summary of that shutdown (tests/test_docs.py runs it; the page shows a run)."""

from __future__ import annotations

import gc
import sys

import trio
import trio.testing

import trio_cancel as tc

TASKS = 10_000


async def main() -> None:
    latency = tc.CancellationLatency()
    trio.lowlevel.add_instrument(latency)
    threshold = gc.get_threshold()
    # [docs-defer]
    with tc.deferred_full_collections():
        async with tc.JoinSet() as js:  # or a nursery, or a GracefulShutdown
            for _ in range(TASKS):
                js.spawn(trio.sleep, 3600)
            await trio.testing.wait_all_tasks_blocked()
            assert gc.get_threshold()[2] > threshold[2]  # full collections deferred
            await js.shutdown("stopping")
    # [/docs-defer]
    assert gc.get_threshold() == threshold  # what the program last set, back
    trio.lowlevel.remove_instrument(latency)
    print(latency)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        TASKS = int(sys.argv[1])
    trio.run(main)
