"""The "Don't do this" of the machines page, run (tests/test_docs.py): a cancel flag polled by
the worker is slow to notice, loads the database with a query per poll, and a flag set after
its job ended stops the next job with the same id before it does any work.

The database is SQLite in memory here (the page's query is written for psycopg, whose
placeholder is ``%s``); the clock is Trio's MockClock, so a second of polling takes no time.
"""

from __future__ import annotations

import sqlite3

import trio
import trio.testing


class Db:
    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:")
        self.conn.execute("CREATE TABLE cancel_flags (job_id TEXT)")
        self.queries = 0

    async def fetchone(self, sql: str, params: tuple[object, ...]) -> tuple[object, ...] | None:
        await trio.lowlevel.checkpoint()
        self.queries += 1
        return self.conn.execute(sql.replace("%s", "?"), params).fetchone()

    def set_flag(self, job_id: str) -> None:
        self.conn.execute("INSERT INTO cancel_flags VALUES (?)", (job_id,))


db = Db()
bits_of_work: list[str] = []


async def do_a_bit_of_work() -> None:
    await trio.lowlevel.checkpoint()
    bits_of_work.append("bit")


# [docs-polling]
# A flag per job id, polled by the worker: slow to notice, a load on the database, and
# a flag set after the job ended (or for a job not started yet) hits the next job with
# the id.
async def run_job(job_id):
    flag = "SELECT 1 FROM cancel_flags WHERE job_id = %s"
    while not await db.fetchone(flag, (job_id,)):
        await do_a_bit_of_work()
        await trio.sleep(1)
    # [/docs-polling]


async def main() -> None:
    # A flag set while the job runs is noticed only at the next poll, up to a second later.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_job, "job-42")
        await trio.sleep(2.5)
        db.set_flag("job-42")
        flagged_at = trio.current_time()
    noticed = trio.current_time() - flagged_at
    assert noticed == 0.5, noticed
    assert db.queries == 4  # one query per second of running, per job
    # The flag stays behind: the next run of job-42 stops before it does anything.
    bits = len(bits_of_work)
    await run_job("job-42")
    assert len(bits_of_work) == bits
    print(f"polling: noticed {noticed} s late; the next job-42 did no work at all")


trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
