"""E26: a money transfer in a SQL transaction that is rolled back, not left hanging, on cancel.

Source: the async Rust book's chapter on cancellation (what happens when a pending future is
dropped).

``transfer_money`` begins a transaction, debits the payer, credits the payee and commits.
Cancelled in between, Rust drops the transaction and can only *schedule* its rollback. Here
``tc.commit_or_rollback`` awaits the rollback in place, shielded and bounded, and commits only a
block that ended without a pending cancellation.

Runs against a real SQLite file (in a temporary directory); every statement runs in a worker
thread. Shown:

1. the naive version, cancelled between debit and credit, leaves its transaction open: the
   database stays locked and another writer fails with "database is locked";
2. the guarded version, cancelled at the same place, rolls back: the other writer proceeds;
3. the guarded version cancelled at every one of its cancellation points in turn
   (``trio_cancel.testing.cancel_at_each_checkpoint``): the balances always add up, and each
   run moved either all of the amount or none of it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

import trio_cancel as tc
from trio_cancel.testing import cancel_at_each_checkpoint


class Connection:
    """One SQLite connection; statements run in a worker thread, one at a time."""

    def __init__(self, path: Path) -> None:
        # timeout: how long a writer waits for another's lock before "database is locked".
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=0.1)

    async def execute(self, sql: str, *params: object) -> None:
        await trio.to_thread.run_sync(self._conn.execute, sql, params)

    async def commit(self) -> None:
        await trio.to_thread.run_sync(self._conn.commit)

    async def rollback(self) -> None:
        await trio.to_thread.run_sync(self._conn.rollback)

    def close(self) -> None:
        self._conn.close()


async def naive_transfer(conn: Connection, payer: str, payee: str, amount: int) -> None:
    await conn.execute("UPDATE accounts SET balance = balance - ? WHERE name = ?", amount, payer)
    await trio.sleep(0.05)  # the network, a slow disk: where the cancellation lands
    await conn.execute("UPDATE accounts SET balance = balance + ? WHERE name = ?", amount, payee)
    await conn.commit()


async def transfer_money(conn: Connection, payer: str, payee: str, amount: int) -> None:
    async with tc.commit_or_rollback(conn, grace=2.0):
        await conn.execute(
            "UPDATE accounts SET balance = balance - ? WHERE name = ?", amount, payer
        )
        await trio.sleep(0.05)
        await conn.execute(
            "UPDATE accounts SET balance = balance + ? WHERE name = ?", amount, payee
        )


def balances(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return dict(conn.execute("SELECT name, balance FROM accounts ORDER BY name").fetchall())


async def other_writer(path: Path) -> str:
    conn = Connection(path)
    try:
        await conn.execute("UPDATE accounts SET balance = balance WHERE name = 'carol'")
        await conn.commit()
    except sqlite3.OperationalError as exc:
        return f"failed: {exc}"
    finally:
        conn.close()
    return "ok"


Transfer = Callable[[Connection, str, str, int], Awaitable[None]]


async def cancelled_mid_transfer(path: Path, transfer: Transfer) -> None:
    conn = Connection(path)
    with trio.move_on_after(0.02):
        await transfer(conn, "alice", "bob", 30)
    print(f"  balances after the cancel: {balances(path)}")
    print(f"  another writer meanwhile: {await other_writer(path)}")
    conn.close()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.db"
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("CREATE TABLE accounts (name TEXT PRIMARY KEY, balance INTEGER)")
            db.executemany(
                "INSERT INTO accounts VALUES (?, ?)", [("alice", 100), ("bob", 50), ("carol", 0)]
            )
        total = sum(balances(path).values())

        print("naive transfer, cancelled between debit and credit:")
        await cancelled_mid_transfer(path, naive_transfer)
        print("guarded transfer, cancelled at the same place:")
        await cancelled_mid_transfer(path, transfer_money)

        moved: list[int] = []
        last = balances(path)

        async def one_transfer() -> None:
            conn = Connection(path)
            try:
                await transfer_money(conn, "alice", "bob", 10)
            finally:
                conn.close()

        async def check() -> None:
            now = balances(path)
            assert sum(now.values()) == total, now
            delta = last["alice"] - now["alice"]
            assert delta in (0, 10), (last, now)
            assert now["bob"] - last["bob"] == delta, (last, now)
            moved.append(delta)
            last.update(now)

        result = await cancel_at_each_checkpoint(one_transfer, check=check)
        print(
            f"guarded transfer cancelled at each of its {result.points} cancellation points: "
            f"{moved.count(0)} runs moved nothing, {moved.count(10)} moved all 10, "
            f"none moved part; total still {total}"
        )
        print(f"final balances: {balances(path)}")


if __name__ == "__main__":
    trio.run(main)
