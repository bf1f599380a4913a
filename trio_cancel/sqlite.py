"""SQLite for Trio, where a cancellation interrupts the statement and rolls the transaction back.

``import trio_cancel.sqlite as tc_sqlite`` (standard library only; ``import trio_cancel`` does
not import it)::

    async with await tc_sqlite.connect("bank.db") as conn:
        async with conn.transaction():
            await conn.execute("UPDATE accounts SET balance = balance - 10 WHERE name = ?", ("a",))
            await conn.execute("UPDATE accounts SET balance = balance + 10 WHERE name = ?", ("b",))

Each connection owns one worker thread, where the ``sqlite3.Connection`` is created, used and
closed. Statements of tasks sharing a connection run one at a time, first come, first served.
The driver connection is in autocommit mode (``isolation_level=None``): a statement outside a
transaction block is its own transaction, and :meth:`Connection.transaction` issues ``BEGIN``
and ``COMMIT``/``ROLLBACK`` itself.

When a caller is cancelled while its statement runs, the statement is stopped with
``sqlite3.Connection.interrupt()`` (its ``OperationalError('interrupted')`` becomes the
``trio.Cancelled``), the caller waits, shielded and up to ``grace`` seconds, for the driver to
return, and an enclosing transaction block rolls back. A commit is never interrupted; it is
bounded by ``busy_timeout`` plus ``grace``.
"""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING, Any, final

from ._dbapi import Backend, DatabaseConnection, Interruption, TransactionBlock
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from ._dbapi import Parameters

__all__ = ["Connection", "TransactionBlock", "connect"]


def _is_interruption(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted"


def _execute(raw: sqlite3.Connection, sql: str, parameters: Parameters) -> int:
    return raw.execute(sql, parameters).rowcount


def _fetchone(raw: sqlite3.Connection, sql: str, parameters: Parameters) -> tuple[Any, ...] | None:
    row = raw.execute(sql, parameters).fetchone()
    return None if row is None else tuple(row)


def _fetchall(raw: sqlite3.Connection, sql: str, parameters: Parameters) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in raw.execute(sql, parameters).fetchall()]


def _interrupt(raw: sqlite3.Connection, _: Interruption) -> None:
    raw.interrupt()  # never blocks: it sets a flag the running statement checks


_BACKEND: Backend[sqlite3.Connection] = Backend(
    name="sqlite",
    interrupt=_interrupt,
    is_interruption=_is_interruption,
    in_transaction=lambda raw: raw.in_transaction,
    execute=_execute,
    fetchone=_fetchone,
    fetchall=_fetchall,
    close=sqlite3.Connection.close,
    refused=sqlite3.OperationalError,
)


@final
class Connection(DatabaseConnection[sqlite3.Connection], metaclass=NoPublicConstructor):
    """An open SQLite connection, built by :func:`connect`.

    States: *open*, then *closed* (:meth:`aclose`, or the end of ``async with``). Methods:
    :meth:`execute`, :meth:`fetchone`, :meth:`fetchall`, :meth:`transaction`, :meth:`aclose`;
    :attr:`in_transaction`. Two tasks sharing it are served first in, first out.
    """


async def connect(
    database: str | os.PathLike[str],
    *,
    grace: float = 5.0,
    busy_timeout: float = 5.0,
    **kwargs: Any,  # noqa: ANN401 - passed to sqlite3.connect
) -> Connection:
    """Open ``database`` in a new worker thread of its own.

    Args:
        database: A path, or ``":memory:"``.
        grace: Seconds a cancelled caller waits for an interrupted statement (or a commit or
            rollback) to return before its thread is abandoned.
        busy_timeout: Seconds SQLite waits for another connection's lock (``timeout`` of
            :func:`sqlite3.connect`). A commit is bounded by ``busy_timeout + grace``, so a
            commit that waits for a lock is never reported unknown before SQLite itself gave
            up (a ``PRAGMA busy_timeout`` run later is not seen by this bound).
        **kwargs: Other arguments of :func:`sqlite3.connect` (not ``isolation_level``:
            transactions are this module's).

    Raises:
        sqlite3.Error: The driver could not open the database.
        ValueError: ``busy_timeout`` is negative, NaN or infinite.
        TypeError: ``isolation_level``, ``autocommit``, ``check_same_thread`` or ``timeout``
            was given (this module manages them; ``busy_timeout`` is ``timeout``).

    Cancellation:
        Always a checkpoint. Opening is not interrupted; a caller cancelled meanwhile waits
        for it (up to ``grace``), the new connection is closed, and the cancellation raised.
    """
    for reserved in ("isolation_level", "check_same_thread", "autocommit", "timeout"):
        if reserved in kwargs:
            raise TypeError(f"connect() manages {reserved} itself; do not pass it")
    path = os.fspath(database)
    busy_timeout = _check_busy_timeout(busy_timeout)
    conn = Connection._create(_BACKEND, grace, repr(path), lock_wait=busy_timeout)
    await conn._open(
        lambda: sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, **kwargs)
    )
    return conn


def _check_busy_timeout(busy_timeout: float) -> float:
    if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)):
        raise TypeError(f"busy_timeout must be a number, not {type(busy_timeout).__name__}")
    try:
        value = float(busy_timeout)
    except OverflowError:
        raise ValueError(f"busy_timeout is too large: {busy_timeout!r}") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"busy_timeout must be finite and >= 0, not {busy_timeout!r}")
    return value
