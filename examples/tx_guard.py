"""E03: a transaction guard that rolls back unless the block committed, also when cancelled.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

``TxGuard`` holds a ``sqlx`` transaction over a ``PgPool``; ``commit(self)`` commits it, and its
``Drop`` rolls back a transaction that was never committed, on every exit including a dropped
(cancelled) future. ``tc.commit_or_rollback`` is the Trio counterpart: it commits a block that
ended cleanly and rolls back one that raised or was cancelled, shielded from the cancellation
and bounded by a grace period.

By default the database is an embedded SQLite file (statements run in a worker thread). With
``--postgres DSN`` the same runs against a real PostgreSQL server through psycopg's sync API in
worker threads (psycopg's async API does not run under Trio); psycopg must be installed.

Shown: an insert committed; an insert whose block raises, rolled back; an insert whose block is
cancelled after its write but before its end, rolled back; the rows left in the table.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Protocol

import trio

import trio_cancel as tc


class Tx(Protocol):
    async def execute(self, sql: str, *params: object) -> None: ...
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    def rows(self) -> list[tuple[Any, ...]]: ...
    def close(self) -> None: ...


class SqliteTx:
    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False)

    async def execute(self, sql: str, *params: object) -> None:
        await trio.to_thread.run_sync(self._conn.execute, sql.replace("%s", "?"), params)

    async def commit(self) -> None:
        await trio.to_thread.run_sync(self._conn.commit)

    async def rollback(self) -> None:
        await trio.to_thread.run_sync(self._conn.rollback)

    def rows(self) -> list[tuple[Any, ...]]:
        return self._conn.execute("SELECT id, note FROM audit ORDER BY id").fetchall()

    def close(self) -> None:
        self._conn.close()


class PostgresTx:
    def __init__(self, dsn: str) -> None:
        import psycopg  # only with --postgres

        self._conn = psycopg.connect(dsn)

    async def execute(self, sql: str, *params: object) -> None:
        await trio.to_thread.run_sync(self._conn.execute, sql, params)

    async def commit(self) -> None:
        await trio.to_thread.run_sync(self._conn.commit)

    async def rollback(self) -> None:
        await trio.to_thread.run_sync(self._conn.rollback)

    def rows(self) -> list[tuple[Any, ...]]:
        self._conn.rollback()  # a fresh snapshot
        rows: list[tuple[Any, ...]] = self._conn.execute(
            "SELECT id, note FROM audit ORDER BY id"
        ).fetchall()
        return rows

    def close(self) -> None:
        self._conn.close()


async def insert(
    tx: Tx, row_id: int, note: str, *, fail: bool = False, stall: bool = False
) -> None:
    async with tc.commit_or_rollback(tx, grace=5.0) as guard:
        await tx.execute("INSERT INTO audit (id, note) VALUES (%s, %s)", row_id, note)
        if fail:
            raise ValueError("validation failed after the write")
        if stall:
            await trio.sleep(10)  # cancelled here, after the write
    print(f"  row {row_id}: {guard.outcome}")


async def main(dsn: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tx: Tx
        if dsn is None:
            tx = SqliteTx(Path(tmp) / "audit.db")
            print("database: SQLite file")
        else:
            tx = PostgresTx(dsn)
            print("database: PostgreSQL")
        try:
            await tx.execute("DROP TABLE IF EXISTS audit")
            await tx.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, note TEXT)")
            await tx.commit()

            print("clean block:")
            await insert(tx, 1, "committed")
            print("block raises:")
            try:
                await insert(tx, 2, "must not stay", fail=True)
            except ValueError as exc:
                print(f"  row 2: rolled back; {exc!r} propagated")
            print("block cancelled after its write:")
            with trio.move_on_after(0.05) as cs:
                await insert(tx, 3, "must not stay either", stall=True)
            print(f"  row 3: rolled back; cancelled: {cs.cancelled_caught}")
            print(f"rows in the table: {tx.rows()}")
        finally:
            tx.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="DSN", help="use a PostgreSQL server instead")
    trio.run(main, parser.parse_args().postgres)
