"""Cancel a job wherever it runs, and learn when it stopped: the cancellation bus on PostgreSQL.

A controller starts ``--workers`` worker processes and hands them ``--jobs`` short jobs over
their standard input (``run JOB SECONDS``). Each worker opens a bus with
``trio_cancel.postgres.open_cancel_bus``, runs every job under ``bus.token(job_id)`` and
ends each run with ``bus.landed(job_id, outcome)``. The controller picks ``--cancel`` jobs at
random (``--seed``); a few of them it cancels before any worker has them (a durable request:
it lands as soon as a worker starts the job), the others while they run; it then waits for
each landing with ``bus.wait_landed`` and prints it. Every other job completes untouched. At
the end the controller closes the workers' input: each drains under a ``GracefulShutdown``
(cancel requests keep working while it drains) and exits.

The bus needs no broker of its own: a table holds the requests (durable, expiring after
``ttl``) and ``LISTEN``/``NOTIFY`` pushes them; the worker waits on the listening socket from
Trio, with no thread. The figures printed last are the times from each request to its landing
(both on the server's clock).

It needs a PostgreSQL server: ``--dsn DSN``, or the ``TRIO_CANCEL_PG_DSN`` environment variable
(``.ci/with-postgres .venv/bin/python examples/cancel_bus.py`` starts a throwaway one). Without
one it says so and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import trio

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from trio_cancel.postgres import Landing


async def read_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    """The lines of a byte stream, without their newlines."""
    buffer = b""
    while chunk := await stream.receive_some():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode()
    if buffer:
        yield buffer.decode()


# ------------------------------------------------------------------------------ the worker


async def worker(dsn: str, table: str, channel: str) -> None:
    """Run the jobs read from stdin; print ``started JOB`` and ``done JOB OUTCOME``."""
    from trio_cancel.postgres import open_cancel_bus

    async with (
        open_cancel_bus(dsn, table=table, channel=channel) as bus,
        tc.GracefulShutdown(grace=60) as shutdown,
    ):

        async def run_job(job_id: str, seconds: float) -> None:
            token = bus.token(job_id)  # cancelled by a request from any process
            print(f"started {job_id}", flush=True)
            with token.cancel_scope() as scope:
                await trio.sleep(seconds)  # the job's work
            outcome = tc.Aborted(token.reason) if scope.cancelled_caught else tc.Completed(None)
            await bus.landed(job_id, outcome)  # ends the run; the controller learns of it
            kind = "aborted" if scope.cancelled_caught else "completed"
            print(f"done {job_id} {kind}", flush=True)

        print(f"ready {os.getpid()}", flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async for line in read_lines(stdin):
            command, job_id, seconds = line.split()
            if command == "run":
                shutdown.spawn(run_job, job_id, float(seconds), name=job_id)
        # Input closed: drain. The jobs do not take the shutdown's token, so they run on; a
        # remote cancel still reaches them while the worker waits for them.
        shutdown.trigger("input closed")
        await shutdown.wait()


# ------------------------------------------------------------------------------ the controller


async def controller(
    dsn: str,
    *,
    workers: int,
    jobs: int,
    cancels: int,
    seed: int,
    table: str,
    channel: str,
    sequential: bool = False,
) -> None:
    from trio_cancel.postgres import open_cancel_bus

    rng = random.Random(seed)
    names = [f"job-{n}" for n in range(jobs)]
    doomed = set(rng.sample(names, cancels))
    early = set(
        rng.sample(sorted(doomed), min(cancels, max(1, cancels // 10)))
    )  # cancelled before any worker has them
    started: dict[str, trio.Event] = {name: trio.Event() for name in names}
    outcomes: dict[str, str] = {}
    worker_of: dict[str, int] = {}
    landings: dict[str, Landing] = {}

    async with open_cancel_bus(dsn, table=table, channel=channel) as bus:
        for name in sorted(early):  # durable: recorded now, delivered when a worker starts it
            await bus.cancel(name, "cancelled before it started")
        print(
            f"{workers} worker processes, {jobs} jobs; cancelling {cancels} of them "
            f"({len(early)} before they start)",
            flush=True,
        )
        async with trio.open_nursery() as nursery:
            procs: list[trio.Process] = []
            ready = [trio.Event() for _ in range(workers)]
            for index in range(workers):
                command = [sys.executable, __file__, "worker", "--dsn", dsn]
                command += ["--table", table, "--channel", channel]
                proc = await trio.lowlevel.open_process(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                )
                procs.append(proc)
                nursery.start_soon(_follow, proc, index, ready[index], started, outcomes, worker_of)
            for event in ready:
                await event.wait()
            # --one-at-a-time: each cancel waits for the previous landing (latency without
            # queueing); by default they all go out as soon as their jobs have started.
            one_at_a_time: trio.Lock | contextlib.nullcontext[None]
            one_at_a_time = trio.Lock() if sequential else contextlib.nullcontext()

            async def cancel_one(name: str) -> None:
                if name not in early:
                    await started[name].wait()
                async with one_at_a_time:
                    if name not in early:
                        await bus.cancel(name, "the user pressed stop")
                    landings[name] = landing = await bus.wait_landed(name)
                await started[name].wait()  # its worker's report may trail the landing
                seconds = landing.seconds or 0.0
                when = "before it started" if name in early else "while running"
                print(
                    f"{name}: cancelled {when}, on worker {worker_of[name]}, landed "
                    f"{landing.outcome} {seconds * 1000:.1f} ms after the request",
                    flush=True,
                )

            async with trio.open_nursery() as cancellers:
                for name in sorted(doomed, key=names.index):
                    cancellers.start_soon(cancel_one, name)
                for n, name in enumerate(names):
                    seconds = 3600.0 if name in doomed else rng.uniform(0.01, 0.2)
                    proc = procs[n % workers]
                    assert proc.stdin is not None
                    await proc.stdin.send_all(f"run {name} {seconds:.3f}\n".encode())
            for proc in procs:
                assert proc.stdin is not None
                await proc.stdin.aclose()  # the workers drain and exit
            for proc in procs:
                await proc.wait()

    completed = sum(1 for name in names if outcomes.get(name) == "completed")
    aborted = sum(1 for name in doomed if outcomes.get(name) == "aborted")
    untouched = completed == jobs - cancels and all(
        outcomes.get(name) == "completed" for name in names if name not in doomed
    )
    print(
        f"{jobs} jobs: {aborted} of {cancels} cancelled jobs landed aborted (confirmed through "
        f"the bus), {completed} completed untouched"
        + ("" if untouched else " (SOME OTHER JOB WAS TOUCHED)"),
    )
    during = sorted(
        1000 * (landings[name].seconds or 0.0) for name in doomed - early if name in landings
    )
    if during:
        p99 = during[min(len(during) - 1, round(0.99 * (len(during) - 1)))]
        print(
            f"request to landing, {len(during)} jobs cancelled while running: "
            f"p50 {statistics.median(during):.1f} ms, p99 {p99:.1f} ms, max {during[-1]:.1f} ms"
        )


async def _follow(
    proc: trio.Process,
    index: int,
    ready: trio.Event,
    started: dict[str, trio.Event],
    outcomes: dict[str, str],
    worker_of: dict[str, int],
) -> None:
    """Read one worker's reports."""
    assert proc.stdout is not None
    async for line in read_lines(proc.stdout):
        word, _, rest = line.partition(" ")
        if word == "ready":
            ready.set()
        elif word == "started":
            worker_of[rest] = index
            started[rest].set()
        elif word == "done":
            name, kind = rest.split()
            outcomes[name] = kind


async def _drop(dsn: str, table: str) -> None:
    import trio_cancel.postgres as tc_postgres

    async with await tc_postgres.connect(dsn) as conn:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.execute(f'DROP FUNCTION IF EXISTS "{table}_announce"()')
        await conn.execute(f'DROP FUNCTION IF EXISTS "{table}_cancel"(text, text, interval)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="controller", choices=["controller", "worker"])
    parser.add_argument("--dsn", default=os.environ.get("TRIO_CANCEL_PG_DSN"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--cancel", type=int, default=5, help="how many jobs to cancel")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument(
        "--one-at-a-time", action="store_true", help="send each cancel after the last landed"
    )
    parser.add_argument("--table", default=None, help="default: a new table for this run")
    parser.add_argument("--channel", default=None, help="default: the table's name")
    args = parser.parse_args()
    if not args.dsn:
        print(
            "cancel_bus.py needs a PostgreSQL server, and none was given: pass --dsn DSN or set "
            "TRIO_CANCEL_PG_DSN. To try it with a throwaway server (PostgreSQL installed): "
            ".ci/with-postgres .venv/bin/python examples/cancel_bus.py"
        )
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        print("cancel_bus.py needs psycopg 3: pip install 'trio_cancel[postgres]'")
        return
    if not 0 <= args.cancel <= args.jobs or args.workers < 1:
        parser.error("need --workers >= 1 and 0 <= --cancel <= --jobs")
    own_table = args.table is None
    table = args.table or f"trio_cancel_demo_{uuid.uuid4().hex[:8]}"
    channel = args.channel or table
    if args.role == "worker":
        trio.run(worker, args.dsn, table, channel)
        return
    try:
        trio.run(
            lambda: controller(
                args.dsn,
                workers=args.workers,
                jobs=args.jobs,
                cancels=args.cancel,
                seed=args.seed,
                table=table,
                channel=channel,
                sequential=args.one_at_a_time,
            )
        )
    finally:
        if own_table:
            trio.run(_drop, args.dsn, table)


if __name__ == "__main__":
    main()
