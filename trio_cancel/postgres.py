"""PostgreSQL for Trio through psycopg 3, where a cancellation stops the query on the server.

``import trio_cancel.postgres as tc_postgres`` needs the extra: ``pip install
'trio_cancel[postgres]'`` (``import trio_cancel`` does not import this module)::

    async with await tc_postgres.connect("postgresql://app@127.0.0.1/bank") as conn:
        async with conn.transaction():
            await conn.execute("UPDATE accounts SET balance = balance - 10 WHERE name = %s", ("a",))

psycopg's async API does not run under Trio (it needs asyncio), so each connection owns one
worker thread driving psycopg's sync API, as ``trio_cancel.sqlite`` does. The connection is in
autocommit mode; :meth:`Connection.transaction` issues ``BEGIN`` and ``COMMIT``/``ROLLBACK``.

When a caller is cancelled while its query runs, the query is cancelled on the server with
``Connection.cancel_safe()``, sent from a thread of its own (never from the Trio thread); its
``QueryCanceled`` error becomes the ``trio.Cancelled``. The caller waits, shielded and up to
``grace`` seconds, for the driver to return, and an enclosing transaction block rolls back. If
the query still runs half of ``grace`` after the cancel (the server or the network path stopped
answering), the connection's socket is shut, the caller gets its cancellation, and the
connection is discarded (later calls raise ``trio.ClosedResourceError`` saying why). A commit
is never interrupted; it is bounded by ``grace`` plus ``lock_timeout`` when that is set.
Parameters use psycopg's placeholders (``%s``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, final

import trio

try:
    import psycopg
    from psycopg.pq import TransactionStatus
except ImportError as _missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "trio_cancel.postgres needs psycopg 3: pip install 'trio_cancel[postgres]'"
    ) from _missing

from ._dbapi import Backend, DatabaseConnection, Interruption, TransactionBlock
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from ._dbapi import Parameters

__all__ = ["Connection", "TransactionBlock", "connect"]


def _is_interruption(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.errors.QueryCanceled)


def _interrupt(raw: psycopg.Connection[Any], intr: Interruption) -> None:
    """Start the cancel thread of a running statement (once per statement; never blocks).

    The thread sends the cancel request (``cancel_safe``, bounded by half the grace period),
    then waits for the statement to end until half the grace period has passed since the
    interrupt; if it is still running (a server or a network path that stopped answering),
    the thread shuts the connection's socket, so that the worker returns at once with an
    error: the statement then counts as interrupted and the connection is discarded.
    """
    if intr.cancel_done is not None:
        return  # a repeated interrupt: the cancel thread is already at work
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    ended = threading.Event()
    intr.cancel_done, intr.cancel_ended = done, ended
    half = min(max(intr.grace / 2, 0.01), 3600.0)
    escalate_at = time.monotonic() + half

    def cancel() -> None:
        # Timed out or refused: escalate below.
        with contextlib.suppress(Exception):
            raw.cancel_safe(timeout=half)
        if not intr.wait_ended(max(0.0, escalate_at - time.monotonic())):
            intr.socket_shut = True
            _shut_socket(raw)

    def deliver(_: object) -> None:
        ended.set()
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    trio.lowlevel.start_thread_soon(cancel, deliver, name="trio_cancel postgres cancel")


def _shut_socket(raw: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down (both ways), so a call blocked on it returns."""
    try:
        duplicate = socket.socket(fileno=os.dup(raw.pgconn.socket))
    except (OSError, psycopg.Error):
        return  # already closed
    with duplicate, contextlib.suppress(OSError):
        duplicate.shutdown(socket.SHUT_RDWR)


def _lock_wait(raw: psycopg.Connection[Any]) -> float:
    """The session's ``lock_timeout`` in seconds (0: not set, or a failed transaction)."""
    if raw.info.transaction_status == TransactionStatus.INERROR:
        return 0.0  # no query runs in a failed transaction: the COMMIT ends it at once
    row = raw.execute("SELECT setting FROM pg_settings WHERE name = 'lock_timeout'").fetchone()
    return 0.0 if row is None else float(row[0]) / 1000.0


_FAILED = (
    "the PostgreSQL transaction of this block had failed (a statement of the block raised, "
    "or was cancelled, and the error was caught inside the block), so the server rolled it "
    "back instead of committing it: nothing of the block was committed"
)


def _commit(raw: psycopg.Connection[Any]) -> None:
    """COMMIT, or raise ``InFailedSqlTransaction`` if the server rolled back instead."""
    if raw.info.transaction_status == TransactionStatus.INERROR:
        raw.execute("ROLLBACK")
        raise psycopg.errors.InFailedSqlTransaction(_FAILED)
    cursor = raw.execute("COMMIT")
    if cursor.statusmessage == "ROLLBACK":  # what the server did with a failed transaction
        raise psycopg.errors.InFailedSqlTransaction(_FAILED)


def _in_transaction(raw: psycopg.Connection[Any]) -> bool:
    return raw.info.transaction_status != TransactionStatus.IDLE


def _execute(raw: psycopg.Connection[Any], sql: str, parameters: Parameters) -> int:
    return raw.execute(sql, parameters or None).rowcount


def _fetchone(
    raw: psycopg.Connection[Any], sql: str, parameters: Parameters
) -> tuple[Any, ...] | None:
    row = raw.execute(sql, parameters or None).fetchone()
    return None if row is None else tuple(row)


def _fetchall(
    raw: psycopg.Connection[Any], sql: str, parameters: Parameters
) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in raw.execute(sql, parameters or None).fetchall()]


_BACKEND: Backend[psycopg.Connection[Any]] = Backend(
    name="postgres",
    interrupt=_interrupt,
    is_interruption=_is_interruption,
    in_transaction=_in_transaction,
    execute=_execute,
    fetchone=_fetchone,
    fetchall=_fetchall,
    close=lambda raw: raw.close(),
    lock_wait=_lock_wait,
    is_broken=lambda raw: raw.broken,
    shut_socket=_shut_socket,
    commit=_commit,
    refused=psycopg.errors.InFailedSqlTransaction,
)


@final
class Connection(DatabaseConnection["psycopg.Connection[Any]"], metaclass=NoPublicConstructor):
    """An open PostgreSQL connection, built by :func:`connect`.

    States: *open*, then *closed* (:meth:`aclose`, or the end of ``async with``). Methods:
    :meth:`execute`, :meth:`fetchone`, :meth:`fetchall`, :meth:`transaction`, :meth:`aclose`;
    :attr:`in_transaction`. Two tasks sharing it are served first in, first out.
    """


async def connect(
    dsn: str,
    *,
    grace: float = 5.0,
    connect_timeout: float = 10.0,
    **kwargs: Any,  # noqa: ANN401 - passed to psycopg.connect
) -> Connection:
    """Connect to ``dsn`` from a new worker thread of its own.

    Args:
        dsn: A libpq connection string or URI.
        grace: Seconds a cancelled caller waits for a cancelled query (or a commit or
            rollback) to return before its thread is abandoned.
        connect_timeout: Seconds libpq may take to connect.
        **kwargs: Other arguments of :func:`psycopg.connect` (not ``autocommit``).

    Raises:
        psycopg.OperationalError: The server could not be reached.
        TypeError: ``autocommit`` was given.

    Cancellation:
        Always a checkpoint. Connecting is not interrupted; a caller cancelled meanwhile
        waits for it (up to ``grace``), the new connection is closed, and the cancellation
        raised.
    """
    if "autocommit" in kwargs:
        raise TypeError("connect() manages autocommit itself; do not pass it")
    conn = Connection._create(_BACKEND, grace, _redact(dsn))
    timeout = max(1, round(connect_timeout))
    await conn._open(
        lambda: psycopg.connect(dsn, autocommit=True, connect_timeout=timeout, **kwargs)
    )
    return conn


def _redact(dsn: str) -> str:
    """The DSN without its password, for reprs and thread names."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<dsn>"
    host, port, dbname = info.get("host", ""), info.get("port", ""), info.get("dbname", "")
    return f"{host}:{port}/{dbname}"


# The cancellation bus (open_cancel_bus, CancelBus, RemoteCancel, Landing).
from ._cancel_bus import *  # noqa: E402, F403

__all__ += ["CancelBus", "Landing", "RemoteCancel", "open_cancel_bus"]  # noqa: F405
