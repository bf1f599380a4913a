"""The cancellation bus: "cancel job 42, wherever it runs", over PostgreSQL.

One table holds the requests (``kind = 'cancel'``) and the landings (``kind = 'landed'``); a
``BEFORE INSERT`` trigger stamps each row (sender, time) and announces it with ``pg_notify`` on
the bus's channel, inside the inserting transaction: ``c:<job id>`` for a request, ``l:<job
id>`` for a landing. The notification carries only the job id; everything else is read from
the table, so a long reason travels whole and nothing is lost while a listener is away.

Each bus has three connections: the *listener* (sync psycopg, autocommit, ``LISTEN``; its socket
is waited on with :func:`trio.lowlevel.wait_readable` and drained with libpq's non-blocking
``consume_input``/``notifies``, no thread), and two :mod:`trio_cancel.postgres` connections
(one thread each) that reconnect with back-off: one for the bus's own reads (fetching requests),
one for the caller's calls (``cancel``, ``landed``, ``wait_landed``, purging).

Invariants:

1. ``_pending`` is the bus's copy of the table's live requests, per job id: after the listener
   (re)connected, a full read replaces it; every ``c:`` notification schedules a read of that
   job's requests; every ``l:`` notification drops the job's entries at once and schedules a
   read; every ``landed()`` of this bus that consumed requests drops them at once and counts
   as a landing of the job. A read's result is applied to a job only if no landing of it
   (``l:`` or this bus's own) came, and no full read started, after the read began
   (``_last_landing``, ``_epoch``): a consumed request is never put back. A read discarded
   for a job schedules a new read of it (``_want``), so a job never leaves the wanted set
   without a read that is applied: a request sent just after a landing, which the discarded
   read had found, is found again (the landing's notification may have been taken by that
   very read).
2. ``_runs`` holds this bus's live runs, one per job id, from ``token()`` (or ``start_run()``)
   to ``landed()``. Every read is numbered when it begins (``_read_seq``), and a run notes the
   number at its start (``since``). A run is cancelled by the first of: a live request in the
   copy when ``token()`` starts it (the contract's "at once"; the copy may be stale, which
   ``token()``'s docstring states as its window), or a request that a read begun *after* its
   start found live on the server: that read's statement saw every landing committed before
   the run began, so a request consumed by an earlier run (in any process, whose ``l:``
   notification may still be on its way here) can never reach the run through it. A request
   that an older read brings only schedules such a read of the job (one round trip).
   ``start_run()`` never consults the copy: it reads again until a read begun after the run's
   start is applied to the job, so its token is cancelled only, and always, by what the server
   holds (the strict form).
3. ``token()`` and ``start_run()`` first read what the listener's socket already holds
   (without blocking), so the copy is as current as it can be when ``token()`` consults it.
4. The listener's socket is closed only by the listener task, or after
   :func:`trio.lowlevel.notify_closing` in the same synchronous step (libpq closes it itself
   when it finds the connection lost).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import threading
from typing import TYPE_CHECKING, Any, Literal, TypeVar, final

import attrs
import psycopg
import trio

from . import _hooks
from ._outcome import Aborted, Completed, Failed
from ._token import CancellationToken
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    import datetime
    from collections.abc import AsyncIterator, Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from .postgres import Connection

__all__ = ["CancelBus", "Landing", "RemoteCancel", "open_cancel_bus"]

T = TypeVar("T")

_log = logging.getLogger("trio_cancel")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_TABLE_LENGTH = 48  # leaves room for the "_cancel"/"_announce" suffixes within 63 bytes
MAX_CHANNEL_LENGTH = 63
MAX_JOB_ID_LENGTH = 1000  # characters; a notification's payload is limited to 8,000 bytes
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 1.0
# The listener's TCP keepalive: a silent peer (a host gone, a cable pulled) is found dead after
# about KEEPALIVE_IDLE + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL seconds.
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 15_000
GRACE = 5.0

OutcomeKind = Literal["completed", "failed", "aborted"]


@final
@attrs.frozen
class RemoteCancel:
    """A cancel request that reached a run: the ``cause`` of the run's token.

    Attributes:
        job_id: The job the request was for.
        reason: The reason given to ``cancel()`` (or the ``INSERT``), ``None`` if none.
        sender: Who sent it, as the server saw it: the database role, and the sender's
            ``application_name`` in parentheses when it had one.
        sent_at: When the server recorded the request (the server's clock).
        request_id: The request's row id in the bus's table.
    """

    job_id: str
    reason: str | None
    sender: str
    sent_at: datetime.datetime
    request_id: int

    def __str__(self) -> str:
        text = f"job {self.job_id!r} cancelled by {self.sender}"
        return text if self.reason is None else f"{text}: {self.reason}"


@final
@attrs.frozen
class Landing:
    """How a run that a cancel request reached ended, from :meth:`CancelBus.wait_landed`.

    Attributes:
        job_id: The job.
        outcome: ``"completed"``, ``"failed"`` or ``"aborted"``: what the worker passed to
            :meth:`CancelBus.landed`.
        seconds: Seconds from the request to the landing, both on the server's clock (no
            clock skew between machines); ``None`` if unknown.
        landed_at: When the server recorded the landing.
        sender: Who recorded the landing (role and ``application_name``, as for requests).
    """

    job_id: str
    outcome: OutcomeKind
    seconds: float | None
    landed_at: datetime.datetime
    sender: str


@attrs.define(eq=False)
class _Request:
    cause: RemoteCancel
    deadline: float  # trio.current_time() at which it expires


@attrs.define(eq=False)
class _Run:
    token: CancellationToken
    since: int  # the bus's read sequence number at the run's start: later reads may cancel it
    cause: RemoteCancel | None = None


@attrs.define(eq=False)
class _Landing:
    """One ``landed()`` call waiting for the landing writer."""

    job_id: str
    kind: OutcomeKind
    cause: RemoteCancel | None
    done: trio.Event = attrs.field(factory=trio.Event)
    consumed: frozenset[int] = frozenset()
    error: BaseException | None = None


MAX_LANDING_BATCH = 200


@attrs.define(eq=False)
class _Waiters:
    event: trio.Event = attrs.field(factory=trio.Event)
    count: int = 0


# ---------------------------------------------------------------------------- validation


def _check_identifier(value: object, name: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not _IDENTIFIER.match(value) or len(value) > max_length:
        raise ValueError(
            f"{name} must be a plain SQL identifier (ASCII letters, digits and underscores, not "
            f"starting with a digit, at most {max_length} characters), not {value!r}"
        )
    return value


def check_job_id(job_id: object) -> str:
    """A job id: a non-empty ``str`` of at most 1,000 characters, without NUL, that UTF-8 can
    encode (no lone surrogate)."""
    if not isinstance(job_id, str):
        raise TypeError(f"job_id must be a str, not {type(job_id).__name__}")
    if not job_id:
        raise ValueError("job_id must not be empty")
    if len(job_id) > MAX_JOB_ID_LENGTH:
        raise ValueError(f"job_id must be at most {MAX_JOB_ID_LENGTH} characters long")
    if "\x00" in job_id:
        raise ValueError("job_id must not contain NUL characters")
    try:
        job_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"job_id must be encodable as UTF-8 (no lone surrogates), not {job_id!r}"
        ) from None
    return job_id


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    try:
        seconds = float(ttl)
    except OverflowError:
        raise ValueError(f"ttl is too large: {ttl!r}") from None
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 10 * 365 * 86400:
        raise ValueError(
            f"ttl must be a finite number of seconds > 0 (at most 10 years), not {ttl!r}"
        )
    return seconds


def _outcome_kind(outcome: object) -> OutcomeKind:
    if isinstance(outcome, Completed):
        return "completed"
    if isinstance(outcome, Failed):
        return "failed"
    if isinstance(outcome, Aborted):
        return "aborted"
    raise TypeError(
        f"outcome must be trio_cancel.Completed, Failed or Aborted, not {type(outcome).__name__}"
    )


def _is_connection_loss(exc: BaseException) -> bool:
    """The connection is gone (retry on a new one), as opposed to an error of the statement."""
    if isinstance(exc, trio.ClosedResourceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in {"57P01", "57P02", "57P03"}


def _application_name() -> str:
    return f"trio_cancel bus {socket.gethostname()} pid {os.getpid()}"[:63]


# ---------------------------------------------------------------------------- SQL


@attrs.frozen
class _Sql:
    """Every statement of one bus; identifiers are validated and then double-quoted."""

    table: str
    channel: str

    @property
    def t(self) -> str:
        return f'"{self.table}"'

    def create(self) -> list[str]:
        t, name = self.t, self.table
        return [
            f"""CREATE TABLE IF NOT EXISTS {t} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL DEFAULT 'cancel' CHECK (kind IN ('cancel', 'landed')),
    job_id text NOT NULL CHECK (job_id <> '' AND octet_length(job_id) <= 4000),
    reason text,
    sender text NOT NULL DEFAULT '',
    sent_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL DEFAULT clock_timestamp() + interval '1 hour',
    outcome text CHECK (outcome IN ('completed', 'failed', 'aborted')),
    request_ids bigint[],
    seconds double precision
)""",
            f'CREATE INDEX IF NOT EXISTS "{name}_job" ON {t} (job_id, kind)',
            f'CREATE INDEX IF NOT EXISTS "{name}_expires" ON {t} (expires_at)',
            f"""CREATE OR REPLACE FUNCTION "{name}_announce"() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.sent_at := clock_timestamp();
    NEW.sender := session_user::text || coalesce(
        ' (' || nullif(current_setting('application_name', true), '') || ')', '');
    PERFORM pg_notify(TG_ARGV[0], left(NEW.kind, 1) || ':' || NEW.job_id);
    RETURN NEW;
END
$fn$""",
            f"""CREATE OR REPLACE FUNCTION "{name}_cancel"(
    job_id text, reason text DEFAULT NULL, ttl interval DEFAULT interval '1 hour'
) RETURNS bigint LANGUAGE sql AS $fn$
    INSERT INTO {t} (job_id, reason, expires_at)
    VALUES ($1, $2, clock_timestamp() + $3)
    RETURNING id
$fn$""",
        ]

    def create_trigger(self) -> str:
        return (
            f'CREATE TRIGGER "{self.table}_announce" BEFORE INSERT ON {self.t} '
            f"FOR EACH ROW EXECUTE FUNCTION \"{self.table}_announce\"('{self.channel}')"
        )

    def trigger_channel(self) -> str:
        return (
            "SELECT encode(tgargs, 'escape') FROM pg_trigger "
            "WHERE tgrelid = to_regclass(%s) AND tgname = %s"
        )

    def requests(self, *, some: bool) -> str:
        where = " AND job_id = ANY(%s)" if some else ""
        return (
            "SELECT id, job_id, reason, sender, sent_at, "
            "extract(epoch FROM expires_at - clock_timestamp())::float8 "
            f"FROM {self.t} WHERE kind = 'cancel' AND expires_at > clock_timestamp(){where} "
            "ORDER BY id"
        )

    def cancel(self) -> str:
        return f"SELECT \"{self.table}_cancel\"(%s, %s, %s * interval '1 second')"

    def landed(self) -> str:
        """End runs in one statement: one row of the input per job id."""
        t = self.t
        return f"""WITH input AS (
    SELECT * FROM unnest(%(jobs)s::text[], %(outcomes)s::text[], %(causes)s::text[]::bigint[],
        %(sent)s::text[]::timestamptz[]) AS i(job_id, outcome, cause, cause_sent)
), consumed AS (
    DELETE FROM {t} AS r USING input WHERE r.kind = 'cancel' AND r.job_id = input.job_id
    RETURNING r.job_id, r.id, r.sent_at
), summary AS (
    SELECT i.job_id, i.outcome, i.cause, i.cause_sent,
        array_agg(c.id ORDER BY c.id) FILTER (WHERE c.id IS NOT NULL) AS ids,
        min(c.sent_at) AS first_sent
    FROM input i LEFT JOIN consumed c ON c.job_id = i.job_id
    GROUP BY i.job_id, i.outcome, i.cause, i.cause_sent
), landing AS (
    INSERT INTO {t} (kind, job_id, outcome, request_ids, seconds, expires_at)
    SELECT 'landed', job_id, outcome,
        CASE WHEN cause IS NULL THEN ids ELSE array_append(coalesce(ids, '{{}}'), cause) END,
        extract(epoch FROM clock_timestamp() - coalesce(cause_sent, first_sent))::float8,
        clock_timestamp() + %(ttl)s * interval '1 second'
    FROM summary WHERE ids IS NOT NULL OR cause IS NOT NULL
    RETURNING id
)
SELECT job_id, coalesce(ids, '{{}}') FROM summary"""

    def landing_for(self) -> str:
        return (
            f"SELECT job_id, outcome, seconds, sent_at, sender FROM {self.t} "
            "WHERE kind = 'landed' AND job_id = %s AND request_ids && %s::bigint[] "
            "ORDER BY id LIMIT 1"
        )

    def landing_after(self) -> str:
        return (
            f"SELECT job_id, outcome, seconds, sent_at, sender FROM {self.t} "
            "WHERE kind = 'landed' AND job_id = %s AND id > %s ORDER BY id LIMIT 1"
        )

    def pending_ids(self) -> str:
        return (
            f"SELECT coalesce(array_agg(id), '{{}}'), "
            f"(SELECT coalesce(max(id), 0) FROM {self.t} WHERE kind = 'landed' AND job_id = %s) "
            f"FROM {self.t} WHERE kind = 'cancel' AND job_id = %s "
            "AND expires_at > clock_timestamp()"
        )

    def purge(self) -> str:
        return f"DELETE FROM {self.t} WHERE expires_at <= clock_timestamp()"


# ---------------------------------------------------------------------------- connections


class _Link:
    """A :mod:`trio_cancel.postgres` connection that is replaced when it is lost."""

    def __init__(self, dsn: str, label: str) -> None:
        self._dsn = dsn
        self._label = label
        self._conn: Connection | None = None
        self._connecting = trio.Lock()

    async def connect_now(self) -> None:
        """The first connection: an unreachable server raises at once.

        Cancellation: a checkpoint; as :func:`trio_cancel.postgres.connect`.
        """
        from .postgres import connect  # postgres imports this module

        self._conn = await connect(
            self._dsn, application_name=_application_name(), client_encoding="utf8"
        )

    async def run(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """``fn(connection)``, again on a new connection (after a back-off) while the
        connection is lost.

        Cancellation: a checkpoint; as the connection's calls, and the back-off sleeps.
        """
        from .postgres import connect

        delay = FIRST_BACKOFF
        while True:
            conn = self._conn
            if conn is None:
                async with self._connecting:
                    if self._conn is None:
                        try:
                            self._conn = await connect(
                                self._dsn,
                                application_name=_application_name(),
                                client_encoding="utf8",
                            )
                        except psycopg.OperationalError:
                            await trio.sleep(delay)
                            delay = min(2 * delay, MAX_BACKOFF)
                            continue
                    conn = self._conn
            try:
                return await fn(conn)
            except (psycopg.OperationalError, trio.ClosedResourceError) as exc:
                if not _is_connection_loss(exc):
                    raise
                if self._conn is conn:
                    self._conn = None
                await conn.aclose()
            await trio.sleep(delay)
            delay = min(2 * delay, MAX_BACKOFF)

    async def aclose(self) -> None:
        """Cancellation: as :meth:`trio_cancel.postgres.Connection.aclose`."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()
        else:
            await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class _Handoff:
    """A listener connection passed from its connecting thread to Trio, or closed by whichever
    side learns second that the caller left."""

    lock: threading.Lock = attrs.field(factory=threading.Lock)
    abandoned: bool = False
    raw: Any = None


def _open_listener(dsn: str, channel: str, handoff: _Handoff) -> Any:  # noqa: ANN401
    raw = psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=10,
        application_name=_application_name(),
        client_encoding="utf8",
        keepalives=1,
        keepalives_idle=KEEPALIVE_IDLE,
        keepalives_interval=KEEPALIVE_INTERVAL,
        keepalives_count=KEEPALIVE_COUNT,
        tcp_user_timeout=TCP_USER_TIMEOUT_MS,
    )
    try:
        raw.execute(f'LISTEN "{channel}"')
    except BaseException:
        raw.close()
        raise
    with handoff.lock:
        if handoff.abandoned:
            raw.close()
            return None
        handoff.raw = raw
    return raw


# ---------------------------------------------------------------------------- the bus


@final
@attrs.define(eq=False, repr=False)
class CancelBus(metaclass=NoPublicConstructor):
    """A cancellation bus on one PostgreSQL table and channel, from :func:`open_cancel_bus`.

    States: *open* (inside ``async with``), then *closed*. While open, the bus is *connected*
    or not (:attr:`connected`): a lost listener reconnects with back-off and then reads the
    table again, so requests made meanwhile are delivered after reconnecting.

    A worker wraps each run of a job between :meth:`token` and :meth:`landed`; any process
    calls :meth:`cancel` and may wait for the result with :meth:`wait_landed`.
    """

    _dsn: str = attrs.field(alias="_dsn")
    _sql: _Sql = attrs.field(alias="_sql")
    _ttl: float = attrs.field(alias="_ttl")
    _link: _Link = attrs.field(init=False)
    _fetch_link: _Link = attrs.field(init=False)
    _pending: dict[str, list[_Request]] = attrs.field(factory=dict, init=False)
    _runs: dict[str, _Run] = attrs.field(factory=dict, init=False)
    _sent: dict[str, tuple[int, float]] = attrs.field(factory=dict, init=False)
    _waiters: dict[str, _Waiters] = attrs.field(factory=dict, init=False)
    _to_fetch: set[str] = attrs.field(factory=set, init=False)
    _landing_queue: list[_Landing] = attrs.field(factory=list, init=False)
    _landing_wanted: trio.Event = attrs.field(factory=trio.Event, init=False)
    _fetch_wanted: trio.Event = attrs.field(factory=trio.Event, init=False)
    _landing_seq: int = attrs.field(default=0, init=False)
    _last_landing: dict[str, int] = attrs.field(factory=dict, init=False)
    _reads_in_flight: int = attrs.field(default=0, init=False)
    _read_seq: int = attrs.field(default=0, init=False)
    _epoch: int = attrs.field(default=0, init=False)
    _listen: Any = attrs.field(default=None, init=False)
    _listen_fd: int = attrs.field(default=-1, init=False)
    _connected: bool = attrs.field(default=False, init=False)
    _connection_changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self._link = _Link(self._dsn, "calls")
        self._fetch_link = _Link(self._dsn, "reads")

    # ------------------------------------------------------------------ public surface

    @property
    def connected(self) -> bool:
        """Whether the listening connection is up (False while it reconnects).

        A connection that dies silently (a host gone, a network cut) is found dead by TCP
        keepalive within about 11 seconds.
        """
        return self._connected

    @property
    def table(self) -> str:
        """The table of requests and landings."""
        return self._sql.table

    @property
    def channel(self) -> str:
        """The ``LISTEN``/``NOTIFY`` channel."""
        return self._sql.channel

    @trio.lowlevel.enable_ki_protection
    def token(self, job_id: str) -> CancellationToken:
        """Start a run of ``job_id`` in this process, and return its token.

        The token is cancelled when any process calls :meth:`cancel` for ``job_id`` during the
        run, and it is returned already cancelled if a request for ``job_id`` is pending from
        before the run (a durable request: sent before this worker got to the job). Its
        ``reason`` is the remote reason (or ``str(cause)`` when the request gave none), its
        ``cause`` a :class:`RemoteCancel`. The run ends with :meth:`landed`, which every run
        must reach (call it in a ``finally``).

        "Pending" is decided from the bus's copy of the pending requests, which the
        notifications keep current, so there is one narrow window: a run of the same job id
        that landed in *another* process just before this call, whose landing's notification
        has not reached this bus yet, leaves the request it consumed in the copy, and this run
        is born cancelled by it (also a request whose ``ttl`` ran out on the server within the
        last read's round trip). A request sent before the call that the copy does not hold
        yet cancels the token as soon as its notification arrives. :meth:`start_run` asks the
        server instead and has no such window: use it when a job id is reused across
        processes (a retry handed to another worker).

        Raises:
            TypeError: ``job_id`` is not a ``str``.
            ValueError: ``job_id`` is empty, longer than 1,000 characters, contains NUL, or
                cannot be encoded as UTF-8 (a lone surrogate).
            RuntimeError: The bus is closed, or this bus already has a run of ``job_id``.

        Not a checkpoint; never blocks: it reads the notifications that have already arrived
        (without waiting), then consults the copy.
        """
        run = self._begin_run(job_id)
        request = self._first_live(job_id)
        if request is not None:
            self._cancel_run(job_id, run, request.cause)
        return run.token

    async def start_run(self, job_id: str) -> CancellationToken:
        """Start a run of ``job_id`` as :meth:`token` does, and return its token once the
        server has said whether a request is pending: the token is then already cancelled
        if (and only if) the server holds a live request for ``job_id``.

        The strict form of :meth:`token`: the bus's copy of the pending requests is not
        consulted, so a request that a run which had landed before this call consumed never
        cancels this run, in whatever process that run was, however late its landing's
        notification arrives here; and expiry is decided by the server's clock.

        Raises:
            TypeError, ValueError, RuntimeError: As :meth:`token`.
            psycopg.Error: The server refused the read (no ``SELECT`` privilege, say).

        Cancellation:
            Always a checkpoint. Cancelled (or failed) before it returns: no run was started
            (there is nothing to land). While the server is unreachable, the read retries
            with back-off.
        """
        check_job_id(job_id)
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        run = self._begin_run(job_id)
        try:
            while not await self._read_requests([job_id]):
                pass  # discarded (a landing or a full read came meanwhile): read again
        except BaseException:
            if self._runs.get(job_id) is run:
                del self._runs[job_id]
            raise
        return run.token

    async def cancel(self, job_id: str, reason: str | None = None) -> None:
        """Ask whichever process runs ``job_id`` (now, or next within ``ttl``) to cancel it.

        The request is inserted into the table and announced with ``NOTIFY`` in one
        transaction. It is consumed by the :meth:`landed` of the run it reaches; one that no
        run reaches expires after the bus's ``ttl``. While the server is unreachable, the call
        retries with back-off until it is recorded (bound it with :func:`trio.fail_after`).

        Raises:
            TypeError: ``job_id`` is not a ``str``, or ``reason`` is neither ``None`` nor a
                ``str``.
            ValueError: A bad ``job_id`` (see :meth:`token`), or a ``reason`` with NUL or
                that UTF-8 cannot encode.
            RuntimeError: The bus is closed.
            psycopg.Error: The server refused the request (no ``INSERT`` privilege, say).

        Cancellation:
            Always a checkpoint. Cancelled before the statement ran: nothing was sent.
            Cancelled while it runs: it is stopped on the server and rolled back, unless it
            had already committed (then the request stands). No shielding.
        """
        check_job_id(job_id)
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")
        if reason is not None and "\x00" in reason:
            raise ValueError("reason must not contain NUL characters")
        if reason is not None:
            try:
                reason.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("reason must be encodable as UTF-8 (no lone surrogates)") from None
        self._check_open()
        statement, ttl = self._sql.cancel(), self._ttl

        async def send(conn: Connection) -> tuple[Any, ...] | None:
            return await conn.fetchone(statement, (job_id, reason, ttl))

        row = await self._link.run(send)
        assert row is not None
        self._sent[job_id] = (int(row[0]), trio.current_time())

    async def landed(self, job_id: str, outcome: Completed[object] | Failed | Aborted) -> None:
        """End this process's run of ``job_id`` with ``outcome``, and consume its requests.

        Every request for ``job_id`` recorded before this call is consumed: none of them can
        touch the next run of the same job id. A request recorded after it applies to the next
        run. When a request was consumed (or had cancelled this run), a landing is recorded
        for :meth:`wait_landed`. Without a run of ``job_id`` in this bus, the requests are
        consumed all the same.

        Raises:
            TypeError: A bad ``job_id`` type, or ``outcome`` is not ``Completed``, ``Failed``
                or ``Aborted``.
            ValueError: A bad ``job_id`` (see :meth:`token`).
            RuntimeError: The bus is closed.
            trio.ClosedResourceError: The bus was closed while the landing waited to be
                written.
            psycopg.Error: The server refused the statement (no ``DELETE`` privilege, say).

        Cancellation:
            Always a checkpoint. Cancelled before the call: nothing happens (the run goes on).
            Otherwise the run ends in this bus at the call, whatever happens next. Landings
            are written in batches by the bus: cancelled before its batch was sent,
            nothing is written (no request consumed); cancelled after, the batch's statement
            completes all the same, so the landing may have been recorded. A second call
            consumes what was sent meanwhile too. Not shielded: a worker whose own task is
            being cancelled calls it inside ``with trio.move_on_after(seconds, shield=True):``.
            While the server is unreachable the write retries with back-off.
        """
        check_job_id(job_id)
        kind = _outcome_kind(outcome)
        self._check_open()
        # Cancelled before the call: nothing at all happens (the writer task could otherwise
        # take the landing before this task's cancellation is delivered).
        await trio.lowlevel.checkpoint_if_cancelled()
        run = self._runs.pop(job_id, None)
        cause = run.cause if run is not None else None
        item = _Landing(job_id, kind, cause)
        self._landing_queue.append(item)
        self._landing_wanted.set()
        try:
            await item.done.wait()
        except trio.Cancelled:
            if item in self._landing_queue:  # not sent yet: it never will be
                self._landing_queue.remove(item)
            raise
        if item.error is not None:
            try:
                raise item.error
            finally:
                del item
        if item.consumed:
            # A read in flight may have found these requests before the landing consumed
            # them: it must not put them back in the copy (invariant 1), where token() would
            # cancel the next run with them. The landing's notification schedules a new read.
            self._landing_seq += 1
            self._last_landing[job_id] = self._landing_seq
        requests = self._pending.get(job_id)
        if requests is not None:
            left = [r for r in requests if r.cause.request_id not in item.consumed]
            if left:
                self._pending[job_id] = left
            else:
                del self._pending[job_id]

    async def wait_landed(self, job_id: str) -> Landing:
        """Wait for the landing of the run that the cancel request for ``job_id`` reached.

        The request is this bus's latest :meth:`cancel` of ``job_id``; without one, the
        requests for ``job_id`` pending in the table now; without any, the next landing of
        ``job_id`` recorded from now on. A request that no run reaches never lands: bound the
        wait with :func:`trio.fail_after`.

        Raises:
            TypeError, ValueError: A bad ``job_id`` (see :meth:`token`).
            RuntimeError: The bus is closed.

        Cancellation:
            Always a checkpoint; cancelling the wait changes nothing.
        """
        check_job_id(job_id)
        self._check_open()
        sent = self._sent.get(job_id)
        sql = self._sql
        params: tuple[object, ...]
        waiters = self._waiters.setdefault(job_id, _Waiters())
        waiters.count += 1
        try:
            if sent is not None:
                query, params = sql.landing_for(), (job_id, [sent[0]])
            else:
                pending_q = sql.pending_ids()

                async def pending(conn: Connection) -> tuple[Any, ...] | None:
                    return await conn.fetchone(pending_q, (job_id, job_id))

                row = await self._link.run(pending)
                assert row is not None
                ids, last_landing = list(row[0]), int(row[1])
                if ids:
                    query, params = sql.landing_for(), (job_id, ids)
                else:
                    query, params = sql.landing_after(), (job_id, last_landing)
            while True:
                event = self._waiters_for(job_id).event

                async def look(conn: Connection) -> tuple[Any, ...] | None:
                    return await conn.fetchone(query, params)

                found = await self._link.run(look)
                if found is not None:
                    if sent is not None and self._sent.get(job_id) == sent:
                        del self._sent[job_id]
                    return Landing(
                        job_id=str(found[0]),
                        outcome=found[1],
                        seconds=None if found[2] is None else float(found[2]),
                        landed_at=found[3],
                        sender=str(found[4]),
                    )
                await event.wait()
        finally:
            current = self._waiters.get(job_id)
            if current is not None:
                current.count -= 1
                if current.count <= 0:
                    del self._waiters[job_id]

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self._connected else "reconnecting")
        return (
            f"<trio_cancel.postgres.CancelBus {state} table={self.table!r} "
            f"channel={self.channel!r}, {len(self._runs)} runs, {len(self._pending)} jobs with "
            f"pending requests>"
        )

    # ------------------------------------------------------------------ internals

    @trio.lowlevel.enable_ki_protection
    def _begin_run(self, job_id: str) -> _Run:
        """Check the call, read the notifications that have arrived, and register a run."""
        check_job_id(job_id)
        self._check_open()
        if job_id in self._runs:
            raise RuntimeError(
                f"this bus already has a run of job {job_id!r}: call landed() to end it first"
            )
        if self._listen is not None:
            self._drain()
        run = self._runs[job_id] = _Run(CancellationToken(), self._read_seq)
        return run

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this cancellation bus is closed")

    def _waiters_for(self, job_id: str) -> _Waiters:
        waiters = self._waiters.get(job_id)
        if waiters is None:  # woken and removed meanwhile: a new generation
            waiters = self._waiters[job_id] = _Waiters(count=1)
        return waiters

    def _wake_waiters(self, job_id: str) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.event.set()
            waiters.event = trio.Event()

    def _first_live(self, job_id: str) -> _Request | None:
        requests = self._pending.get(job_id)
        if not requests:
            return None
        now = trio.current_time()
        live = [r for r in requests if r.deadline > now]
        if len(live) != len(requests):
            if live:
                self._pending[job_id] = live
            else:
                del self._pending[job_id]
        return live[0] if live else None

    @trio.lowlevel.enable_ki_protection
    def _cancel_run(self, job_id: str, run: _Run, cause: RemoteCancel) -> None:
        if run.cause is not None or run.token.is_cancelled():
            return
        run.cause = cause
        try:
            _hooks.will_cancel(run.token, "remote")  # trio_cancel.otel: the source
            run.token.cancel(cause.reason, cause=cause)
        except Exception:  # noqa: BLE001 - callbacks of the user's own: they must not stop the bus
            _log.exception("an on_cancel callback of job %r's token raised", job_id)

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        self._connection_changed.set()
        self._connection_changed = trio.Event()

    def _want(self, job_id: str) -> None:
        self._to_fetch.add(job_id)
        self._fetch_wanted.set()

    @trio.lowlevel.enable_ki_protection
    def _drain(self) -> None:
        """Read the notifications that have arrived (never blocks); on a lost connection, mark
        the listener gone and wake the listener task."""
        raw = self._listen
        payloads: list[str] = []
        try:
            pgconn = raw.pgconn
            pgconn.consume_input()
            while (note := pgconn.notifies()) is not None:
                payloads.append(bytes(note.extra).decode("utf-8", "replace"))
        except psycopg.OperationalError:
            self._listen = None
            trio.lowlevel.notify_closing(self._listen_fd)
        for payload in payloads:
            self._on_notification(payload)

    def _on_notification(self, payload: str) -> None:
        kind, _, job_id = payload.partition(":")
        if not job_id:
            return
        if kind == "l":
            self._landing_seq += 1
            self._last_landing[job_id] = self._landing_seq
            self._pending.pop(job_id, None)
            self._want(job_id)
            self._wake_waiters(job_id)
        elif kind == "c":
            self._want(job_id)

    async def _read_requests(self, jobs: list[str] | None) -> bool:
        """Read the live requests of ``jobs`` (all when ``None``) and apply them (invariants 1
        and 2); False if the result was discarded for one of ``jobs`` (a full read began, or a
        landing of the job came, meanwhile): those jobs are then read again by the bus.

        Cancellation: a checkpoint; cancelled, nothing is applied.
        """
        self._read_seq += 1
        seq, start_seq, epoch = self._read_seq, self._landing_seq, self._epoch
        if jobs is None:
            self._epoch += 1
            epoch = self._epoch
        statement = self._sql.requests(some=jobs is not None)
        params: tuple[object, ...] = () if jobs is None else (jobs,)

        async def read(conn: Connection) -> list[tuple[Any, ...]]:
            return await conn.fetchall(statement, params)

        self._reads_in_flight += 1
        try:
            rows = await self._fetch_link.run(read)
            if epoch != self._epoch:  # a full read started since: it supersedes this one
                if jobs is not None:
                    for job in jobs:
                        self._want(job)
                return False
            return self._apply(jobs, rows, start_seq, seq)
        finally:
            self._reads_in_flight -= 1
            if self._reads_in_flight == 0:
                self._last_landing.clear()

    @trio.lowlevel.enable_ki_protection
    def _apply(
        self, jobs: list[str] | None, rows: list[tuple[Any, ...]], start_seq: int, seq: int
    ) -> bool:
        """Install a read's result (invariant 1) and cancel the runs it reaches (invariant 2);
        False if it was discarded for some job (a landing of it came after the read began):
        such jobs are read again.

        ``start_seq`` is the landing sequence number and ``seq`` the read's own number, both
        taken when the read began."""
        now = trio.current_time()
        found: dict[str, list[_Request]] = {}
        for rid, job, reason, sender, sent_at, remaining in rows:
            cause = RemoteCancel(str(job), reason, str(sender), sent_at, int(rid))
            found.setdefault(cause.job_id, []).append(_Request(cause, now + float(remaining)))

        def fresh(job: str) -> bool:
            return self._last_landing.get(job, 0) <= start_seq

        if jobs is None:
            stale = [job for job in self._last_landing if not fresh(job)]
            kept = {job: reqs for job, reqs in self._pending.items() if not fresh(job)}
            self._pending = {job: reqs for job, reqs in found.items() if fresh(job)} | kept
            touched: list[str] = [job for job in self._runs if fresh(job)]
        else:
            stale = [job for job in jobs if not fresh(job)]
            touched = [job for job in jobs if fresh(job)]
            for job in touched:
                if job in found:
                    self._pending[job] = found[job]
                else:
                    self._pending.pop(job, None)
        for job in touched:
            run = self._runs.get(job)
            if run is None or run.cause is not None or job not in found:
                continue
            if seq > run.since:  # the read began after the run: the requests it found stand
                self._cancel_run(job, run, found[job][0].cause)
            else:  # the read is older than the run: confirm with a read begun now
                self._want(job)
        for job in stale:  # what the read found there may be newer than the landing
            self._want(job)
        return not stale

    async def _ensure_schema(self) -> None:
        """Create the table, its functions and its trigger if missing (under an advisory
        lock), and check that the trigger announces on this bus's channel.

        Cancellation: a checkpoint; the DDL is one transaction (all or nothing).
        """
        sql = self._sql
        quoted = f'"{sql.table}"'
        trigger = f"{sql.table}_announce"

        async def ensure(conn: Connection) -> str | None:
            row = await conn.fetchone(sql.trigger_channel(), (quoted, trigger))
            if row is None:
                async with conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext('trio_cancel bus ' || %s))",
                        (sql.table,),
                    )
                    row = await conn.fetchone(sql.trigger_channel(), (quoted, trigger))
                    if row is None:
                        for statement in sql.create():
                            await conn.execute(statement)
                        await conn.execute(sql.create_trigger())
                        return None
            return str(row[0])

        existing = await self._link.run(ensure)
        if existing is not None:
            channel = existing.split("\\000")[0]
            if channel != sql.channel:
                raise ValueError(
                    f"table {sql.table!r} is announced on channel {channel!r}, not "
                    f"{sql.channel!r}: open the bus with channel={channel!r} or another table"
                )

    async def _start_listening(self) -> None:
        """Connect the listener and read the table (the bus's first connection).

        Cancellation: a checkpoint; cancelled, the listener is closed again.
        """
        raw = await self._connect_listener()
        self._listen, self._listen_fd = raw, raw.fileno()
        try:
            await self._read_requests(None)
        except BaseException:
            self._close_listener(raw)
            raise
        self._set_connected(True)

    def _close_listener(self, raw: Any) -> None:  # noqa: ANN401 - psycopg.Connection[Any]
        if self._listen is raw:
            self._listen = None
            trio.lowlevel.notify_closing(self._listen_fd)
        with contextlib.suppress(Exception):
            raw.close()
        if self._connected:
            self._set_connected(False)

    async def _listen_forever(self) -> None:
        """Wait on the listener's socket and drain it; on loss, reconnect with back-off,
        then read the table again (requests made meanwhile) and wake the landing waiters.

        Cancellation: runs until cancelled; the socket is closed on the way out.
        """
        delay = FIRST_BACKOFF
        while True:
            raw = self._listen
            if raw is not None:
                try:
                    while self._listen is raw:
                        await trio.lowlevel.wait_readable(self._listen_fd)
                        if self._listen is raw:
                            self._drain()
                except trio.ClosedResourceError:
                    pass  # token()'s drain found the connection lost
                finally:
                    self._close_listener(raw)
            await trio.sleep(delay)
            delay = min(2 * delay, MAX_BACKOFF)
            try:
                await self._start_listening()
            except psycopg.OperationalError:
                continue
            delay = FIRST_BACKOFF
            for job_id in list(self._waiters):  # landings announced while away
                self._wake_waiters(job_id)

    async def _connect_listener(self) -> Any:  # noqa: ANN401 - psycopg.Connection[Any]
        """Cancellation: a checkpoint; a connection made after the caller left is closed."""
        handoff = _Handoff()
        try:
            return await trio.to_thread.run_sync(
                _open_listener, self._dsn, self._sql.channel, handoff, abandon_on_cancel=True
            )
        except trio.Cancelled:
            with handoff.lock:
                handoff.abandoned = True
                raw, handoff.raw = handoff.raw, None
            if raw is not None:  # connected just as the caller left
                with contextlib.suppress(Exception):
                    raw.close()
            raise

    async def _fetch_forever(self) -> None:
        """Read the requests of the jobs that notifications named, in batches.

        Cancellation: runs until cancelled.
        """
        while True:
            await self._fetch_wanted.wait()
            self._fetch_wanted = trio.Event()
            jobs, self._to_fetch = sorted(self._to_fetch), set()
            if jobs:
                await self._read_requests(jobs)

    async def _land_forever(self) -> None:
        """Write the queued landings, many in one statement (one job id at most once).

        Cancellation: runs until cancelled; the calls still waiting get
        :exc:`trio.ClosedResourceError`.
        """
        statement = self._sql.landed()
        try:
            while True:
                await self._landing_wanted.wait()
                self._landing_wanted = trio.Event()
                while self._landing_queue:
                    batch: dict[str, _Landing] = {}
                    rest: list[_Landing] = []
                    for item in self._landing_queue:
                        if item.job_id in batch or len(batch) >= MAX_LANDING_BATCH:
                            rest.append(item)
                        else:
                            batch[item.job_id] = item
                    self._landing_queue = rest
                    await self._write_landings(statement, list(batch.values()))
        finally:
            for item in self._landing_queue:
                item.error = trio.ClosedResourceError("the cancellation bus was closed")
                item.done.set()
            self._landing_queue = []

    async def _write_landings(self, statement: str, batch: list[_Landing]) -> None:
        """Cancellation: a checkpoint; the calls of the batch get the cancellation's
        ``ClosedResourceError`` (the bus is closing)."""
        params = {
            "jobs": [item.job_id for item in batch],
            "outcomes": [item.kind for item in batch],
            "causes": [None if i.cause is None else str(i.cause.request_id) for i in batch],
            "sent": [None if i.cause is None else i.cause.sent_at.isoformat() for i in batch],
            "ttl": self._ttl,
        }

        async def write(conn: Connection) -> list[tuple[Any, ...]]:
            return await conn.fetchall(statement, params)

        try:
            rows = await self._link.run(write)
        except Exception as exc:  # noqa: BLE001 - handed to the caller(s) of the batch
            if len(batch) > 1:
                # One bad item must not fail the others: write them one by one, so that only
                # the statement of the bad one fails.
                try:
                    for item in batch:
                        await self._write_landings(statement, [item])
                finally:
                    for item in batch:
                        if not item.done.is_set():  # the bus closed meanwhile
                            item.error = trio.ClosedResourceError("the cancellation bus was closed")
                            item.done.set()
                return  # noqa: ASYNC910 - the failed call was a checkpoint
            batch[0].error = exc
            batch[0].done.set()
            return  # noqa: ASYNC910 - the failed call was a checkpoint
        except BaseException:
            for item in batch:
                item.error = trio.ClosedResourceError("the cancellation bus was closed")
                item.done.set()
            raise
        consumed = {str(job): frozenset(ids) for job, ids in rows}
        for item in batch:
            item.consumed = consumed.get(item.job_id, frozenset())
            item.done.set()

    async def _purge(self) -> None:
        """Delete expired rows; forget expired requests and old sent ids.

        Cancellation: a checkpoint; the ``DELETE`` is atomic.
        """
        statement = self._sql.purge()

        async def purge(conn: Connection) -> int:
            return await conn.execute(statement)

        await self._link.run(purge)
        now = trio.current_time()
        for job_id in list(self._pending):
            self._first_live(job_id)
        for job_id, (_, at) in list(self._sent.items()):
            if at + self._ttl < now:
                del self._sent[job_id]

    async def _purge_forever(self) -> None:
        """Cancellation: runs until cancelled."""
        every = min(max(self._ttl / 2, 0.05), 60.0)
        while True:
            await self._purge()
            await trio.sleep(every)


def open_cancel_bus(
    dsn: str,
    *,
    channel: str = "trio_cancel",
    table: str = "trio_cancel_requests",
    ttl: float = 3600.0,
) -> AbstractAsyncContextManager[CancelBus]:
    """``async with open_cancel_bus(dsn) as bus:`` a cancellation bus over PostgreSQL.

    Opens one listening connection (its socket waited on from Trio, no thread) and two
    ordinary ones (one thread each) for reads and writes; creates ``table`` (with its
    ``"<table>_cancel"`` function and trigger) if missing, under an advisory lock; reads the
    pending requests. Requests live ``ttl`` seconds unless a landing consumes them first;
    expired rows are deleted by every open bus every ``min(ttl / 2, 60)`` seconds.

    Args:
        dsn: A libpq connection string or URI.
        channel: The ``LISTEN``/``NOTIFY`` channel (a plain SQL identifier).
        table: The table of requests and landings (a plain SQL identifier, at most 48
            characters; the schema is the connection's ``search_path``).
        ttl: Seconds a request (and a landing) lives in the table.

    Raises:
        TypeError: An argument of the wrong type.
        ValueError: A bad identifier, a ``ttl`` that is not finite and > 0, or a ``table``
            announced on another channel.
        psycopg.OperationalError: The server could not be reached at the start.

    Cancellation:
        Entering is a checkpoint: cancelled while connecting or reading, everything opened is
        closed and nothing is left running. Leaving stops the bus's tasks and closes its
        connections (shielded, bounded by 10 seconds in all). Runs that did not land are left
        as they are in the table (their requests expire).
    """
    if not isinstance(dsn, str):
        raise TypeError(f"dsn must be a str, not {type(dsn).__name__}")
    if not dsn.strip():
        raise ValueError("dsn must not be empty")
    sql = _Sql(
        table=_check_identifier(table, "table", MAX_TABLE_LENGTH),
        channel=_check_identifier(channel, "channel", MAX_CHANNEL_LENGTH),
    )
    seconds = _check_ttl(ttl)
    return _open(CancelBus._create(_dsn=dsn, _sql=sql, _ttl=seconds))


@contextlib.asynccontextmanager
async def _open(bus: CancelBus) -> AsyncIterator[CancelBus]:
    # The body's exception is kept aside and raised after the bus's nursery has closed, so it
    # propagates as itself, not wrapped in an exception group.
    body_error: BaseException | None = None
    try:
        await bus._link.connect_now()
        await bus._fetch_link.connect_now()
        await bus._ensure_schema()
        await bus._start_listening()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bus._listen_forever)
            nursery.start_soon(bus._fetch_forever)
            nursery.start_soon(bus._purge_forever)
            nursery.start_soon(bus._land_forever)
            try:
                yield bus
            except BaseException as exc:  # noqa: ASYNC103, BLE001 - raised below, unwrapped
                body_error = exc
            finally:
                bus._closed = True
                nursery.cancel_scope.cancel()
    finally:
        bus._closed = True
        if bus._listen is not None:
            bus._close_listener(bus._listen)
        with trio.move_on_after(2 * GRACE, shield=True):
            await bus._link.aclose()
            await bus._fetch_link.aclose()
    if body_error is not None:
        try:
            raise body_error  # noqa: ASYNC104 - the body's own exception, Cancelled included
        finally:
            del body_error


for _public in (RemoteCancel, Landing, CancelBus, open_cancel_bus):
    _public.__module__ = "trio_cancel.postgres"
