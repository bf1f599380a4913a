"""Tests of trio_cancel.sqlite and trio_cancel.postgres against real databases: a SQLite file,
and the PostgreSQL server whose DSN is in TRIO_CANCEL_PG_DSN (started by .ci/with-postgres;
the PostgreSQL cases skip without it, unless TRIO_CANCEL_REQUIRE_PG=1)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing

import trio_cancel.sqlite as tc_sqlite
from trio_cancel.testing import cancel_at_each_checkpoint

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from trio_cancel._dbapi import DatabaseConnection

PG_DSN = os.environ.get("TRIO_CANCEL_PG_DSN")
REQUIRE_PG = os.environ.get("TRIO_CANCEL_REQUIRE_PG") == "1"


@attrs.define
class Db:
    """One backend, with a fresh database (a file, or a schema of its own)."""

    name: str
    connect: Callable[[], Awaitable[DatabaseConnection[Any]]]
    slow_query: str  # runs for about 10 s unless interrupted
    p: str  # the parameter placeholder
    interruption: type[BaseException]
    sql_error: type[BaseException]


async def _setup_accounts(db: Db) -> None:
    async with await db.connect() as conn:
        await conn.execute("CREATE TABLE accounts (name TEXT PRIMARY KEY, balance INTEGER)")
        await conn.execute(
            f"INSERT INTO accounts VALUES ({db.p}, {db.p}), ({db.p}, {db.p})",
            ("alice", 100, "bob", 0),
        )


def _require_pg() -> str:
    if PG_DSN is None:
        if REQUIRE_PG:
            pytest.fail("TRIO_CANCEL_REQUIRE_PG=1 but no TRIO_CANCEL_PG_DSN: no PostgreSQL server")
        pytest.skip("no PostgreSQL server (run the tests through make test, or .ci/with-postgres)")
    return PG_DSN


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "sqlite":
        import sqlite3

        path = tmp_path / "test.db"
        yield Db(
            "sqlite",
            lambda: tc_sqlite.connect(path),
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "WHERE x < 10000000000) SELECT count(*) FROM c",
            "?",
            sqlite3.OperationalError,
            sqlite3.OperationalError,
        )
        return
    dsn = _require_pg()
    import psycopg

    import trio_cancel.postgres as tc_postgres

    schema = f"test_{uuid.uuid4().hex[:12]}"
    async with await tc_postgres.connect(dsn) as admin:
        await admin.execute(f"CREATE SCHEMA {schema}")
    options = f"-c search_path={schema}"
    try:
        yield Db(
            "postgres",
            lambda: tc_postgres.connect(dsn, options=options),
            "SELECT pg_sleep(10)",
            "%s",
            psycopg.errors.QueryCanceled,
            psycopg.errors.UndefinedTable,
        )
    finally:
        with trio.CancelScope(shield=True):
            async with await tc_postgres.connect(dsn) as admin:
                await admin.execute(f"DROP SCHEMA {schema} CASCADE")


async def _balances(db: Db) -> dict[str, int]:
    async with await db.connect() as conn:
        rows = await conn.fetchall("SELECT name, balance FROM accounts ORDER BY name")
    return {str(name): int(balance) for name, balance in rows}


# ---------------------------------------------------------------- the basics


async def test_execute_fetch_and_driver_errors_propagate_unchanged(db: Db) -> None:
    async with await db.connect() as conn:
        await conn.execute("CREATE TABLE t (x INTEGER)")
        assert await conn.execute(f"INSERT INTO t VALUES ({db.p}), ({db.p})", (1, 2)) == 2
        assert await conn.fetchone("SELECT x FROM t ORDER BY x") == (1,)
        assert await conn.fetchall("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
        assert await conn.fetchone("SELECT x FROM t WHERE x > 5") is None
        with pytest.raises(db.sql_error):
            await conn.execute("SELECT * FROM no_such_table")
        assert not conn.in_transaction
        assert await conn.fetchone("SELECT 1") == (1,)
    assert conn.closed
    with pytest.raises(trio.ClosedResourceError):
        await conn.execute("SELECT 1")
    await conn.aclose()  # idempotent


async def test_transaction_commits_on_clean_exit_even_an_early_return(db: Db) -> None:
    await _setup_accounts(db)
    async with await db.connect() as conn:

        async def pay(amount: int) -> str:
            async with conn.transaction() as tx:
                await conn.execute(
                    f"UPDATE accounts SET balance = balance - {db.p} WHERE name = 'alice'",
                    (amount,),
                )
                if amount > 0:
                    return tx.outcome or "open"  # an early return: still a clean exit
                await conn.execute("UPDATE accounts SET balance = 0")  # pragma: no cover
            return "unreachable"  # pragma: no cover

        assert await pay(10) == "open"
        assert not conn.in_transaction
    assert await _balances(db) == {"alice": 90, "bob": 0}


async def test_transaction_rolls_back_on_error(db: Db) -> None:
    await _setup_accounts(db)
    async with await db.connect() as conn:
        with pytest.raises(KeyError):
            async with conn.transaction() as tx:
                await conn.execute("UPDATE accounts SET balance = 0")
                raise KeyError("business rule")
        assert tx.outcome == "rolled back"
        assert not conn.in_transaction
    assert await _balances(db) == {"alice": 100, "bob": 0}


async def test_explicit_mode_commits_only_on_commit(db: Db) -> None:
    await _setup_accounts(db)
    async with await db.connect() as conn:
        async with conn.transaction(commit="explicit") as forgotten:
            await conn.execute("UPDATE accounts SET balance = 1")
        assert forgotten.outcome == "rolled back"  # a clean exit without commit(): rolled back
        async with conn.transaction(commit="explicit") as committed:
            await conn.execute("UPDATE accounts SET balance = 2 WHERE name = 'bob'")
            await committed.commit()
            assert committed.outcome == "committed"
        assert not conn.in_transaction
    assert await _balances(db) == {"alice": 100, "bob": 2}


async def test_bad_use_is_a_clear_error(db: Db) -> None:
    async with await db.connect() as conn:
        with pytest.raises(ValueError, match="'on_exit' or 'explicit'"):
            conn.transaction(commit="sometimes")  # type: ignore[arg-type]
        block = conn.transaction()
        with pytest.raises(RuntimeError, match="inside its open transaction block"):
            await block.commit()
        async with block:
            with pytest.raises(RuntimeError, match="already has a transaction block"):
                async with conn.transaction():
                    pass  # pragma: no cover
        with pytest.raises(RuntimeError, match="entered only once"):
            async with block:
                pass  # pragma: no cover


# ---------------------------------------------------------------- cancellation


async def test_cancel_interrupts_the_statement_and_rolls_back(db: Db) -> None:
    await _setup_accounts(db)
    async with await db.connect() as conn:
        start = time.perf_counter()
        with trio.move_on_after(0.3) as cs:
            async with conn.transaction() as tx:
                await conn.execute("UPDATE accounts SET balance = 0 WHERE name = 'alice'")
                await conn.fetchone(db.slow_query)
        elapsed = time.perf_counter() - start
        assert cs.cancelled_caught
        assert elapsed < 3.0  # stopped, not run for 10 s (measured: ~0.30 s)
        assert tx.outcome == "rolled back"
        assert not conn.in_transaction
        assert await conn.fetchone("SELECT 1") == (1,)  # usable again
    assert await _balances(db) == {"alice": 100, "bob": 0}


async def test_cancelled_before_the_statement_runs_nothing(db: Db) -> None:
    await _setup_accounts(db)
    async with await db.connect() as conn:
        with trio.CancelScope() as cs:
            cs.cancel()
            await conn.execute("UPDATE accounts SET balance = 0")
        assert cs.cancelled_caught
    assert await _balances(db) == {"alice": 100, "bob": 0}


async def test_a_commit_is_never_torn_by_a_cancellation(db: Db) -> None:
    await _setup_accounts(db)
    async with await db.connect() as conn:
        with trio.CancelScope() as cs:
            async with conn.transaction(commit="explicit") as tx:
                await conn.execute("UPDATE accounts SET balance = 7 WHERE name = 'bob'")
                cs.cancel()  # arrives before the commit: it still completes
                await tx.commit()
                pytest.fail("the cancellation was lost")  # pragma: no cover
        assert cs.cancelled_caught
        assert tx.outcome == "committed"
        assert not conn.in_transaction
    assert await _balances(db) == {"alice": 100, "bob": 7}


async def test_a_statement_from_another_task_waits_for_the_block(db: Db) -> None:
    """Tasks sharing a connection are served first in, first out; a block holds it."""
    async with await db.connect() as conn:
        await conn.execute("CREATE TABLE log (n INTEGER)")
        order: list[int] = []

        async def insert(n: int) -> None:
            await conn.execute(f"INSERT INTO log VALUES ({db.p})", (n,))
            order.append(n)

        async with trio.open_nursery() as nursery, conn.transaction():
            await conn.execute("INSERT INTO log VALUES (0)")
            for n in range(1, 6):
                nursery.start_soon(insert, n)
                await trio.testing.wait_all_tasks_blocked()  # n is queued before n + 1
            assert order == []  # all waiting for the block
        assert order == [1, 2, 3, 4, 5]
        assert await conn.fetchall("SELECT n FROM log") == [(n,) for n in range(6)]


async def test_closing_interrupts_a_statement_of_another_task(db: Db) -> None:
    conn = await db.connect()
    errors: list[BaseException] = []

    async def slow() -> None:
        try:
            await conn.fetchone(db.slow_query)
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        await trio.sleep(0.1)  # the query is running
        await conn.aclose()
    assert len(errors) == 1
    with pytest.raises(trio.ClosedResourceError):
        await conn.fetchone("SELECT 1")


async def test_transfer_is_all_or_nothing_at_every_checkpoint(db: Db) -> None:
    await _setup_accounts(db)
    conn = await db.connect()
    moved: list[int] = []
    last = {"alice": 100, "bob": 0}

    async def transfer() -> None:
        async with conn.transaction():
            await conn.execute("UPDATE accounts SET balance = balance - 10 WHERE name = 'alice'")
            await conn.execute("UPDATE accounts SET balance = balance + 10 WHERE name = 'bob'")

    async def check() -> None:
        balances = await _balances(db)
        assert sum(balances.values()) == 100, balances
        moved.append(last["bob"] - balances["bob"] and balances["bob"] - last["bob"])
        last.update(balances)
        assert not conn.in_transaction

    try:
        result = await cancel_at_each_checkpoint(transfer, check=check)
    finally:
        await conn.aclose()
    assert result.points >= 4
    assert set(moved) <= {0, 10}
    assert moved[0] == 10  # the uncancelled run committed


async def test_transfer_keeps_the_total_under_random_deadlines(db: Db) -> None:
    await _setup_accounts(db)
    rng = random.Random(500)
    committed = cut = 0
    async with await db.connect() as conn:
        for _ in range(500):
            tx = conn.transaction()  # bound before the entry, which may be cancelled
            with trio.move_on_after(rng.uniform(0, 0.004)) as cs:
                async with tx:
                    await conn.execute(
                        "UPDATE accounts SET balance = balance - 1 WHERE name = 'alice'"
                    )
                    await conn.execute(
                        "UPDATE accounts SET balance = balance + 1 WHERE name = 'bob'"
                    )
            assert not conn.in_transaction
            if tx.outcome == "committed":
                committed += 1
            else:
                assert cs.cancelled_caught
                cut += 1
        balances = await _balances(db)
    assert sum(balances.values()) == 100
    assert balances["bob"] == committed  # exactly the committed transfers, never half of one
    assert committed + cut == 500


# ---------------------------------------------------------------- PostgreSQL on the server


async def test_postgres_query_stops_on_the_server() -> None:
    dsn = _require_pg()
    import trio_cancel.postgres as tc_postgres

    async with await tc_postgres.connect(dsn) as observer:
        baseline = await observer.fetchone("SELECT count(*) FROM pg_stat_activity")
        async with await tc_postgres.connect(dsn) as conn:
            row = await conn.fetchone("SELECT pg_backend_pid()")
            assert row is not None
            pid = row[0]
            with trio.move_on_after(0.5):
                await conn.fetchone("SELECT pg_sleep(10)")
            deadline = time.perf_counter()
            active = await observer.fetchone(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                (pid,),
            )
            stopped_after = time.perf_counter() - deadline
            assert active == (0,)  # no active query left for that backend
            assert stopped_after < 1.0  # measured in examples/interrupt_blocking.py
        await trio.sleep(0.2)  # the backend process exits after the connection closes
        after = await observer.fetchone("SELECT count(*) FROM pg_stat_activity")
    assert after == baseline


# ---------------------------------------------------------------- imports


def test_import_trio_cancel_imports_no_database_module() -> None:
    code = (
        "import sys, trio_cancel\n"
        "assert 'trio_cancel.sqlite' not in sys.modules\n"
        "assert 'trio_cancel.postgres' not in sys.modules\n"
        "assert 'psycopg' not in sys.modules and 'sqlite3' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_psycopg_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None\n"
        "try:\n"
        "    import trio_cancel.postgres\n"
        "except ImportError as exc:\n"
        "    assert \"pip install 'trio_cancel[postgres]'\" in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('imported without psycopg')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_failing_commit_rolls_back_and_raises_the_drivers_error(tmp_path: Path) -> None:
    import sqlite3

    async with await tc_sqlite.connect(tmp_path / "fk.db") as conn:
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        await conn.execute(
            "CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
        for mode in ("on_exit", "explicit"):
            tx = conn.transaction(commit=mode)
            with pytest.raises(sqlite3.IntegrityError):
                async with tx:
                    await conn.execute("INSERT INTO child VALUES (42)")  # checked at COMMIT
                    if mode == "explicit":
                        await tx.commit()
            assert tx.outcome == "rolled back"
            assert not conn.in_transaction
        assert await conn.fetchall("SELECT * FROM child") == []
