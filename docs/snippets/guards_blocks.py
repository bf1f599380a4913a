"""The guards page's code blocks, each run on every route out of its block (tests/test_docs.py).

A pool whose release takes real awaits, a transaction over an in-memory SQLite database, and
a slow stream: what the page says about each block is asserted here.
"""

from __future__ import annotations

import sqlite3

import trio
import trio.testing

import trio_cancel as tc
from trio_cancel.testing import cancel_at_each_checkpoint


class Conn:
    def __init__(self) -> None:
        self.queries: list[str] = []

    async def execute(self, query: str) -> None:
        if query == "FAIL":
            raise RuntimeError("query failed")
        await trio.sleep(0.01 if query != "SLOW" else 3600)
        self.queries.append(query)


class Pool:
    def __init__(self) -> None:
        self.released = 0

    async def acquire(self) -> Conn:
        await trio.lowlevel.checkpoint()
        return Conn()

    async def release(self, conn: Conn) -> None:
        await trio.sleep(0.01)  # a real await: it would be cancelled if not shielded
        self.released += 1


async def run_query(pool: Pool, query: str, done_early: bool) -> None:
    # [docs-async-guard]
    conn = await pool.acquire()
    async with tc.async_guard(pool.release, conn, grace=5.0) as guard:
        await conn.execute(query)  # returns, raises, or is cancelled: release runs
        if done_early:
            await pool.release(conn)
            guard.disarm()  # the explicit path did the work
    # [/docs-async-guard]


class Tx:
    """A transaction on a SQLite connection: async commit() and rollback() are all it takes."""

    commits = 0

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.execute("BEGIN")

    async def execute(self, sql: str, *params: object) -> None:
        await trio.lowlevel.checkpoint()  # a cancellation point between statements
        self.db.execute(sql, params)

    async def commit(self) -> None:
        await trio.lowlevel.checkpoint()
        self.db.commit()
        Tx.commits += 1

    async def rollback(self) -> None:
        await trio.lowlevel.checkpoint()
        self.db.rollback()


async def transfer(tx: Tx, amount: int, payer: int, payee: int) -> None:
    # [docs-transaction]
    move = "UPDATE accounts SET balance = balance + ? WHERE id = ?"
    async with tc.commit_or_rollback(tx, grace=5.0):
        await tx.execute(move, -amount, payer)
        await tx.execute(move, amount, payee)
    # [/docs-transaction]


# [docs-may-cancel]
@tc.may_cancel
async def read_exactly(stream, buf, n, *, token: tc.CancellationToken) -> int:
    got = 0
    with token.cancel_scope():  # receive_some is cancel-safe: nothing lost
        while got < n and (chunk := await stream.receive_some(n - got)):
            buf += chunk
            got += len(chunk)
    return got
    # [/docs-may-cancel]


async def read_both_ways(stream, buf, deadline: tc.CancellationToken) -> tuple[int, int]:
    # [docs-may-cancel-calls]
    n = await read_exactly(stream, buf, 40).may_cancel_with(deadline)  # stops early
    m = await read_exactly(stream, buf, 40)  # to completion
    # [/docs-may-cancel-calls]
    return n, m


async def check_async_guard() -> None:
    pool = Pool()
    await run_query(pool, "SELECT 1", done_early=False)
    assert pool.released == 1  # a normal exit releases
    await run_query(pool, "SELECT 1", done_early=True)
    assert pool.released == 2  # the explicit path released, the disarmed guard did not
    error = None
    try:
        await run_query(pool, "FAIL", done_early=False)
    except RuntimeError as exc:
        error = exc
    assert str(error) == "query failed"  # the block's error propagates
    assert pool.released == 3  # an error releases, and still propagates
    with trio.move_on_after(0.05) as cs:
        await run_query(pool, "SLOW", done_early=False)
    assert cs.cancelled_caught
    assert pool.released == 4  # a cancellation releases, its awaits shielded
    conn = await pool.acquire()
    with trio.CancelScope() as cs:
        cs.cancel()
        async with tc.async_guard(pool.release, conn):  # cancelled as it enters
            raise AssertionError("the block does not run")
    assert cs.cancelled_caught
    assert pool.released == 5  # the cleanup still ran
    print("async_guard: released on every exit, once")


def open_bank() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
    db.executemany("INSERT INTO accounts VALUES (?, ?)", [(1, 100), (2, 0)])
    return db


def balances(db: sqlite3.Connection) -> list[int]:
    return [b for (b,) in db.execute("SELECT balance FROM accounts ORDER BY id")]


async def check_transaction() -> None:
    db = open_bank()
    await transfer(Tx(db), 30, 1, 2)
    assert balances(db) == [70, 30]  # a clean exit commits

    # Cancelled at each of its checkpoints in turn: all of the amount moves, or none of it.
    async def one_transfer() -> None:
        await transfer(Tx(db), 10, 1, 2)

    async def all_or_nothing() -> None:
        assert sum(balances(db)) == 100
        assert balances(db)[0] % 10 == 0

    commits = Tx.commits
    sweep = await cancel_at_each_checkpoint(one_transfer, check=all_or_nothing)
    done = Tx.commits - commits  # the uncancelled run, and those cut during the commit
    assert sweep.points + 1 - done >= 3, sweep  # cut before, between, after the updates
    assert balances(db) == [70 - 10 * done, 30 + 10 * done], (balances(db), sweep)
    # A cancellation pending when the block ends, never delivered inside it: rolled back.
    before = balances(db)
    tx = Tx(db)
    with trio.CancelScope() as cs:
        async with tc.commit_or_rollback(tx) as guard:
            await tx.execute("UPDATE accounts SET balance = 0")
            cs.cancel()  # no checkpoint after this in the block
    assert cs.cancelled_caught
    assert guard.outcome == "rolled back"
    assert balances(db) == before
    print("commit_or_rollback: all of the amount or none, cancelled anywhere")


async def check_may_cancel() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    buf = bytearray()
    deadline = tc.CancellationToken()
    async with trio.open_nursery() as nursery:

        async def device() -> None:
            await send.send_all(b"x" * 12)  # a dozen bytes, then a pause
            await trio.testing.wait_all_tasks_blocked()
            deadline.cancel("deadline")  # the read stops early, keeping what came
            await trio.testing.wait_all_tasks_blocked()
            await send.send_all(b"y" * 40)

        nursery.start_soon(device)
        n, m = await read_both_ways(receive, buf, deadline)
    assert (n, m) == (12, 40)
    assert buf == b"x" * 12 + b"y" * 40  # every byte once, none lost at the cancellation
    # The function's own token is a child: cancelling it never reaches the caller's.
    caller = tc.CancellationToken()

    @tc.may_cancel
    async def gives_up(*, token: tc.CancellationToken) -> bool:
        token.cancel("my own")
        return token.is_cancelled()

    assert await gives_up().may_cancel_with(caller)
    assert not caller.is_cancelled()
    # A cancellation from outside still raises trio.Cancelled.
    with trio.move_on_after(0.01) as cs:
        await read_exactly(receive, buf, 1)
    assert cs.cancelled_caught
    print(f"may_cancel: stopped early with {n} bytes, then read {m} to completion")


async def main() -> None:
    await check_async_guard()
    await check_transaction()
    await check_may_cancel()


trio.run(main)
