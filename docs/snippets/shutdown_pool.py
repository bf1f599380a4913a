"""The graceful-shutdown page's worker pool, stopped by a real SIGINT (tests/test_docs.py):
the idle workers leave at once, the job in hand is finished, and the report lists all four.
"""

from __future__ import annotations

import os
import signal

import trio

import trio_cancel as tc

finished: list[int] = []
in_hand = trio.Event()


async def process(job: int) -> None:
    if job == 7:
        in_hand.set()  # the signal comes while this job is being processed
    await trio.sleep(0.05)
    finished.append(job)


# [docs-worker]
async def worker(jobs, *, token: tc.CancellationToken):  # gets a child of gs.token
    while True:
        with token.cancel_scope() as waiting:  # only the wait for work is cut short
            job = await jobs.receive()
        if waiting.cancelled_caught:
            return  # shutting down, and idle: leave
        await process(job)  # the job in hand is finished
    # [/docs-worker]


async def interrupt() -> None:
    await in_hand.wait()
    os.kill(os.getpid(), signal.SIGINT)  # as Ctrl+C would


async def main() -> None:
    send, jobs = trio.open_memory_channel[int](10)
    for job in range(8):
        send.send_nowait(job)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(interrupt)
        # [docs-pool]
        async with tc.GracefulShutdown(grace=10.0) as gs:
            gs.install_signal_handlers()  # 1st SIGINT/SIGTERM: trigger; 2nd: force phase 2
            for _ in range(4):
                gs.spawn(worker, jobs)
            await gs.token.wait_cancelled()  # 1. run until the trigger
            report = await gs.wait()  # 2. drain: every task lands, or is forced
        print(report)  # 3. a table, slowest first; report.forced
        # [/docs-pool]
    assert gs.token.reason == "signal SIGINT"
    assert sorted(finished) == list(range(8))  # the job in hand was finished, not cut
    assert len(report.tasks) == 4
    assert not report.forced
    print("shutdown: 4 workers landed in time; the job in hand was finished")


trio.run(main)
