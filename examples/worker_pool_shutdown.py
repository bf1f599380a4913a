"""A worker pool that runs until Ctrl+C or SIGTERM, drains, and prints who landed.

The shape of every long-running Trio service with ``tc.GracefulShutdown``:

1. ``gs.install_signal_handlers()``: the first SIGINT/SIGTERM triggers phase 1 (the
   shutdown's token is cancelled); a second one forces phase 2 at once;
2. ``await gs.token.wait_cancelled()``: *run until the trigger*. (Calling ``gs.wait()`` here
   instead would trigger the shutdown at once: ``wait()`` means "shut down and land now".)
3. ``report = await gs.wait()``: drain; every worker lands, or is aborted when the grace
   period ends; the report says which.

Each worker finishes the job in hand: only its ``receive()`` (waiting for the next job) sits
inside ``token.cancel_scope()``, so the trigger stops a waiting worker at once and lets a busy
one complete its job. A job still running when the grace period ends is aborted (phase 2).

Run it and press Ctrl+C; or ``--interrupt-after 1.0`` sends the process a real SIGINT itself
after one second (what ``make demo`` and the tests do).
"""

from __future__ import annotations

import argparse
import os
import signal

import trio

import trio_cancel as tc


async def producer(jobs: trio.MemorySendChannel[int], *, token: tc.CancellationToken) -> str:
    async with jobs:
        n = 0
        with token.cancel_scope():  # stop producing at the trigger
            while True:
                n += 1
                await jobs.send(n)
                await trio.sleep(0.01)
    return f"produced {n - 1} jobs"


async def worker(
    name: str, jobs: trio.MemoryReceiveChannel[int], *, token: tc.CancellationToken
) -> str:
    done = 0
    while True:
        with token.cancel_scope() as waiting:  # only the wait for work is cut short
            job = await jobs.receive()
        if waiting.cancelled_caught:
            return f"{name}: finished {done} jobs, then stopped waiting for work"
        await trio.sleep(0.03 + (job % 4) * 0.01)  # the job in hand: always completed
        done += 1


async def interrupt_after(seconds: float) -> None:
    await trio.sleep(seconds)
    print(f"(sending SIGINT to this process after {seconds:g} s)", flush=True)
    os.kill(os.getpid(), signal.SIGINT)


async def main(interrupt: float | None) -> None:
    async with tc.GracefulShutdown(grace=2.0) as gs:
        gs.install_signal_handlers()  # SIGINT and SIGTERM: 1st triggers, 2nd forces
        send, receive = trio.open_memory_channel[int](10)
        for i in range(4):
            gs.spawn(worker, f"worker-{i}", receive, name=f"worker-{i}")
        gs.spawn(producer, send, name="producer")
        print("pool running: press Ctrl+C (or send SIGTERM) to shut down", flush=True)
        if interrupt is not None:
            gs.spawn(interrupt_after, interrupt, name="self-interrupt")
        await gs.token.wait_cancelled()  # run until the first signal
        print(f"shutting down: {gs.token.reason}", flush=True)
        report = await gs.wait()  # drain: every worker lands (or is forced after 2 s)
        queued = receive.statistics().current_buffer_used
    for landing in report:
        outcome = landing.outcome
        if isinstance(outcome, tc.Completed):
            print(f"  {outcome.value}")
    print(f"  {queued} jobs still queued, never started (a real service would hand them back)")
    print(report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--interrupt-after", type=float, metavar="SECONDS", help="send SIGINT to itself"
    )
    trio.run(main, parser.parse_args().interrupt_after)
