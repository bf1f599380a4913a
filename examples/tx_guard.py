"""E03: a transaction guard that rolls back unless the block committed, also when cancelled.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

``TxGuard`` holds a ``sqlx`` transaction over a ``PgPool``; ``commit(self)`` commits it, and its
``Drop`` rolls back a transaction that was never committed, on every exit including a dropped
(cancelled) future and an early ``return``. ``conn.transaction(commit="explicit")`` of
``trio_cancel.sqlite`` / ``trio_cancel.postgres`` is that guard: only ``await tx.commit()``
commits. The default, ``conn.transaction()``, follows Python's convention instead (as
``sqlite3`` and SQLAlchemy do, and ``tc.commit_or_rollback``): a clean exit commits, an early
``return`` included. Both roll back a block that raised or was cancelled, shielded from the
cancellation and bounded by a grace period, and a cancelled statement is interrupted in the
database, not left running.

By default the database is an embedded SQLite file; with ``--postgres DSN`` the same runs
against a real PostgreSQL server (``pip install 'trio_cancel[postgres]'``).

Shown, for each row: how its block ended, and its fate as the block's own ``tx.outcome``
reports it; then the rows the table really holds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

import trio_cancel.sqlite as tc_sqlite

if TYPE_CHECKING:
    from trio_cancel._dbapi import DatabaseConnection, TransactionBlock


async def insert(
    conn: DatabaseConnection[Any],
    p: str,
    row_id: int,
    *,
    explicit: bool = False,
    commit: bool = False,
    early_return: bool = False,
) -> TransactionBlock:
    tx = conn.transaction(commit="explicit" if explicit else "on_exit")
    async with tx:
        await conn.execute(f"INSERT INTO audit (id) VALUES ({p})", (row_id,))
        if early_return:
            return tx  # Rust's TxGuard rolls this back; so does the explicit mode
        if commit:
            await tx.commit()
    return tx


async def main(dsn: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if dsn is None:
            conn: DatabaseConnection[Any] = await tc_sqlite.connect(Path(tmp) / "audit.db")
            p = "?"
            print("database: SQLite file")
        else:
            import trio_cancel.postgres as tc_postgres  # only with --postgres

            conn = await tc_postgres.connect(dsn)
            p = "%s"
            print("database: PostgreSQL")
        async with conn:
            await conn.execute("DROP TABLE IF EXISTS audit")
            await conn.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY)")

            def fate(row_id: int, how: str, tx: TransactionBlock) -> None:
                print(f"  row {row_id}: {how:<38} -> {tx.outcome}")

            print('commit="on_exit" (the default; like sqlite3 and SQLAlchemy):')
            fate(1, "clean exit", await insert(conn, p, 1))
            fate(2, "early return", await insert(conn, p, 2, early_return=True))
            block = conn.transaction()
            try:
                async with block:
                    await conn.execute(f"INSERT INTO audit (id) VALUES ({p})", (3,))
                    raise ValueError("validation failed after the write")
            except ValueError:
                fate(3, "raised ValueError", block)
            block = conn.transaction()
            with trio.move_on_after(0.05) as cs:
                async with block:
                    await conn.execute(f"INSERT INTO audit (id) VALUES ({p})", (4,))
                    await trio.sleep(10)
            fate(4, f"cancelled after its write ({cs.cancelled_caught})", block)

            print('commit="explicit" (like TxGuard: only commit() commits):')
            fate(
                5, "commit() then clean exit", await insert(conn, p, 5, explicit=True, commit=True)
            )
            fate(6, "clean exit without commit()", await insert(conn, p, 6, explicit=True))
            fate(7, "early return", await insert(conn, p, 7, explicit=True, early_return=True))

            rows = await conn.fetchall("SELECT id FROM audit ORDER BY id")
            print(f"rows in the table: {[row[0] for row in rows]}")
            print(f"connection in a transaction afterwards: {conn.in_transaction}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="DSN", help="use a PostgreSQL server instead")
    trio.run(main, parser.parse_args().postgres)
