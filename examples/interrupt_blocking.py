"""The three ways a blocking call in a thread can end when its caller is cancelled.

A blocking call (a database query, a library without async support) runs in a worker thread,
and Trio cannot cancel a thread. When the caller's deadline passes, the thread can be

* **waited for**: ``trio.to_thread.run_sync`` (the default) ignores the cancellation until the
  call returns: the deadline is missed by the whole remaining run time;
* **abandoned**: ``trio.to_thread.run_sync(..., abandon_on_cancel=True)`` returns at once, but
  the call goes on in its thread, holding its connection and its transaction;
* **interrupted**: ``tc.run_sync_interruptible(fn, interrupt=...)`` calls ``interrupt()``
  (here SQLite's ``Connection.interrupt()``), waits (bounded by ``grace``) for the call to
  return, and only then raises the cancellation: the deadline holds and nothing is left
  running. If the call ignores the interrupt past ``grace``, it is abandoned, visibly.

Each is shown on a query that would run for many seconds, under a 0.2 s deadline, with when
the caller got control back and when the thread was done. With ``--measure``, the interrupt
latency (deadline to return) over 100 SQLite runs and, with ``--postgres DSN``, the time until
the query is gone from the server (``pg_stat_activity``) over 20 ``pg_sleep(10)`` runs.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import threading
import time
import warnings

import trio

import trio_cancel as tc

QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
    "SELECT count(*) FROM c"
)
DEADLINE = 0.2


class SlowQuery:
    """A query on its own connection that records when its thread returned."""

    def __init__(self, rows: int) -> None:
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.rows = rows
        self.returned = threading.Event()
        self.returned_at = 0.0

    def __call__(self) -> int:
        try:
            return int(self.conn.execute(QUERY, (self.rows,)).fetchone()[0])
        finally:
            self.returned_at = time.perf_counter()
            self.returned.set()


async def show(way: str, query: SlowQuery, call: object) -> None:
    start = time.perf_counter()
    with trio.move_on_after(DEADLINE):
        await call  # type: ignore[misc]
    back = time.perf_counter() - start
    running = "still running" if not query.returned.is_set() else "done"
    print(f"{way:<12} caller back after {back:5.2f} s; thread {running} then", end="")
    await trio.to_thread.run_sync(query.returned.wait)
    print(f", done after {query.returned_at - start:5.2f} s")
    query.conn.close()


async def three_ways() -> None:
    print(f"a query that runs for longer than its {DEADLINE} s deadline:")
    waited = SlowQuery(3_000_000)
    await show("waited", waited, trio.to_thread.run_sync(waited))
    abandoned = SlowQuery(3_000_000)
    await show("abandoned", abandoned, trio.to_thread.run_sync(abandoned, abandon_on_cancel=True))
    interrupted = SlowQuery(3_000_000)
    await show(
        "interrupted",
        interrupted,
        tc.run_sync_interruptible(interrupted, interrupt=interrupted.conn.interrupt),
    )
    stubborn = SlowQuery(3_000_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await show(
            "grace out",
            stubborn,
            tc.run_sync_interruptible(stubborn, interrupt=lambda: None, grace=0.1),
        )
    print(f"  (the interrupt was ignored: {caught[0].category.__name__} named the call)")
    stats = tc.thread_call_statistics()
    print(
        f"thread_call_statistics: {stats.interrupted} interrupted, {stats.abandoned} abandoned, "
        f"{stats.abandoned_running} still running"
    )


def _percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    p50, p95, top = cuts[49] * 1000, cuts[94] * 1000, max(samples) * 1000
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {top:.1f} ms"


async def measure_sqlite(runs: int = 100) -> None:
    latencies = []
    for _ in range(runs):
        query = SlowQuery(10**10)
        deadline = time.perf_counter() + 0.05
        with trio.move_on_after(0.05) as cs:
            await tc.run_sync_interruptible(query, interrupt=query.conn.interrupt)
        assert cs.cancelled_caught
        latencies.append(query.returned_at - deadline)
        query.conn.close()
    where = "SQLite, deadline to the interrupted query's return"
    print(f"{where}, {runs} runs: {_percentiles(latencies)}")


async def measure_postgres(dsn: str, runs: int = 20) -> None:
    import trio_cancel.postgres as tc_postgres

    stopped = []
    async with await tc_postgres.connect(dsn) as observer:
        baseline = await observer.fetchone("SELECT count(*) FROM pg_stat_activity")
        async with await tc_postgres.connect(dsn) as conn:
            row = await conn.fetchone("SELECT pg_backend_pid()")
            assert row is not None
            for _ in range(runs):
                deadline = trio.current_time() + 0.5
                with trio.CancelScope(deadline=deadline):
                    await conn.fetchone("SELECT pg_sleep(10)")
                # Poll the server, as an operator would.
                while (  # noqa: ASYNC110
                    await observer.fetchone(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                        (row[0],),
                    )
                ) != (0,):
                    await trio.sleep(0.001)
                stopped.append(trio.current_time() - deadline)
        await trio.sleep(0.2)
        after = await observer.fetchone("SELECT count(*) FROM pg_stat_activity")
    print(
        f"PostgreSQL, deadline to no active query on the server, {runs} runs of pg_sleep(10) "
        f"under 0.5 s: {_percentiles(stopped)}; backends {baseline[0] if baseline else '?'} "
        f"before, {after[0] if after else '?'} after"
    )


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def measure_leaks(calls: int = 1000) -> None:
    async def one() -> None:
        query = SlowQuery(10**10)
        with trio.move_on_after(0.001):
            await tc.run_sync_interruptible(query, interrupt=query.conn.interrupt)
        query.conn.close()

    for _ in range(100):
        await one()
    threads, rss = threading.active_count(), _rss_mb()
    for _ in range(calls):
        await one()
    print(
        f"{calls} interrupted calls: threads {threads} -> {threading.active_count()}, "
        f"RSS {rss:.1f} -> {_rss_mb():.1f} MB"
    )


async def main(measure: bool, dsn: str | None) -> None:
    await three_ways()
    if measure:
        await measure_sqlite()
        await measure_leaks()
        if dsn is not None:
            await measure_postgres(dsn)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="measure interrupt latencies")
    parser.add_argument("--postgres", metavar="DSN", help="also measure against PostgreSQL")
    args = parser.parse_args()
    trio.run(main, args.measure, args.postgres)
