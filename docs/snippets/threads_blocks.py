"""The threads page's code blocks, run with what the page says about them asserted
(tests/test_docs.py): a SQLite query that would never end, cut by its deadline; a transfer
with ``trio_cancel.sqlite``; a send whose progress is exact when its token fires."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import warnings

import trio
import trio.testing

import trio_cancel as tc

# Counts rows for ever: only an interrupt stops it.
slow_query = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
)


async def interruptible(path: str) -> bool:
    rows = None
    # [docs-interruptible]
    conn = sqlite3.connect(path, check_same_thread=False)
    with trio.move_on_after(0.2):
        rows = await tc.run_sync_interruptible(
            lambda: conn.execute(slow_query).fetchall(),
            interrupt=conn.interrupt,  # called from the Trio thread when cancelled
            grace=5.0,  # how long to wait for the call to return after it
        )
    # [/docs-interruptible]
    assert rows is None
    assert conn.execute("SELECT 42").fetchall() == [(42,)]  # the connection still works
    conn.close()
    return True


async def bank() -> list[tuple[str, int]]:
    with sqlite3.connect("bank.db") as setup:
        setup.execute("CREATE TABLE accounts (name TEXT PRIMARY KEY, balance INTEGER)")
        setup.execute("INSERT INTO accounts VALUES ('a', 100), ('b', 100)")
    setup.close()
    # [docs-sqlite]
    import trio_cancel.sqlite as tc_sqlite

    move = "UPDATE accounts SET balance = balance + ? WHERE name = ?"
    async with await tc_sqlite.connect("bank.db") as conn:
        async with conn.transaction():
            await conn.execute(move, (-10, "a"))
            await conn.execute(move, (10, "b"))
        rows = await conn.fetchall("SELECT name, balance FROM accounts")
    # [/docs-sqlite]
    # A cancelled block rolls back: cancelled between its two statements, nothing moved.
    async with await tc_sqlite.connect("bank.db") as conn:
        with trio.CancelScope() as cs:
            async with conn.transaction() as tx:
                await conn.execute(move, (-10, "a"))
                cs.cancel()
                await conn.execute(move, (10, "b"))
        assert cs.cancelled_caught
        assert tx.outcome == "rolled back"
        assert await conn.fetchall("SELECT name, balance FROM accounts") == rows
    return rows


async def send_with_token(
    stream: trio.SocketStream, payload: bytes, token: tc.CancellationToken
) -> int:
    # [docs-send]
    buf = bytearray(payload)
    with token.cancel_scope():
        await tc.send_all_from(stream, buf)  # buf loses each byte as it goes out
    sent = len(payload) - len(buf)  # exact, whenever the token fired
    # [/docs-send]
    return sent


async def partial_send() -> None:
    a, b = trio.socket.socketpair()
    sender, receiver = trio.SocketStream(a), trio.SocketStream(b)
    payload = os.urandom(8 * 1024 * 1024)  # far more than the socket buffers hold
    token = tc.CancellationToken()
    received = bytearray()
    async with trio.open_nursery() as nursery:

        async def read_some_then_fire() -> None:
            while len(received) < 100_000:
                received.extend(await receiver.receive_some())
            await trio.testing.wait_all_tasks_blocked()  # the sender is blocked: buffers full
            token.cancel("enough")

        nursery.start_soon(read_some_then_fire)
        sent = await send_with_token(sender, payload, token)
    await sender.aclose()
    while chunk := await receiver.receive_some():  # what was sent and not yet read
        received.extend(chunk)
    assert 0 < sent < len(payload)
    assert received == payload[:sent]  # exactly the bytes counted as sent, no more
    print(f"send_all_from: {sent} of {len(payload)} bytes sent, counted exactly")


async def main() -> None:
    start = os.getcwd()
    with tempfile.TemporaryDirectory() as directory:
        os.chdir(directory)  # bank.db is created here
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a CleanupTimeoutWarning would fail the run
            assert await interruptible(os.path.join(directory, "slow.db"))
        stats = tc.thread_call_statistics()
        assert stats.interrupted == 1
        assert stats.abandoned == 0
        print("run_sync_interruptible: the query was interrupted at its deadline")
        assert await bank() == [("a", 90), ("b", 110)]
        print("trio_cancel.sqlite: committed the transfer; a cancelled one rolled back")
        os.chdir(start)
    await partial_send()


trio.run(main)
