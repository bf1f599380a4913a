"""What ``trio_cancel.sqlite`` and ``trio_cancel.postgres`` share: a connection that owns one
worker thread, statements a cancellation interrupts, and transactions that are never torn.

A driver connection lives in its :class:`ConnectionThread` from ``connect`` to ``aclose``:
every call on it runs there (SQLite objects are thread-affine, and one thread per connection
keeps psycopg's sync API happy). The Trio side submits :class:`~trio_cancel._threads.ThreadCall`
s and waits for them with :func:`~trio_cancel._threads.wait_call`, which interrupts the
statement (``interrupt()`` of the backend) when the caller is cancelled.

Invariants:

1. Calls on one connection run one at a time, in the order they were submitted (one thread
   and its FIFO queue). The Trio side submits in the order tasks asked (a FIFO
   :class:`trio.Lock`), except inside a transaction block, which holds that lock from its
   entry to its exit: only the task that opened it runs statements meanwhile.
2. A ``COMMIT`` or ``ROLLBACK``, once submitted, is never skipped and never interrupted: if
   its caller stops waiting (``grace`` ran out), it stays in the queue and runs, in order,
   before any statement submitted later. So no statement runs inside a block's transaction
   after that block has ended, and a commit whose outcome was reported unknown ends before
   anything else runs on the connection.
3. A block ends its transaction only if its own ``BEGIN`` succeeded (a flag the ``BEGIN``
   sets in the connection's thread): it never rolls back a transaction it did not open.
4. Nothing blocks the Trio thread: an interrupt that needs the network (PostgreSQL's cancel
   request) runs in a thread of its own; the connection's next call starts only after that
   thread ended (the worker waits for it), and a connection whose cancel thread outlives
   ``grace``, or whose socket had to be shut, is discarded (closed with a reason).
5. A block's statements run only inside its transaction: if the transaction ends under the
   block (SQLite rolls it back by itself when a write is interrupted or an ``OR ROLLBACK``
   conflict fires; a ``COMMIT`` run by hand), the statement's job notes it in the
   connection's thread, and the block's later statements and its commit are refused there,
   before they run, so nothing autocommits. The block reports what really happened.
6. Nothing between the exit's check that the connection is open and the submission of its
   ``COMMIT`` or ``ROLLBACK`` suspends (PostgreSQL's ``lock_timeout`` is read in the
   ``COMMIT``'s own job), so ``aclose()`` cannot slip in between.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar, final

import attrs
import outcome
import trio

from ._checks import check_grace
from ._exceptions import CommitOutcomeUnknownError
from ._guard import CleanupTimeoutWarning, combine, outer_bound, pending_cancel
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


class Interruption:
    """What one statement's interrupt shares with the worker and a cancel thread.

    The worker calls :meth:`statement_ended` when the statement returned (before its outcome
    is stored); a cancel thread waits for that with :meth:`wait_ended`. A backend whose
    interrupt runs in a thread sets ``cancel_done`` (a Trio event, set when that thread
    ended) and ``cancel_ended`` (the same, for the worker thread), and ``socket_shut`` when
    it had to shut the connection's socket (the connection is then discarded, and the
    statement's error is the interruption).

    One is made per statement, and few statements are interrupted: a plain class whose
    interrupt-only fields default on the class, and a lock held while the statement runs
    rather than a ``threading.Event`` (whose making and setting cost more than the rest of
    a statement's bookkeeping).
    """

    started_at: float | None = None  # trio.current_time() of the first interrupt
    cancel_done: trio.Event | None = None
    cancel_ended: threading.Event | None = None
    socket_shut: bool = False

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._running = threading.Lock()  # held from here until the statement ended
        self._running.acquire()

    def statement_ended(self) -> None:
        """The worker: the statement returned (called once)."""
        self._running.release()

    def wait_ended(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the statement to end; whether it did."""
        if self._running.acquire(timeout=timeout):
            self._running.release()  # for any other waiter
            return True
        return False


@attrs.define(eq=False, repr=False)
class Backend(Generic[RawT]):
    """What differs between drivers: each function runs in the connection's thread, except
    ``interrupt``, which is called from the Trio thread while a statement runs and must not
    block (it may start a thread: see :class:`Interruption`)."""

    name: str
    interrupt: Callable[[RawT, Interruption], object]
    is_interruption: Callable[[BaseException], bool]
    in_transaction: Callable[[RawT], bool]
    execute: Callable[[RawT, str, Parameters], int]
    fetchone: Callable[[RawT, str, Parameters], tuple[Any, ...] | None]
    fetchall: Callable[[RawT, str, Parameters], list[tuple[Any, ...]]]
    close: Callable[[RawT], object]
    # Seconds the driver may wait for a lock during a COMMIT (None: ask lock_wait()).
    lock_wait: Callable[[RawT], float] = lambda raw: 0.0
    # Whether the driver connection is unusable (its socket is gone).
    is_broken: Callable[[RawT], bool] = lambda raw: False
    # Shut the connection's socket (non-blocking), so a worker stuck on it returns.
    shut_socket: Callable[[RawT], object] = lambda raw: None
    # COMMIT; raises the driver's error when the database did not commit (None: execute it).
    commit: Callable[[RawT], object] | None = None
    # The driver's error for a statement refused because its block's transaction ended.
    refused: Callable[[str], Exception] = RuntimeError


class DatabaseConnection(Generic[RawT]):
    """The connection API of both backends (see ``trio_cancel.sqlite.Connection``)."""

    def __init__(
        self,
        backend: Backend[RawT],
        grace: float,
        label: str,
        *,
        lock_wait: float | None = None,
    ) -> None:
        self._backend = backend
        self._grace = check_grace(grace)
        self._label = label
        self._lock_wait = lock_wait
        self._thread = ConnectionThread(f"trio_cancel {backend.name} {label}")
        self._raw: RawT | None = None
        self._lock = trio.Lock()
        self._owner: trio.lowlevel.Task | None = None
        self._closed = False
        self._closed_reason: str | None = None
        self._running: tuple[ThreadCall[Any], Callable[[], object]] | None = None
        self._in_transaction = False
        self._block: TransactionBlock | None = None  # the open block (its owner is _owner)
        # The worker waits for the last cancel thread before its next call (invariant 4).
        self._cancel_ended: threading.Event | None = None

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
        """Whether the driver connection was inside a transaction after its last call
        (False once the connection is closed)."""
        return self._in_transaction and not self._closed

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
            checkpoint). A statement that does not stop within ``grace`` is abandoned
            (:exc:`~trio_cancel.CleanupTimeoutWarning`); the connection's next call runs after
            it ended. PostgreSQL: the cancel request is sent from a thread; if the statement
            still runs half of ``grace`` later, the connection's socket is shut, the caller
            gets its cancellation, and the connection is discarded (later calls raise
            :exc:`trio.ClosedResourceError` saying why).
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
        """Close the connection. A statement running in another task is interrupted (that
        task gets :exc:`trio.ClosedResourceError`); a transaction block open in another task
        ends uncommitted (its exit raises :exc:`trio.ClosedResourceError` at once); the driver
        connection is closed in its thread, after any commit or rollback already sent, and the
        thread ends. Idempotent.

        Cancellation:
            Always a checkpoint. Closing happens even if the caller is cancelled (shielded,
            bounded by ``grace``); the cancellation is raised after.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._mark_closed(None)
        running = self._running
        if running is not None:
            call, interrupt = running
            # Closing goes on whatever the interrupt does; the statement ends with it.
            with contextlib.suppress(Exception):
                call.interrupt_if_running(interrupt)
        with trio.move_on_after(self._grace, shield=True):
            closing = self._close_raw()
            if closing is not None:
                await closing.done.wait()
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

    def _mark_closed(self, reason: str | None) -> None:
        self._closed = True
        self._closed_reason = reason
        self._in_transaction = False

    def _close_raw(self) -> ThreadCall[Any] | None:
        """Queue the driver's close (after every call already queued) and end the thread."""
        call: ThreadCall[Any] | None = None
        if self._raw is not None:
            raw_conn, close = self._raw, self._backend.close
            call = ThreadCall(lambda: close(raw_conn), f"{self._backend.name}.close")
            self._thread.submit(call)
        self._thread.stop()
        return call

    def _discard(self, reason: str) -> None:
        """Close a connection that can no longer be trusted: later calls raise
        :exc:`trio.ClosedResourceError` with ``reason``. Never blocks."""
        if self._closed:
            return
        self._mark_closed(reason)
        if self._raw is not None:
            self._backend.shut_socket(self._raw)
        self._close_raw()

    def _check_open(self) -> None:
        if self._closed:
            reason = self._closed_reason or "aclose() was called"
            raise trio.ClosedResourceError(
                f"this {self._backend.name} connection is closed: {reason}"
            )

    def _submit(self, fn: Callable[[RawT], T], what: str) -> ThreadCall[T]:
        self._check_open()  # never queue a call behind the thread's end
        raw = self._raw
        assert raw is not None
        backend = self._backend
        grace = self._grace

        def job() -> T:
            cancel_ended = self._cancel_ended
            if cancel_ended is not None:  # invariant 4: never overlap a cancel request
                cancel_ended.wait(None if grace == float("inf") else grace + 1.0)
            try:
                return fn(raw)
            finally:
                self._in_transaction = backend.in_transaction(raw)

        call = ThreadCall(job, _shorten(what))
        self._thread.submit(call)
        return call

    async def _run_to_end(
        self,
        fn: Callable[[RawT], T],
        what: str,
        limit: float,
        extra: Callable[[], float] = lambda: 0.0,
    ) -> tuple[outcome.Outcome[T] | None, BaseException | None]:
        """Submit a call that is never skipped nor interrupted (a COMMIT, a ROLLBACK), and wait
        for it, shielded, up to ``limit`` seconds plus ``extra()`` (read when ``limit`` ran
        out: a lock wait the call itself learned in the thread), never past the bound of an
        enclosing guard (:func:`~trio_cancel._guard.outer_bound`).

        Returns the call's outcome (``None``: it has not ended yet; it still runs, in order,
        before anything submitted later) and the ``KeyboardInterrupt`` (or other
        ``BaseException`` delivered to the task) that arrived meanwhile, if any: after that,
        the wait goes on for at most ``grace`` more, so the caller can record what really
        happened before it raises it. Raises only :exc:`trio.ClosedResourceError`, before
        submitting, if the connection is closed."""
        call = self._submit(fn, what)
        start = trio.current_time()
        cap = outer_bound()
        deadline = min(start + limit, cap)
        interrupted: BaseException | None = None
        while True:
            try:
                with trio.CancelScope(deadline=deadline, shield=True):
                    await call.done.wait()
            # Shielded: no Cancelled from outside reaches here (the scope absorbs its own);
            # what does is a KeyboardInterrupt, handed to the caller to raise.
            except BaseException as exc:  # noqa: BLE001, ASYNC103
                if interrupted is not None:
                    break  # noqa: ASYNC104 - a second one: stop waiting (the first is raised)
                interrupted = exc
                deadline = min(deadline, trio.current_time() + self._grace)
                continue  # noqa: ASYNC104 - raised by the caller after the wait
            if call.done.is_set() or interrupted is not None:
                break
            later = min(start + limit + extra(), cap)
            if later <= deadline:
                break
            deadline = later
        return call.result, interrupted  # noqa: ASYNC910 - helper; callers checkpoint

    async def _call(self, fn: Callable[[RawT], T], what: str) -> T:
        self._check_open()
        if self._owner is trio.lowlevel.current_task():
            return await self._run(fn, what)
        async with self._lock:
            self._check_open()
            return await self._run(fn, what)

    async def _run(self, fn: Callable[[RawT], T], what: str) -> T:
        raw = self._raw
        assert raw is not None
        backend = self._backend
        intr = Interruption(self._grace)
        block = self._block if self._owner is trio.lowlevel.current_task() else None

        def statement(raw: RawT) -> T:
            try:
                if block is None:
                    return fn(raw)
                return block._statement(raw, fn)
            finally:
                intr.statement_ended()

        call = self._submit(statement, what)

        def interrupt() -> None:
            if intr.started_at is None:
                intr.started_at = trio.current_time()
            backend.interrupt(raw, intr)
            if intr.cancel_ended is not None:
                self._cancel_ended = intr.cancel_ended

        def is_interruption(exc: BaseException) -> bool:
            return intr.socket_shut or backend.is_interruption(exc)

        self._running = (call, interrupt)
        try:
            return await wait_call(
                call,
                interrupt=interrupt,
                grace=self._grace,
                is_interruption=is_interruption,
                what=f"{backend.name} statement",
            )
        except Exception as exc:
            if self._closed and is_interruption(exc):
                raise trio.ClosedResourceError(
                    f"the {backend.name} connection was closed while this statement ran"
                ) from exc
            raise
        finally:
            self._running = None
            await self._after_statement(intr, raw)  # noqa: ASYNC102 - shielded and bounded

    async def _after_statement(self, intr: Interruption, raw: RawT) -> None:  # noqa: ASYNC910 - helper; no checkpoint owed
        """Wait (shielded, up to ``grace`` after the first interrupt) for a cancel thread to
        end, so it cannot hit the next statement; discard the connection if it does not end,
        or if its socket was shut or is gone."""
        done = intr.cancel_done
        if done is not None and not done.is_set():
            assert intr.started_at is not None
            with trio.CancelScope(deadline=intr.started_at + self._grace, shield=True):
                await done.wait()
            if not done.is_set():
                self._discard(
                    "a cancel request to the server did not end within the grace period "
                    f"of {self._grace:g} s, so the connection was discarded"
                )
        if intr.socket_shut:
            self._discard(
                "the server did not stop a cancelled statement in time, so the "
                "connection's socket was shut and the connection discarded"
            )
        elif not self._closed and self._backend.is_broken(raw):
            self._discard("the connection to the server was lost")


def _shorten(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 60 else text[:57] + "..."


@final
@attrs.define(eq=False, repr=False)
class TransactionBlock(metaclass=NoPublicConstructor):
    """A transaction block of a connection: ``async with conn.transaction() as tx:``.

    States: *new*, *open* (inside the block, after ``BEGIN``), then *done* (``outcome``).
    Built by ``Connection.transaction()``.

    Attributes:
        outcome: ``None`` while the block runs (and for a block whose entry raised before
            its ``BEGIN`` took effect: it never started); then ``"committed"``,
            ``"rolled back"`` (also when the entry raised after its ``BEGIN`` ran: that
            ``BEGIN`` was undone),
            ``"rollback timed out"`` (the rollback is still queued behind a statement that
            did not stop: it runs before any later statement on the connection), or
            ``"unknown"`` (the commit did not end within its bound:
            :exc:`~trio_cancel.CommitOutcomeUnknownError`).
        mode: ``"on_exit"`` or ``"explicit"`` (see ``Connection.transaction``).
    """

    _conn: DatabaseConnection[Any]
    mode: Literal["on_exit", "explicit"]
    outcome: Literal["committed", "rolled back", "rollback timed out", "unknown"] | None = (
        attrs.field(default=None, init=False)
    )
    _state: Literal["new", "open", "done"] = attrs.field(default="new", init=False)
    # Set in the connection's thread by this block's own successful BEGIN (invariant 3).
    _began: bool = attrs.field(default=False, init=False)
    # Set in the connection's thread when the transaction ended under the block (SQLite
    # rolled it back when a statement failed: "failed"; a COMMIT or ROLLBACK run by hand:
    # "by hand"). Later statements of the block are refused (invariant 5).
    _ended: Literal["failed", "by hand"] | None = attrs.field(default=None, init=False)

    @trio.lowlevel.enable_ki_protection
    async def commit(self) -> None:
        """Commit now, inside the block (the explicit mode's only way to commit; allowed in
        the default mode too). The block's exit then does nothing more.

        Raises:
            RuntimeError: Outside the block, from another task, or after the transaction
                ended.
            trio.ClosedResourceError: The connection was closed meanwhile (nothing was
                committed).
            trio_cancel.CommitOutcomeUnknownError: The commit did not end within ``grace``
                plus the driver's lock wait; it may have committed (``outcome`` is
                ``"unknown"``). Nothing was rolled back.
            Exception: The driver's error if the commit failed, or if the transaction had
                failed before it (PostgreSQL: ``psycopg.errors.InFailedSqlTransaction``, after
                a statement of the block raised; SQLite: ``sqlite3.OperationalError``, when
                SQLite ended the transaction itself); the transaction was then rolled back.

        Cancellation:
            Always a checkpoint. The commit runs shielded, bounded by ``grace`` plus the
            driver's lock wait (SQLite's ``busy_timeout``; PostgreSQL's ``lock_timeout`` when
            set): it is never torn. A cancellation that arrives meanwhile is raised after it
            (``outcome`` is then ``"committed"``). A ``KeyboardInterrupt`` that arrives
            meanwhile is raised after the commit ended (waiting at most ``grace`` more), with
            ``outcome`` set; if the commit still runs then, ``outcome`` is ``"unknown"``.
        """
        self._check_in_block("commit()")
        await self._commit_now()

    @trio.lowlevel.enable_ki_protection
    async def rollback(self) -> None:
        """Roll back now, inside the block; its exit then does nothing more. Inside the block
        after its transaction already ended uncommitted (a commit that failed), it does nothing
        (so a guard may call it after a failed commit).

        Raises:
            RuntimeError: Outside the block, from another task, or after the transaction
                committed (or its commit's outcome is unknown).
            trio.ClosedResourceError: The connection was closed meanwhile.

        Cancellation:
            Always a checkpoint; the rollback runs shielded, bounded by ``grace``, and a
            cancellation that arrives meanwhile is raised after it.
        """
        if (
            self._state == "done"
            and self.outcome in ("rolled back", "rollback timed out")
            and self._conn._owner is trio.lowlevel.current_task()
        ):
            await trio.lowlevel.checkpoint()
            return
        self._check_in_block("rollback()")
        await self._rollback_now(None)
        await trio.lowlevel.checkpoint_if_cancelled()

    def _check_in_block(self, what: str) -> None:
        if self._state != "open":
            raise RuntimeError(f"{what} works only inside its open transaction block")
        if self._conn._owner is not trio.lowlevel.current_task():
            raise RuntimeError(f"{what} must be called by the task that opened the block")
        self._conn._check_open()

    def _statement(self, raw: Any, fn: Callable[[Any], T]) -> T:  # noqa: ANN401 - the driver's
        """In the connection's thread: run a statement of this block, unless its transaction
        ended under it; note if the statement ends it."""
        if self._ended is not None:
            raise self._ended_error()
        backend = self._conn._backend
        failed = True
        try:
            result = fn(raw)
            failed = False
            return result
        finally:
            if self._began and self._state == "open" and not backend.in_transaction(raw):
                self._ended = "failed" if failed else "by hand"

    def _ended_error(self) -> Exception:
        backend = self._conn._backend
        if self._ended == "failed":
            return backend.refused(
                f"the {backend.name} transaction of this block ended when a statement of the "
                "block failed (the database rolled it back), so nothing of the block is "
                "committed and its later statements are refused (none ran outside the "
                "transaction)"
            )
        return backend.refused(
            f"a statement of this block ended its {backend.name} transaction (a COMMIT or "
            "ROLLBACK run by hand?); use tx.commit() or tx.rollback(). Later statements of "
            "the block are refused (none ran outside the transaction)"
        )

    def _closed_error(self) -> trio.ClosedResourceError:
        conn = self._conn
        reason = conn._closed_reason or "aclose() was called"
        return trio.ClosedResourceError(
            f"the {conn._backend.name} connection was closed while this transaction block was "
            f"open ({reason}); nothing was committed"
        )

    async def _commit_now(self) -> None:
        conn = self._conn
        backend = conn._backend
        self._state = "done"
        if conn._closed:  # closing the driver connection ended the transaction uncommitted
            self.outcome = "rolled back"
            raise self._closed_error()
        fixed_wait = conn._lock_wait
        lock_wait: list[float] = []  # learned in the thread, first thing of the COMMIT's job

        def commit(raw: Any) -> None:  # noqa: ANN401 - the driver's connection
            # The lock wait is read in the same job as the COMMIT: no round trip before it.
            if fixed_wait is not None:
                lock_wait.append(fixed_wait)
            else:
                try:
                    lock_wait.append(float(backend.lock_wait(raw)))
                except Exception:  # noqa: BLE001 - unreadable: grace alone bounds the commit
                    lock_wait.append(0.0)
            if self._ended is not None:
                raise self._ended_error()
            try:
                if backend.commit is None:
                    backend.execute(raw, "COMMIT", ())
                else:
                    backend.commit(raw)
            except BaseException as error:
                # SQLite keeps the transaction open after a failed COMMIT (a lock): end it
                # here, in the same call, so nothing else runs inside it.
                if backend.in_transaction(raw):
                    try:
                        backend.execute(raw, "ROLLBACK", ())
                    except BaseException as rollback_error:  # noqa: BLE001 - raised with it
                        raise BaseExceptionGroup(  # noqa: ASYNC104 - a worker thread: no Cancelled
                            "the commit and its rollback both raised", [error, rollback_error]
                        ) from None
                raise

        result, interrupted = await conn._run_to_end(
            commit, "COMMIT", conn._grace, lambda: lock_wait[0] if lock_wait else 0.0
        )
        try:
            if result is None:
                self.outcome = "unknown"
                raise CommitOutcomeUnknownError(
                    f"the {backend.name} COMMIT did not end within its bound (the grace "
                    f"period of {conn._grace:g} s plus the driver's lock wait, or an "
                    "enclosing guard's grace period): the transaction may have committed. The "
                    "connection runs nothing else until that commit has ended; check whether "
                    "it committed before retrying"
                )
            if isinstance(result, outcome.Error):
                raw = conn._raw
                if raw is not None and backend.is_broken(raw):
                    # The connection was lost during the COMMIT: the server may have applied it.
                    self.outcome = "unknown"
                    conn._discard("the connection to the server was lost during a COMMIT")
                    raise CommitOutcomeUnknownError(
                        f"the connection to the {backend.name} server was lost during the "
                        "COMMIT: the transaction may have committed; check whether it did "
                        "before retrying"
                    ) from result.error
                self.outcome = "unknown" if self._ended == "by hand" else "rolled back"
                result.unwrap()
            self.outcome = "committed"
        except BaseException as exc:
            if interrupted is not None:
                raise interrupted from exc  # noqa: ASYNC104 - the KeyboardInterrupt wins
            raise
        if interrupted is not None:
            raise interrupted
        await trio.lowlevel.checkpoint_if_cancelled()

    def _rollback_job(self, raw: Any) -> None:  # noqa: ANN401 - the driver's connection
        """In the connection's thread: end this block's transaction, if it opened one."""
        backend = self._conn._backend
        # SQLite ends the transaction itself when it interrupts a write inside it.
        if self._began and self._ended is None and backend.in_transaction(raw):
            backend.execute(raw, "ROLLBACK", ())

    async def _rollback_now(self, block_error: BaseException | None) -> None:
        conn = self._conn
        self._state = "done"
        if conn._closed:  # closing the driver connection ends the transaction uncommitted
            self.outcome = "rolled back"
            return  # noqa: ASYNC910 - helper; callers checkpoint
        result, interrupted = await conn._run_to_end(self._rollback_job, "ROLLBACK", conn._grace)
        if result is None:
            self.outcome = "rollback timed out"
            if interrupted is not None:
                raise interrupted
            warnings.warn(
                CleanupTimeoutWarning(
                    f"rollback of {conn!r} did not run within the grace period of "
                    f"{conn._grace:g} s (an earlier statement has not stopped); it stays "
                    "queued and runs before any later statement on this connection"
                ),
                stacklevel=4,
            )
            return
        self.outcome = "unknown" if self._ended == "by hand" else "rolled back"
        if interrupted is not None:
            raise interrupted
        if isinstance(result, outcome.Error):
            combine(block_error, result.error, "rollback")

    @trio.lowlevel.enable_ki_protection
    async def __aenter__(self) -> Self:
        """Cancellation: a checkpoint. Cancelled while waiting for the connection or during
        ``BEGIN``: no transaction is left open and the block does not run. A ``BEGIN`` that
        fails raises the driver's error and rolls nothing back (a transaction opened by hand
        is not this block's)."""
        if self._state != "new":
            raise RuntimeError("a transaction block can be entered only once")
        conn = self._conn
        conn._check_open()
        task = trio.lowlevel.current_task()
        if conn._owner is task:
            raise RuntimeError("this task already has a transaction block open on this connection")
        await conn._lock.acquire()
        conn._owner = task
        backend = conn._backend

        def begin(raw: Any) -> None:  # noqa: ANN401 - the driver's connection
            backend.execute(raw, "BEGIN", ())
            self._began = True

        try:
            conn._check_open()
            await conn._run(begin, "BEGIN")
        except BaseException as begin_error:
            # Undo only this block's own BEGIN, if it ran (the job checks the flag in order).
            interrupted: BaseException | None = None
            with trio.CancelScope(shield=True):
                if not conn._closed:
                    undone, interrupted = await conn._run_to_end(
                        self._rollback_job, "ROLLBACK", conn._grace
                    )
                    # Only once this block's own BEGIN took effect is there an outcome to
                    # tell; otherwise the block never started (outcome None).
                    if undone is None:
                        self._state, self.outcome = "done", "rollback timed out"
                    elif self._began:
                        self._state, self.outcome = "done", "rolled back"
            conn._owner = None
            conn._lock.release()
            if interrupted is not None:
                # A KeyboardInterrupt during the rollback.
                raise interrupted from begin_error  # noqa: ASYNC104
            raise
        self._state = "open"
        conn._block = self
        return self

    @trio.lowlevel.enable_ki_protection
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancellation: a block that ends with an exception or a cancellation pending
        (delivered or not) is rolled back, never committed, and the cancellation propagates.
        The commit or rollback runs shielded, bounded by ``grace`` (a commit also by the
        driver's lock wait). If the connection was closed meanwhile, a clean exit raises
        :exc:`trio.ClosedResourceError` at once (nothing was committed). A
        ``KeyboardInterrupt`` during the commit or rollback is raised after it (waiting at most
        ``grace`` more), with ``outcome`` set (``"unknown"`` if the commit still runs)."""
        conn = self._conn
        try:
            if self._state == "done":  # committed or rolled back inside the block
                if exc is None:
                    await trio.lowlevel.checkpoint()  # noqa: ASYNC102 - not blocking
                return  # noqa: ASYNC910 - the body raised: no checkpoint owed
            if conn._closed:
                self._state = "done"
                self.outcome = "rolled back"
                if exc is None:
                    raise self._closed_error()  # noqa: ASYNC910 - raises at once
                return  # noqa: ASYNC910 - the body raised: no checkpoint owed
            if exc is not None or pending_cancel() or self.mode == "explicit":
                await self._rollback_now(exc)  # noqa: ASYNC102 - shielded and bounded
                if exc is None:
                    await trio.lowlevel.checkpoint()  # noqa: ASYNC102 - delivers the pending one
                return
            await self._commit_now()  # noqa: ASYNC102 - shielded and bounded inside
        finally:
            if self.outcome is None:  # never left undocumented (an interrupt before the result)
                self._state = "done"
                self.outcome = "unknown"
            conn._block = None
            conn._owner = None
            conn._lock.release()

    def __repr__(self) -> str:
        return f"<TransactionBlock {self.outcome or self._state} ({self.mode}) of {self._conn!r}>"
