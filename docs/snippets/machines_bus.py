"""The machines page's controller code, run against a real PostgreSQL server (its DSN in
TRIO_CANCEL_PG_DSN, as .ci/with-postgres sets it; tests/test_docs.py runs this only then).

A worker runs job-42 on a bus of its own (as another process would); the page's code cancels
it and waits for its landing. Everything lives in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import psycopg.conninfo
import trio

import trio_cancel as tc
import trio_cancel.postgres as tc_postgres


async def worker(dsn: str, *, task_status: trio.TaskStatus[None]) -> None:
    async with tc_postgres.open_cancel_bus(dsn) as bus:
        token = await bus.start_run("job-42")
        task_status.started()
        with token.cancel_scope() as scope:
            await trio.sleep_forever()  # the job's work
        assert scope.cancelled_caught
        assert token.reason == "the user pressed stop"
        assert isinstance(token.cause, tc_postgres.RemoteCancel)
        await bus.landed("job-42", tc.Aborted(token.reason))


async def controller(dsn: str) -> tc_postgres.Landing:
    # [docs-controller]
    async with tc_postgres.open_cancel_bus(dsn) as bus:
        await bus.cancel("job-42", "the user pressed stop")
        with trio.fail_after(10):
            landing = await bus.wait_landed("job-42")
        print(landing.outcome, landing.seconds)  # aborted, and how long it took
    # [/docs-controller]
    return landing


async def main(dsn: str) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(worker, dsn)
        landing = await controller(dsn)
    assert landing.outcome == "aborted"
    assert landing.seconds is not None
    assert landing.seconds >= 0


if __name__ == "__main__":
    server = os.environ["TRIO_CANCEL_PG_DSN"]
    schema = f"tc_docs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            trio.run(
                main, psycopg.conninfo.make_conninfo(server, options=f"-csearch_path={schema}")
            )
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
