"""What ``trio_cancel.sqlite`` and ``trio_cancel.postgres`` share: a connection that owns one
worker thread, statements a cancellation interrupts, and transactions that are never torn.

A driver connection lives in its :class:`ConnectionThread` from ``connect`` to ``aclose``:
every call on it runs there (SQLite objects are thread-affine, and one thread per connection
keeps psycopg's sync API happy). The Trio side submits :class:`~trio_cancel._threads.ThreadCall`
s and waits for them with :func:`~trio_cancel._threads.wait_call`, which interrupts the
statement (``interrupt()`` of the backend) when the caller is cancelled.

Invariants:

1. Calls on one connection run one at a time, in the order the tasks asked (a FIFO
   :class:`trio.Lock`), except inside a transaction block, which holds that lock from its
   entry to its exit: only the task that opened it runs statements meanwhile.
2. A block never ends with the transaction open: its exit commits or rolls back (shielded,
   bounded by ``grace``), so ``in_transaction`` is False after every block, cancelled or not.
3. A commit is never interrupted: it completes or fails on its own, within ``grace``.
"""

from __future__ import annotations

import functools
import queue
import threading
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar, final

import attrs
import trio

from ._checks import check_grace
from ._guard import bounded, clean_up, combine, commit_bounded, pending_cancel
from ._threads import ThreadCall, wait_call
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import TracebackType

    # A statement's parameters: positional (a sequence) or named (a mapping), of any value
    # the driver can adapt (each driver checks its own values at the call).
    Parameters = Sequence[object] | Mapping[str, object]

T = TypeVar("T")
RawT = TypeVar("RawT")


class ConnectionThread:
    """One daemon thread that runs the calls of one connection, first in, first out."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[ThreadCall[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (call := self._jobs.get()) is not None:
            call.run_in_thread()

    def submit(self, call: ThreadCall[Any]) -> None:
        self._jobs.put(call)

    def stop(self) -> None:
        """The thread ends after the calls already submitted."""
        self._jobs.put(None)


@attrs.define(eq=False, repr=False)
class Backend(Generic[RawT]):
    """What differs between drivers: each function runs in the connection's thread, except
    ``interrupt``, which is called from the Trio thread while a statement runs."""

    name: str
    interrupt: Callable[[RawT], object]
    is_interruption: Callable[[BaseException], bool]
    in_transaction: Callable[[RawT], bool]
    execute: Callable[[RawT, str, Parameters], int]
    fetchone: Callable[[RawT, str, Parameters], tuple[Any, ...] | None]
    fetchall: Callable[[RawT, str, Parameters], list[tuple[Any, ...]]]
    close: Callable[[RawT], object]


class DatabaseConnection(Generic[RawT]):
    """The connection API of both backends (see ``trio_cancel.sqlite.Connection``)."""

    def __init__(self, backend: Backend[RawT], grace: float, label: str) -> None:
        self._backend = backend
        self._grace = check_grace(grace)
        self._label = label
        self._thread = ConnectionThread(f"trio_cancel {backend.name} {label}")
        self._raw: RawT | None = None
        self._lock = trio.Lock()
        self._owner: trio.lowlevel.Task | None = None
        self._closed = False
        self._running: ThreadCall[Any] | None = None
        self._in_transaction = False

    async def _open(self, connect: Callable[[], RawT]) -> None:
        """Create the driver connection in the connection's thread.

        Cancellation: a checkpoint. Connecting is not interrupted: a cancelled caller waits
        up to ``grace`` for it, then the new connection is closed and the cancellation raised.
        """
        call = ThreadCall(connect, f"{self._backend.name}.connect")
        self._thread.submit(call)
        try:
            self._raw = await wait_call(
                call, interrupt=None, grace=self._grace, is_interruption=None, what="connect()"
            )
        except BaseException:
            self._closed = True
            self._thread.stop()
            raise
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except trio.Cancelled:
            await self.aclose()  # connected as the caller was cancelled: do not leak it
            raise

    # ------------------------------------------------------------------ public surface

    @property
    def in_transaction(self) -> bool:
        """Whether the driver connection was inside a transaction after its last call."""
        return self._in_transaction

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called (or connecting failed)."""
        return self._closed

    async def execute(
        self, sql: str, parameters: Sequence[object] | Mapping[str, object] = ()
    ) -> int:
        """Run one statement; returns the driver's ``rowcount``.

        Raises:
            trio.ClosedResourceError: The connection is closed (also when it is closed while
                the statement waits or runs).
            Exception: The driver's own error for a failing statement, unchanged.

        Cancellation:
            Always a checkpoint. Cancelled while waiting for its turn: nothing ran. Cancelled
            while the statement runs: it is interrupted, and the caller waits (shielded, up to
            ``grace``) until the driver has returned. Inside a transaction block, the block's
            exit then rolls the transaction back. A statement that completed as the
            cancellation arrived keeps its result (the cancellation comes at the next
            checkpoint).
        """
        backend = self._backend
        return await self._call(lambda raw: backend.execute(raw, sql, parameters), sql)

    async def fetchone(
        self, sql: str, parameters: Sequence[object] | Mapping[str, object] = ()
    ) -> tuple[Any, ...] | None:
        """Run a query and return its first row (``None`` if none). As :meth:`execute`.

        Cancellation:
            As :meth:`execute`.
        """
        backend = self._backend
        return await self._call(lambda raw: backend.fetchone(raw, sql, parameters), sql)

    async def fetchall(
        self, sql: str, parameters: Sequence[object] | Mapping[str, object] = ()
    ) -> list[tuple[Any, ...]]:
        """Run a query and return all its rows. As :meth:`execute`.

        Cancellation:
            As :meth:`execute`.
        """
        backend = self._backend
        return await self._call(lambda raw: backend.fetchall(raw, sql, parameters), sql)

    def transaction(
        self, *, commit: Literal["on_exit", "explicit"] = "on_exit"
    ) -> TransactionBlock:
        """``async with conn.transaction() as tx:`` a transaction for the task that opens it.

        Two modes:

        * ``commit="on_exit"`` (the default, Python's convention as in ``sqlite3`` and
          SQLAlchemy, and :func:`trio_cancel.commit_or_rollback`'s): a clean exit commits, an
          early ``return`` included; an exception or a cancellation rolls back.
        * ``commit="explicit"`` (Rust's transaction guard): only ``await tx.commit()`` inside
          the block commits; any exit without it rolls back, a clean one included.

        The block holds the connection: other tasks' calls on it wait until the block ends.
        ``tx.outcome`` says what the exit did.

        Raises:
            ValueError: ``commit`` is neither ``"on_exit"`` nor ``"explicit"``.

        Not a checkpoint; never blocks (entering and leaving the block are).
        """
        if commit not in ("on_exit", "explicit"):
            raise ValueError(f"commit must be 'on_exit' or 'explicit', not {commit!r}")
        return TransactionBlock._create(self, commit)

    async def aclose(self) -> None:
        """Close the connection: a statement running in another task is interrupted (that
        task gets :exc:`trio.ClosedResourceError`), then the driver connection is closed in
        its thread and the thread ends. Idempotent.

        Cancellation:
            Always a checkpoint. Closing happens even if the caller is cancelled (shielded,
            bounded by ``grace``); the cancellation is raised after.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        running = self._running
        if running is not None and self._raw is not None:
            raw = self._raw
            running.interrupt_if_running(lambda: self._backend.interrupt(raw))
        with trio.move_on_after(self._grace, shield=True):
            if self._raw is not None:
                raw_conn, close = self._raw, self._backend.close
                call = ThreadCall(lambda: close(raw_conn), f"{self._backend.name}.close")
                self._thread.submit(call)
                await call.done.wait()
        self._thread.stop()
        self._in_transaction = False
        await trio.lowlevel.checkpoint_if_cancelled()

    async def __aenter__(self) -> Self:
        """Not a checkpoint: the connection is already open (from ``await connect(...)``)."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancellation: as :meth:`aclose`."""
        await self.aclose()  # noqa: ASYNC102 - shielded and bounded inside

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        if self._owner is not None:
            state += ", in a transaction block"
        return f"<{type(self).__module__}.Connection {state} {self._label}>"

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"this {self._backend.name} connection is closed")

    async def _call(self, fn: Callable[[RawT], T], what: str, *, interruptible: bool = True) -> T:
        self._check_open()
        if self._owner is trio.lowlevel.current_task():
            return await self._run(fn, what, interruptible)
        async with self._lock:
            self._check_open()
            return await self._run(fn, what, interruptible)

    async def _run(self, fn: Callable[[RawT], T], what: str, interruptible: bool) -> T:
        raw = self._raw
        assert raw is not None
        backend = self._backend

        def job() -> T:
            try:
                return fn(raw)
            finally:
                self._in_transaction = backend.in_transaction(raw)

        call = ThreadCall(job, _shorten(what))
        self._running = call
        self._thread.submit(call)
        try:
            return await wait_call(
                call,
                interrupt=(lambda: backend.interrupt(raw)) if interruptible else None,
                grace=self._grace,
                is_interruption=backend.is_interruption,
                what=f"{backend.name} statement",
            )
        except Exception as exc:
            if self._closed and backend.is_interruption(exc):
                raise trio.ClosedResourceError(
                    f"the {backend.name} connection was closed while this statement ran"
                ) from exc
            raise
        finally:
            self._running = None


def _shorten(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 60 else text[:57] + "..."


@final
@attrs.define(eq=False, repr=False)
class TransactionBlock(metaclass=NoPublicConstructor):
    """A transaction block of a connection: ``async with conn.transaction() as tx:``.

    States: *new*, *open* (inside the block, after ``BEGIN``), then *committed*, *rolled
    back* or *rollback timed out* (``outcome``). Built by ``Connection.transaction()``.

    Attributes:
        outcome: ``None`` while the block runs; then ``"committed"``, ``"rolled back"`` or
            ``"rollback timed out"``.
        mode: ``"on_exit"`` or ``"explicit"`` (see ``Connection.transaction``).
    """

    _conn: DatabaseConnection[Any]
    mode: Literal["on_exit", "explicit"]
    outcome: Literal["committed", "rolled back", "rollback timed out"] | None = attrs.field(
        default=None, init=False
    )
    _state: Literal["new", "open", "done"] = attrs.field(default="new", init=False)

    async def commit(self) -> None:
        """Commit now, inside the block (the explicit mode's only way to commit; allowed in
        the default mode too). The block's exit then does nothing more.

        Raises:
            RuntimeError: Outside the block, from another task, or after the transaction
                ended.
            Exception: The driver's error if the commit fails; the transaction is then rolled
                back and the error propagates.

        Cancellation:
            Always a checkpoint. The commit runs shielded, bounded by ``grace``: it is never
            torn. A cancellation that arrives meanwhile is raised after it (``outcome`` is
            then ``"committed"``).
        """
        self._check_in_block("commit()")
        await self._commit_bounded()

    async def _commit_bounded(self) -> None:
        await commit_bounded(
            self._conn._grace,
            self._commit,
            self._committed,
            functools.partial(self._rollback_now, None),
        )

    def _committed(self) -> None:
        self._state = "done"
        self.outcome = "committed"

    async def rollback(self) -> None:
        """Roll back now, inside the block; its exit then does nothing more.

        Raises:
            RuntimeError: Outside the block, from another task, or after it ended.

        Cancellation:
            Always a checkpoint; the rollback runs shielded, bounded by ``grace``, and a
            cancellation that arrives meanwhile is raised after it.
        """
        self._check_in_block("rollback()")
        await self._rollback_now(None)
        await trio.lowlevel.checkpoint_if_cancelled()

    def _check_in_block(self, what: str) -> None:
        if self._state != "open":
            raise RuntimeError(f"{what} works only inside its open transaction block")
        if self._conn._owner is not trio.lowlevel.current_task():
            raise RuntimeError(f"{what} must be called by the task that opened the block")

    async def _commit(self) -> None:
        conn = self._conn
        await conn._run(lambda raw: conn._backend.execute(raw, "COMMIT", ()), "COMMIT", False)

    async def _rollback(self) -> None:
        conn = self._conn
        backend = conn._backend

        def rollback(raw: Any) -> None:  # noqa: ANN401 - the driver's connection
            # SQLite ends the transaction itself when it interrupts a write inside it.
            if backend.in_transaction(raw):
                backend.execute(raw, "ROLLBACK", ())

        await conn._run(rollback, "ROLLBACK", False)

    async def _rollback_now(self, block_error: BaseException | None) -> None:
        self._state = "done"
        error, timed_out = await clean_up(
            self._conn._grace, self._rollback, f"rollback of {self._conn!r}"
        )
        self.outcome = "rollback timed out" if timed_out else "rolled back"
        if error is not None:
            combine(block_error, error, "rollback")

    async def __aenter__(self) -> Self:
        """Cancellation: a checkpoint. Cancelled while waiting for the connection or during
        ``BEGIN``: no transaction is left open and the block does not run."""
        if self._state != "new":
            raise RuntimeError("a transaction block can be entered only once")
        conn = self._conn
        conn._check_open()
        task = trio.lowlevel.current_task()
        if conn._owner is task:
            raise RuntimeError("this task already has a transaction block open on this connection")
        await conn._lock.acquire()
        conn._owner = task
        try:
            conn._check_open()
            await conn._run(lambda raw: conn._backend.execute(raw, "BEGIN", ()), "BEGIN", True)
        except BaseException:
            with trio.CancelScope(shield=True):
                if conn._in_transaction and not conn._closed:
                    await bounded(conn._grace, self._rollback)
            conn._owner = None
            conn._lock.release()
            raise
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancellation: a block that ends with an exception or a cancellation pending
        (delivered or not) is rolled back, never committed, and the cancellation propagates.
        The commit or rollback runs shielded, bounded by ``grace``."""
        conn = self._conn
        try:
            if self._state == "done":  # committed or rolled back inside the block
                if exc is None:
                    await trio.lowlevel.checkpoint_if_cancelled()  # noqa: ASYNC102
                return  # noqa: ASYNC910 - the body raised: no checkpoint owed
            if exc is not None or pending_cancel() or self.mode == "explicit":
                await self._rollback_now(exc)  # noqa: ASYNC102 - shielded and bounded
                if exc is None:
                    await trio.lowlevel.checkpoint()  # noqa: ASYNC102 - delivers the pending one
                return
            await self._commit_bounded()  # noqa: ASYNC102 - shielded and bounded inside
        finally:
            conn._owner = None
            conn._lock.release()

    def __repr__(self) -> str:
        return f"<TransactionBlock {self.outcome or self._state} ({self.mode}) of {self._conn!r}>"
