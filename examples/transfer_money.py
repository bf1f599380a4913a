"""E26: a money transfer in a SQL transaction that is rolled back, not left hanging, on cancel.

Source: the async Rust book's chapter on cancellation (what happens when a pending future is
dropped).

``transfer_money`` begins a transaction, debits the payer, credits the payee and commits.
Cancelled in between, Rust drops the transaction and can only *schedule* its rollback. Here
``conn.transaction()`` (``trio_cancel.sqlite``, or ``trio_cancel.postgres`` with
``--postgres DSN``) awaits the rollback in place, shielded and bounded, interrupts a statement
that the cancellation caught running, and commits only a block that ended without a pending
cancellation.

Shown:

1. the naive version (``BEGIN`` by hand), cancelled between debit and credit, leaves its
   transaction open: the payer's row stays locked and another writer fails;
2. the guarded version, cancelled at the same place, rolls back: the other writer proceeds;
3. the guarded version cancelled at every one of its cancellation points in turn
   (``trio_cancel.testing.cancel_at_each_checkpoint``), and 200 times at random moments: the
   balances always add up, and each run moved either all of the amount or none of it.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import trio_cancel.sqlite as tc_sqlite
from trio_cancel._dbapi import DatabaseConnection
from trio_cancel.testing import cancel_at_each_checkpoint

Conn = DatabaseConnection[Any]


async def naive_transfer(conn: Conn, p: str, payer: str, payee: str, amount: int) -> None:
    await conn.execute("BEGIN")
    await conn.execute(
        f"UPDATE accounts SET balance = balance - {p} WHERE name = {p}", (amount, payer)
    )
    await trio.sleep(0.05)  # the network, a slow disk: where the cancellation lands
    await conn.execute(
        f"UPDATE accounts SET balance = balance + {p} WHERE name = {p}", (amount, payee)
    )
    await conn.execute("COMMIT")


async def transfer_money(
    conn: Conn, p: str, payer: str, payee: str, amount: int, pause: float = 0.05
) -> None:
    async with conn.transaction():
        await conn.execute(
            f"UPDATE accounts SET balance = balance - {p} WHERE name = {p}", (amount, payer)
        )
        await trio.sleep(pause)
        await conn.execute(
            f"UPDATE accounts SET balance = balance + {p} WHERE name = {p}", (amount, payee)
        )


Transfer = Callable[[Conn, str, str, str, int], Awaitable[None]]


class Bank:
    def __init__(self, connect: Callable[[], Awaitable[Conn]], p: str, postgres: bool) -> None:
        self.connect = connect
        self.p = p
        self.postgres = postgres

    async def balances(self) -> dict[str, int]:
        async with await self.connect() as conn:
            rows = await conn.fetchall("SELECT name, balance FROM accounts ORDER BY name")
        return {str(name): int(balance) for name, balance in rows}

    async def other_writer(self) -> str:
        """Touch the payer's row, waiting at most 0.1 s for a lock."""
        async with await self.connect() as conn:
            if self.postgres:
                await conn.execute("SET lock_timeout = '100ms'")
            try:
                await conn.execute("UPDATE accounts SET balance = balance WHERE name = 'alice'")
            except Exception as exc:  # noqa: BLE001 - the driver's lock error, shown
                return f"failed, the row is locked ({type(exc).__name__})"
        return "ok"

    async def cancelled_mid_transfer(self, transfer: Transfer) -> None:
        async with await self.connect() as conn:
            with trio.move_on_after(0.02):
                await transfer(conn, self.p, "alice", "bob", 30)
            print(f"  balances after the cancel: {await self.balances()}")
            print(f"  another writer meanwhile: {await self.other_writer()}")
            print(f"  the cancelled connection still in a transaction: {conn.in_transaction}")


async def main(dsn: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if dsn is None:
            path = Path(tmp) / "bank.db"
            bank = Bank(lambda: tc_sqlite.connect(path, busy_timeout=0.1), "?", postgres=False)
            print("database: SQLite file")
        else:
            import trio_cancel.postgres as tc_postgres  # only with --postgres

            bank = Bank(lambda: tc_postgres.connect(dsn), "%s", postgres=True)
            print("database: PostgreSQL")
        async with await bank.connect() as conn:
            await conn.execute("DROP TABLE IF EXISTS accounts")
            await conn.execute("CREATE TABLE accounts (name TEXT PRIMARY KEY, balance INTEGER)")
            await conn.execute(
                "INSERT INTO accounts VALUES ('alice', 100), ('bob', 50), ('carol', 0)"
            )
        total = sum((await bank.balances()).values())

        print("naive transfer, cancelled between debit and credit:")
        await bank.cancelled_mid_transfer(naive_transfer)
        print("guarded transfer, cancelled at the same place:")
        await bank.cancelled_mid_transfer(transfer_money)

        moved: list[int] = []
        last = await bank.balances()
        conn = await bank.connect()

        async def one_transfer() -> None:
            await transfer_money(conn, bank.p, "alice", "bob", 10, pause=0.002)

        async def check() -> None:
            now = await bank.balances()
            assert sum(now.values()) == total, now
            delta = last["alice"] - now["alice"]
            assert delta in (0, 10), (last, now)
            assert now["bob"] - last["bob"] == delta, (last, now)
            moved.append(delta)
            last.update(now)

        async with conn:
            result = await cancel_at_each_checkpoint(one_transfer, check=check)
            print(
                f"guarded transfer cancelled at each of its {result.points} cancellation "
                f"points: {moved.count(0)} runs moved nothing, {moved.count(10)} moved all 10, "
                f"none moved part; total still {total}"
            )
            rng = random.Random(26)
            moved.clear()
            for _ in range(200):
                with trio.move_on_after(rng.uniform(0, 0.006)):
                    await one_transfer()
                await check()
        print(
            f"200 transfers with random deadlines: {moved.count(10)} moved all, "
            f"{moved.count(0)} moved nothing, none moved part; total still {total}"
        )
        print(f"final balances: {await bank.balances()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", metavar="DSN", help="use a PostgreSQL server instead")
    trio.run(main, parser.parse_args().postgres)
