"""E04: a slow database query bounded by a 100 ms timeout.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

The Rust code wraps ``slow_database_query()`` (a 5 s sleep standing in for the query) in
``tokio::time::timeout(100 ms, ...)``; on ``Err(Elapsed)`` it logs "Query timed out" and returns
the error "Query timeout". Dropping the future cancels the query: it is not left running.

Trio version: ``trio.fail_after(0.1)`` is the counterpart of ``timeout`` (``TooSlowError`` for
``Elapsed``); the query's ``finally`` shows it was cancelled rather than left running. The same
timeout is then written with a token, ``token.cancel_after(0.1, ...)`` plus
``token.fail_scope()``, for when the deadline belongs to a request rather than to this call.

Finally a real slow query: a recursive SQLite query that would run for many seconds, in a
worker thread. ``trio.to_thread.run_sync`` would wait for it to finish (or abandon the thread
still running it); ``tc.run_sync_interruptible`` stops it with ``Connection.interrupt()`` when
the 100 ms deadline passes, and returns only once the thread is done with it.
"""

from __future__ import annotations

import sqlite3
import time

import trio

import trio_cancel as tc


class QueryTimeoutError(Exception):
    pass


async def slow_database_query() -> list[str]:
    start = trio.current_time()
    try:
        await trio.sleep(5)
        return ["row1", "row2"]
    finally:
        print(f"slow query stopped after {trio.current_time() - start:.2f} s (not left running)")


async def query_with_timeout() -> list[str]:
    try:
        with trio.fail_after(0.1):
            return await slow_database_query()
    except trio.TooSlowError:
        print("Query timed out")
        raise QueryTimeoutError("Query timeout") from None


async def query_with_token(token: tc.CancellationToken) -> list[str]:
    with token.fail_scope():
        return await slow_database_query()


async def main() -> None:
    start = trio.current_time()
    try:
        rows = await query_with_timeout()
        print(f"rows: {rows}")
    except QueryTimeoutError as exc:
        print(f"Error: {exc} (after {trio.current_time() - start:.2f} s)")

    print("--- the same deadline carried by a token")
    token = tc.CancellationToken()
    token.cancel_after(0.1, "Query timeout")
    try:
        await query_with_token(token)
    except tc.OperationCancelledError as exc:
        print(f"Error: {exc.reason}")

    print("--- a real slow SQLite query, interrupted in its worker thread")
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    query = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000000) "
        "SELECT count(*) FROM c"
    )
    state = {"thread": "running"}

    def run_query() -> int:
        try:
            return int(conn.execute(query).fetchone()[0])
        finally:
            state["thread"] = "returned"

    started = time.perf_counter()
    try:
        with trio.fail_after(0.1):
            await tc.run_sync_interruptible(run_query, interrupt=conn.interrupt)
    except trio.TooSlowError:
        print(
            f"Query timed out after {time.perf_counter() - started:.2f} s; "
            f"its thread had {state['thread']}"
        )
    finally:
        conn.close()


if __name__ == "__main__":
    trio.run(main)
