"""Tests of the cancellation bus (trio_cancel.postgres.open_cancel_bus) against the real
PostgreSQL server whose DSN is in TRIO_CANCEL_PG_DSN (started by .ci/with-postgres); they skip
without it, unless TRIO_CANCEL_REQUIRE_PG=1. Every test uses a table and channel of its own.

The last tests run real worker processes (examples/cancel_bus.py in its worker role) and a
controller in this process, and restart the server in the middle."""

from __future__ import annotations

import functools
import math
import os
import random
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager

    from trio_cancel.postgres import CancelBus

PG_DSN = os.environ.get("TRIO_CANCEL_PG_DSN")
REQUIRE_PG = os.environ.get("TRIO_CANCEL_REQUIRE_PG") == "1"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cancel_bus.py"
WAIT = 30  # seconds: a bound on waits for real events, never reached when things work


def _require_pg() -> str:
    if PG_DSN is None:
        if REQUIRE_PG:
            pytest.fail("TRIO_CANCEL_REQUIRE_PG=1 but no TRIO_CANCEL_PG_DSN: no PostgreSQL server")
        pytest.skip(
            "the cancellation bus is tested against a real PostgreSQL server and "
            "TRIO_CANCEL_PG_DSN is not set: run `make test` or `.ci/with-postgres "
            ".venv/bin/pytest` (a throwaway server on 127.0.0.1; needs PostgreSQL installed: "
            "sudo apt-get install -y postgresql), or set TRIO_CANCEL_PG_DSN to a server's DSN"
        )
    return PG_DSN


@attrs.frozen
class Names:
    dsn: str
    table: str
    channel: str

    def open(self, **kwargs: Any) -> AbstractAsyncContextManager[CancelBus]:  # noqa: ANN401
        from trio_cancel.postgres import open_cancel_bus

        options = {"table": self.table, "channel": self.channel, **kwargs}
        return open_cancel_bus(self.dsn, **options)


async def _drop(dsn: str, table: str) -> None:
    import trio_cancel.postgres as tc_postgres

    async with await tc_postgres.connect(dsn) as conn:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.execute(f'DROP FUNCTION IF EXISTS "{table}_announce"()')
        await conn.execute(f'DROP FUNCTION IF EXISTS "{table}_cancel"(text, text, interval)')


@pytest.fixture
def pg_dsn() -> str:
    # A sync fixture: a skip raised here keeps its message (pytest-trio reports a skip raised
    # inside the Trio run without it).
    return _require_pg()


@pytest.fixture
async def names(pg_dsn: str) -> AsyncIterator[Names]:
    dsn = pg_dsn
    name = f"tcb_{uuid.uuid4().hex[:12]}"
    try:
        yield Names(dsn, name, name)
    finally:
        with trio.CancelScope(shield=True):
            await _drop(dsn, name)


async def _sql(dsn: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    import trio_cancel.postgres as tc_postgres

    async with await tc_postgres.connect(dsn) as conn:
        if statement.lstrip().upper().startswith("SELECT"):
            return await conn.fetchall(statement, params)
        await conn.execute(statement, params)
        return []


async def _count(names: Names, where: str = "true") -> int:
    rows = await _sql(names.dsn, f'SELECT count(*) FROM "{names.table}" WHERE {where}')
    return int(rows[0][0])


async def _barrier(sender: CancelBus, receiver: CancelBus) -> None:
    """Return once ``receiver`` has seen a request ``sender`` sends now: notifications arrive in
    commit order, so by then it has seen every earlier one too."""
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    token = receiver.token(probe)
    await sender.cancel(probe, "barrier")
    with trio.fail_after(WAIT):
        await token.wait_cancelled()
    await receiver.landed(probe, tc.Aborted("barrier"))


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"table": "x; DROP TABLE y"}, ValueError, "table must be a plain SQL identifier"),
        ({"table": 'a"b'}, ValueError, "table"),
        ({"table": "1abc"}, ValueError, "table"),
        ({"table": ""}, ValueError, "table"),
        ({"table": "t" * 49}, ValueError, "at most 48"),
        ({"table": 5}, TypeError, "table must be a str"),
        ({"channel": "chan nel"}, ValueError, "channel must be a plain SQL identifier"),
        ({"channel": "c" * 64}, ValueError, "channel"),
        ({"channel": None}, TypeError, "channel must be a str"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": -1.0}, ValueError, "ttl"),
        ({"ttl": math.nan}, ValueError, "ttl"),
        ({"ttl": math.inf}, ValueError, "ttl"),
        ({"ttl": 10**400}, ValueError, "ttl"),
        ({"ttl": True}, TypeError, "ttl"),
        ({"ttl": "60"}, TypeError, "ttl"),
    ],
)
def test_open_cancel_bus_rejects_bad_arguments_at_the_call(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    pytest.importorskip("psycopg")
    from trio_cancel.postgres import open_cancel_bus

    # Raised by the call itself, before any connection (the DSN leads nowhere).
    with pytest.raises(error, match=match):
        open_cancel_bus("postgresql://nobody@127.0.0.1:1/none", **kwargs)  # type: ignore[arg-type]


def test_open_cancel_bus_rejects_a_bad_dsn() -> None:
    pytest.importorskip("psycopg")
    from trio_cancel.postgres import open_cancel_bus

    with pytest.raises(TypeError, match="dsn"):
        open_cancel_bus(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dsn"):
        open_cancel_bus("  ")


def test_import_trio_cancel_does_not_import_psycopg() -> None:
    code = "import sys, trio_cancel; assert 'psycopg' not in sys.modules, 'psycopg imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_bus_and_its_values_live_in_trio_cancel_postgres() -> None:
    pytest.importorskip("psycopg")
    import trio_cancel.postgres as tc_postgres

    for name in ("CancelBus", "Landing", "RemoteCancel", "open_cancel_bus"):
        obj = getattr(tc_postgres, name)
        assert obj.__module__ == "trio_cancel.postgres"
        assert obj.__doc__
    with pytest.raises(TypeError, match="no public constructor"):
        tc_postgres.CancelBus()  # type: ignore[call-arg]


async def test_open_cancel_bus_unreachable_server_raises_operational_error() -> None:
    psycopg = pytest.importorskip("psycopg")
    from trio_cancel.postgres import open_cancel_bus

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(psycopg.OperationalError):
        async with open_cancel_bus(f"postgresql://nobody@127.0.0.1:{port}/none"):
            pytest.fail("opened")


async def test_bus_calls_reject_bad_job_ids_and_outcomes(names: Names) -> None:
    async with names.open() as bus:
        bads: list[tuple[Any, type[Exception]]] = [
            ("", ValueError),
            (None, TypeError),
            (4, TypeError),
        ]
        for bad, error in bads:
            with pytest.raises(error, match="job_id"):
                bus.token(bad)
            with pytest.raises(error, match="job_id"):
                await bus.cancel(bad)
            with pytest.raises(error, match="job_id"):
                await bus.landed(bad, tc.Completed(None))
            with pytest.raises(error, match="job_id"):
                await bus.wait_landed(bad)
        with pytest.raises(ValueError, match="1000"):
            bus.token("x" * 1001)
        with pytest.raises(ValueError, match="NUL"):
            bus.token("a\x00b")
        # A lone surrogate is a str that the server cannot take: refused at every call.
        with pytest.raises(ValueError, match="UTF-8"):
            bus.token("job-\udc80")
        with pytest.raises(ValueError, match="UTF-8"):
            await bus.cancel("job-\udc80")
        with pytest.raises(ValueError, match="UTF-8"):
            await bus.landed("job-\udc80", tc.Completed(None))
        with pytest.raises(ValueError, match="UTF-8"):
            await bus.wait_landed("job-\udc80")
        with pytest.raises(ValueError, match="UTF-8"):
            await bus.cancel("job", "reason \udc80")
        assert not bus._runs
        with pytest.raises(TypeError, match="reason"):
            await bus.cancel("job", reason=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="outcome"):
            await bus.landed("job", "completed")  # type: ignore[arg-type]
        token = bus.token("job")
        with pytest.raises(RuntimeError, match="already has a run"):
            bus.token("job")  # the first run is left as it was
        assert not token.is_cancelled()
        await bus.landed("job", tc.Completed(None))
        assert await _count(names) == 0  # nothing was sent by the failed calls
    with pytest.raises(RuntimeError, match="closed"):
        bus.token("job")
    with pytest.raises(RuntimeError, match="closed"):
        await bus.cancel("job")


# ---------------------------------------------------------------------------- semantics


async def test_token_is_cancelled_by_a_cancel_from_another_bus_during_the_run(
    names: Names,
) -> None:
    async with names.open() as worker, names.open() as controller:
        assert worker.connected
        token = worker.token("job-1")
        assert not token.is_cancelled()
        await controller.cancel("job-1", "the user pressed stop")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        assert token.reason == "the user pressed stop"
        cause = token.cause
        from trio_cancel.postgres import Landing, RemoteCancel

        assert isinstance(cause, RemoteCancel)
        assert cause.job_id == "job-1"
        assert cause.reason == "the user pressed stop"
        assert cause.sender.startswith("postgres (trio_cancel bus ")
        assert cause.sent_at.tzinfo is not None
        assert isinstance(cause.request_id, int)
        assert "the user pressed stop" in str(cause)
        await worker.landed("job-1", tc.Aborted(token.reason))
        with trio.fail_after(WAIT):
            landing = await controller.wait_landed("job-1")
        assert isinstance(landing, Landing)
        assert landing.job_id == "job-1"
        assert landing.outcome == "aborted"
        assert landing.seconds is not None
        assert landing.seconds >= 0
        assert landing.sender.startswith("postgres")
        # The request was consumed; the landing row stays until it expires.
        assert await _count(names, "kind = 'cancel'") == 0


async def test_token_reason_without_a_remote_reason_names_the_sender(names: Names) -> None:
    async with names.open() as bus:
        token = bus.token("job")
        await bus.cancel("job")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        assert token.cause is not None
        assert token.reason == str(token.cause)
        assert token.reason.startswith("job 'job' cancelled by postgres")


async def test_request_sent_before_the_run_cancels_the_token_at_once(names: Names) -> None:
    async with names.open() as controller:
        await controller.cancel("early", "before it started")
        # A worker that starts afterwards finds the request in the table: start_run() returns
        # the token born cancelled.
        async with names.open() as worker:
            token = await worker.start_run("early")
            assert token.is_cancelled()
            assert token.reason == "before it started"
            await worker.landed("early", tc.Aborted(token.reason))
        with trio.fail_after(WAIT):
            landing = await controller.wait_landed("early")
        assert landing.outcome == "aborted"


async def test_request_in_the_copy_makes_token_born_cancelled(names: Names) -> None:
    from trio_cancel.postgres import RemoteCancel

    async with names.open() as controller:
        await controller.cancel("early", "before it started")
        # Opened afterwards, the worker's bus reads the table: its copy holds the request, and
        # token() returns the token already cancelled, with no await in between.
        async with names.open() as worker:
            assert worker._pending.get("early")
            token = worker.token("early")
            assert token.is_cancelled()
            assert token.reason == "before it started"
            assert isinstance(token.cause, RemoteCancel)
            assert token.cause.job_id == "early"
            await worker.landed("early", tc.Aborted(token.reason))
        with trio.fail_after(WAIT):
            landing = await controller.wait_landed("early")
        assert landing.outcome == "aborted"
        # A request that reached the copy through its notification: born cancelled as well.
        async with names.open() as worker:
            await controller.cancel("later", "sent while the worker was up")
            await _barrier(controller, worker)
            token = worker.token("later")
            assert token.is_cancelled()
            assert token.reason == "sent while the worker was up"
            await worker.landed("later", tc.Aborted(token.reason))


async def test_start_run_cancelled_starts_no_run(names: Names) -> None:
    async with names.open() as bus:
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.start_run("job")
        assert scope.cancelled_caught
        assert not bus._runs
        for delay in (0.0, 0.0005, 0.001, 0.005):  # at the read, wherever it is
            with trio.move_on_after(delay) as scope:
                await bus.start_run("job")
            if scope.cancelled_caught:
                assert not bus._runs
            else:
                await bus.landed("job", tc.Completed(None))
        with pytest.raises(ValueError, match="job_id"):
            await bus.start_run("")
    with pytest.raises(RuntimeError, match="closed"):
        await bus.start_run("job")


async def test_request_for_a_job_nobody_runs_stays_pending(names: Names) -> None:
    async with names.open() as controller, names.open() as worker:
        await controller.cancel("idle", "nobody runs it yet")
        await _barrier(controller, worker)
        await worker._purge()  # a purge keeps it: it has not expired
        assert await _count(names, "kind = 'cancel'") == 1
        token = await worker.start_run("idle")
        assert token.is_cancelled()
        assert token.reason == "nobody runs it yet"
        await worker.landed("idle", tc.Aborted(token.reason))


async def test_landed_consumes_requests_so_the_next_run_is_untouched(names: Names) -> None:
    async with names.open() as worker, names.open() as controller:
        token = worker.token("reused")
        await controller.cancel("reused", "first")
        await controller.cancel("reused", "second")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        assert token.reason == "first"  # the first request wins
        await worker.landed("reused", tc.Aborted(token.reason))
        await _barrier(controller, worker)
        # The next run of the same job id: neither request touches it, here or elsewhere.
        again = worker.token("reused")
        assert not again.is_cancelled()
        async with names.open() as third:
            assert not third.token("reused").is_cancelled()
            await third.landed("reused", tc.Completed(None))
        await _barrier(controller, worker)
        assert not again.is_cancelled()
        await worker.landed("reused", tc.Completed(None))
        assert await _count(names, "kind = 'cancel'") == 0


async def test_a_landing_removes_the_consumed_request_from_every_other_bus(
    names: Names,
) -> None:
    async with names.open() as first, names.open() as second, names.open() as controller:
        token = first.token("moved")
        await controller.cancel("moved", "stop")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        await _barrier(controller, second)  # second now holds the request in its copy
        assert second._pending.get("moved")
        await first.landed("moved", tc.Aborted("stop"))
        with trio.fail_after(WAIT):
            await controller.wait_landed("moved")
        await _barrier(controller, second)  # second has read the landing's notification
        assert not second.token("moved").is_cancelled()
        await second.landed("moved", tc.Completed(None))


async def test_request_sent_after_the_landing_applies_to_the_next_run(names: Names) -> None:
    async with names.open() as worker, names.open() as controller:
        worker.token("late")
        await worker.landed("late", tc.Completed(None))
        assert await _count(names) == 0  # no request consumed: no landing recorded
        await controller.cancel("late", "too late for the first run")
        await _barrier(controller, worker)
        token = await worker.start_run("late")
        assert token.is_cancelled()
        assert token.reason == "too late for the first run"
        await worker.landed("late", tc.Aborted(token.reason))
        with trio.fail_after(WAIT):
            assert (await controller.wait_landed("late")).outcome == "aborted"


async def test_requests_expire_after_ttl_and_expired_rows_are_deleted(names: Names) -> None:
    async with names.open(ttl=0.3) as bus:
        await bus.cancel("expiring", "short-lived")
        await bus.cancel("also", None)
        await _barrier(bus, bus)
        assert await _count(names, "kind = 'cancel'") == 2
        await trio.sleep(0.4)  # the ttl passes (real time: the server's clock)
        token = bus.token("expiring")
        assert not token.is_cancelled()
        await bus.landed("expiring", tc.Completed(None))
        await bus._purge()
        assert await _count(names) == 0
        async with names.open() as later:
            assert not later.token("also").is_cancelled()


async def test_a_long_reason_is_carried_whole_through_the_table(names: Names) -> None:
    reason = "why: " + "é" * 20_000  # far beyond NOTIFY's 8,000-byte payload
    async with names.open() as worker, names.open() as controller:
        token = worker.token("long")
        await controller.cancel("long", reason)
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        assert token.reason == reason


async def test_two_buses_on_other_tables_and_channels_never_see_each_other(names: Names) -> None:
    other = Names(names.dsn, names.table + "_b", names.channel + "_b")
    try:
        async with names.open() as a, other.open() as b:
            token_a = a.token("shared-id")
            token_b = b.token("shared-id")
            await b.cancel("shared-id", "for b only")
            with trio.fail_after(WAIT):
                await token_b.wait_cancelled()
            await _barrier(a, a)
            assert not token_a.is_cancelled()
            assert await _count(names, "job_id = 'shared-id'") == 0
            await b.landed("shared-id", tc.Aborted("for b only"))
            await a.landed("shared-id", tc.Completed(None))
    finally:
        with trio.CancelScope(shield=True):
            await _drop(other.dsn, other.table)


async def test_a_table_announced_on_another_channel_is_refused(names: Names) -> None:
    async with names.open():
        pass
    with pytest.raises(ValueError, match="announced on channel"):
        async with names.open(channel="another_channel"):
            pytest.fail("opened")


async def test_concurrent_first_starts_create_the_table_once(names: Names) -> None:
    opened: list[bool] = []

    async def start() -> None:
        async with names.open() as bus:
            opened.append(bus.connected)

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(start)
    assert opened == [True] * 6
    rows = await _sql(
        names.dsn, "SELECT count(*) FROM pg_trigger WHERE tgname = %s", (names.table + "_announce",)
    )
    assert rows == [(1,)]


async def test_plain_sql_function_and_insert_cancel_and_cannot_forge_the_sender(
    names: Names,
) -> None:
    async with names.open() as bus:
        by_function = bus.token("f")
        by_insert = bus.token("i")
        await _sql(names.dsn, f"SELECT \"{names.table}_cancel\"('f', 'from SQL')")
        await _sql(
            names.dsn,
            f"INSERT INTO \"{names.table}\" (job_id, reason, sender) VALUES ('i', 'insert', 'me')",
        )
        with trio.fail_after(WAIT):
            await by_function.wait_cancelled()
            await by_insert.wait_cancelled()
        assert by_function.reason == "from SQL"
        assert by_insert.reason == "insert"
        assert by_insert.cause is not None
        assert getattr(by_insert.cause, "sender", None) == "postgres"  # the role, not 'me'


async def test_grants_decide_who_may_cancel(names: Names) -> None:
    import psycopg

    role = f"canceller_{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(names.dsn, user=role)
    insert = f"INSERT INTO \"{names.table}\" (job_id, reason) VALUES ('g', 'granted')"
    async with names.open() as bus:
        token = bus.token("g")
        await _sql(names.dsn, f'CREATE ROLE "{role}" LOGIN')
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await _sql(dsn, insert)
            await _sql(names.dsn, f'GRANT INSERT ON "{names.table}" TO "{role}"')
            function = f"SELECT \"{names.table}_cancel\"('g', 'by function')"
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await _sql(dsn, function)  # it returns the id: that takes SELECT (id)
            await _sql(names.dsn, f'GRANT SELECT (id) ON "{names.table}" TO "{role}"')
            await _sql(dsn, function)
            await _sql(dsn, insert)
            with trio.fail_after(WAIT):
                await token.wait_cancelled()
            assert token.cause is not None
            assert getattr(token.cause, "sender", "").startswith(role)
            assert token.reason == "by function"
        finally:
            with trio.CancelScope(shield=True):
                await _sql(names.dsn, f'DROP OWNED BY "{role}"')
                await _sql(names.dsn, f'DROP ROLE "{role}"')


async def test_requests_reach_jobs_while_the_worker_drains_under_graceful_shutdown(
    names: Names,
) -> None:
    landed = trio.Event()
    async with names.open() as worker, names.open() as controller:

        async def job() -> str:
            token = worker.token("draining")
            with token.cancel_scope():
                await trio.sleep(WAIT * 2)
            await worker.landed("draining", tc.Aborted(token.reason))
            landed.set()
            return "landed"

        async with tc.GracefulShutdown(grace=WAIT * 4) as shutdown:
            shutdown.spawn(job, name="job")
            await trio.testing.wait_all_tasks_blocked()
            shutdown.trigger("draining")  # the job ignores the shutdown: it runs on
            await controller.cancel("draining", "cancelled while draining")
            with trio.fail_after(WAIT):
                await landed.wait()
                report = await shutdown.wait()
        (row,) = report.tasks
        assert row.outcome == tc.Completed("landed")
        assert not row.forced


async def test_an_exception_from_the_body_propagates_as_itself(names: Names) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with names.open():
            raise KeyError("mine")


async def test_on_cancel_callback_that_raises_does_not_stop_the_bus(
    names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    async with names.open() as bus:
        token = bus.token("noisy")

        def boom() -> None:
            raise RuntimeError("callback failed")

        token.on_cancel(boom)
        await bus.cancel("noisy", "go")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        await _barrier(bus, bus)  # the bus still works
    assert any("noisy" in record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------------------- cancellation


async def test_cancel_cancelled_before_the_call_sends_nothing(names: Names) -> None:
    async with names.open() as bus:
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.cancel("never", "no")
        assert scope.cancelled_caught
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.wait_landed("never")
        assert scope.cancelled_caught
        assert await _count(names) == 0
        assert not bus.token("never").is_cancelled()


async def test_wait_landed_cancelled_while_waiting_leaves_nothing_behind(names: Names) -> None:
    async with names.open() as bus:
        await bus.cancel("slow", "x")
        with trio.move_on_after(0.1) as scope:
            await bus.wait_landed("slow")
        assert scope.cancelled_caught
        assert bus._waiters == {}
        # The request still stands, and a later wait sees its landing.
        token = bus.token("slow")
        assert token.is_cancelled() or await _count(names, "kind = 'cancel'") == 1
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        await bus.landed("slow", tc.Aborted("x"))
        with trio.fail_after(WAIT):
            assert (await bus.wait_landed("slow")).outcome == "aborted"


async def test_landed_of_a_run_then_again_is_safe(names: Names) -> None:
    async with names.open() as bus:
        token = bus.token("twice")
        await bus.cancel("twice", "x")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        await bus.landed("twice", tc.Aborted("x"))
        await bus.landed("twice", tc.Aborted("x"))  # no run any more: consumes nothing
        assert await _count(names, "kind = 'landed'") == 1


async def _backends(names: Names) -> int:
    rows = await _sql(
        names.dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        (f"trio_cancel bus {socket.gethostname()} pid {os.getpid()}"[:63],),
    )
    return int(rows[0][0])


async def test_opening_cancelled_at_random_points_leaves_no_connection_open(
    names: Names,
) -> None:
    async with names.open():
        pass  # the table exists: the runs below time connecting, reading and listening
    rng = random.Random(2025)
    for _ in range(12):
        with trio.move_on_after(rng.uniform(0.0, 0.05)):
            async with names.open() as bus:
                assert bus.connected
        # The abandoned listener thread closes what it opened once it returns.
        with trio.fail_after(WAIT):
            while await _backends(names) != 0:  # noqa: ASYNC110 - the server's side
                await trio.sleep(0.01)
    assert await _backends(names) == 0


async def test_cancelled_from_outside_while_open_the_bus_closes_everything(names: Names) -> None:
    # The bus is open and its body running when the cancellation comes from outside (the
    # cancellations that land while it opens are the test above's).
    in_body = trio.Event()
    bus: CancelBus | None = None

    async def cancel_when_in_body(scope: trio.CancelScope) -> None:
        await in_body.wait()
        scope.cancel()

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_when_in_body, scope)
            async with names.open() as bus:
                in_body.set()
                await trio.sleep_forever()
    assert scope.cancelled_caught
    assert bus is not None
    assert not bus.connected
    assert bus._listen is None
    with trio.fail_after(WAIT):
        while await _backends(names) != 0:  # noqa: ASYNC110 - the server's side
            await trio.sleep(0.01)


# ---------------------------------------------------------------------------- connection loss


async def test_listener_uses_tcp_keepalive(names: Names) -> None:
    async with names.open() as bus:
        sock = socket.socket(fileno=os.dup(bus._listen_fd))
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 5
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        finally:
            sock.close()


async def _wait_connected(bus: CancelBus, value: bool) -> None:
    with trio.fail_after(WAIT):
        while bus.connected != value:
            await bus._connection_changed.wait()


async def test_lost_listener_reconnects_and_delivers_requests_made_meanwhile(
    names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_cancel.postgres import CancelBus

    gate = trio.Event()
    original = CancelBus._start_listening

    async def gated(self: CancelBus) -> None:
        await gate.wait()
        await original(self)

    async with names.open() as worker, names.open() as controller:
        token = worker.token("during-outage")
        pid = worker._listen.info.backend_pid
        monkeypatch.setattr(CancelBus, "_start_listening", gated)
        await _sql(names.dsn, "SELECT pg_terminate_backend(%s)", (pid,))
        await _wait_connected(worker, False)
        await controller.cancel("during-outage", "sent while the listener was down")
        assert not token.is_cancelled()
        gate.set()  # reconnect: the request is read from the table
        await _wait_connected(worker, True)
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        assert token.reason == "sent while the listener was down"
        await worker.landed("during-outage", tc.Aborted(token.reason))
        with trio.fail_after(WAIT):
            assert (await controller.wait_landed("during-outage")).outcome == "aborted"


def _pg_ctl(*args: str) -> list[str]:
    pg_bin = os.environ.get("TRIO_CANCEL_PG_BIN")
    pgdata = os.environ.get("PGDATA")
    if not pg_bin or not pgdata:
        if REQUIRE_PG:
            pytest.fail("TRIO_CANCEL_REQUIRE_PG=1 but no TRIO_CANCEL_PG_BIN/PGDATA to restart")
        pytest.skip(
            "this test restarts the server, so it needs the throwaway one that `make test` and "
            "`.ci/with-postgres CMD` start (they set PGDATA and TRIO_CANCEL_PG_BIN)"
        )
    command = [os.path.join(pg_bin, "pg_ctl"), "-D", pgdata, *args]
    user = os.environ.get("TRIO_CANCEL_PG_USER", "")
    return ["runuser", "-u", user, "--", *command] if user else command


@pytest.fixture
def restart_command(pg_dsn: str) -> list[str]:
    """The command that restarts the server (a sync fixture, so a skip keeps its message)."""
    log = os.path.join(os.path.dirname(os.environ.get("PGDATA", ".")), "server.log")
    return _pg_ctl("restart", "-m", "fast", "-w", "-t", "60", "-l", log)


async def test_server_restart_requests_made_while_down_are_delivered(
    names: Names, restart_command: list[str]
) -> None:
    restart = restart_command
    async with names.open() as worker, names.open() as controller:
        token = worker.token("across-restart")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(trio.run_process, restart, stdout=subprocess.DEVNULL, check=True)
            )
            await _wait_connected(controller, False)
            # The server is going down or down: cancel() retries until it is recorded.
            with trio.fail_after(WAIT * 2):
                await controller.cancel("across-restart", "sent during the restart")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        assert token.reason == "sent during the restart"
        await worker.landed("across-restart", tc.Aborted(token.reason))
        with trio.fail_after(WAIT):
            assert (await controller.wait_landed("across-restart")).outcome == "aborted"
        await _wait_connected(worker, True)


# ---------------------------------------------------------------------------- real processes


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    while chunk := await stream.receive_some():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode()


@attrs.define
class Worker:
    proc: trio.Process
    ready: trio.Event = attrs.field(factory=trio.Event)
    sent: int = 0


@attrs.define
class Fleet:
    """A controller's view of the worker processes (examples/cancel_bus.py worker)."""

    workers: list[Worker] = attrs.field(factory=list)
    started: dict[tuple[str, int], trio.Event] = attrs.field(factory=dict)
    done: dict[tuple[str, int], str] = attrs.field(factory=dict)
    runs: dict[str, int] = attrs.field(factory=dict)
    finished: dict[tuple[str, int], trio.Event] = attrs.field(factory=dict)

    def event(self, table: dict[tuple[str, int], trio.Event], key: tuple[str, int]) -> trio.Event:
        return table.setdefault(key, trio.Event())

    async def follow(self, worker: Worker) -> None:
        assert worker.proc.stdout is not None
        async for line in _lines(worker.proc.stdout):
            word, _, rest = line.partition(" ")
            if word == "ready":
                worker.ready.set()
            elif word == "started":
                self.event(self.started, (rest, self.runs[rest])).set()
            elif word == "done":
                job, kind = rest.split()
                # The next run of a job id is sent only after this one finished.
                key = (job, self.runs[job])
                self.done[key] = kind
                self.event(self.finished, key).set()

    async def run(self, job: str, seconds: float, worker: int) -> int:
        run = self.runs[job] = self.runs.get(job, 0) + 1
        proc = self.workers[worker].proc
        assert proc.stdin is not None
        await proc.stdin.send_all(f"run {job} {seconds:.3f}\n".encode())
        return run


async def test_processes_controller_and_four_workers_1000_jobs_200_cancelled_with_a_restart(
    names: Names, restart_command: list[str]
) -> None:
    """A controller (this test) and 4 worker processes; 1,000 short jobs; 200 cancelled at
    random (seeded): 20 before they start, 180 while they run, a quarter of those while the
    server restarts. All 200 land (confirmed through the bus), the other 800 complete; then 20
    of the cancelled job ids run again and are not touched by their old requests."""
    restart = restart_command

    rng = random.Random(25)
    jobs = [f"job-{n}" for n in range(1000)]
    doomed = rng.sample(jobs, 200)
    early, during = doomed[:20], doomed[20:]
    first_wave, outage_wave, last_wave = during[:90], during[90:135], during[135:]
    doomed_set = set(doomed)
    landings: dict[str, Any] = {}
    fleet = Fleet()

    async with names.open() as controller, trio.open_nursery() as nursery:
        for name in early:
            await controller.cancel(name, "before it started")
        command = [sys.executable, str(EXAMPLE), "worker", "--dsn", names.dsn]
        command += ["--table", names.table, "--channel", names.channel]
        for _ in range(4):
            proc = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            worker = Worker(proc)
            fleet.workers.append(worker)
            nursery.start_soon(fleet.follow, worker)
        with trio.fail_after(WAIT * 2):
            for worker in fleet.workers:
                await worker.ready.wait()

        async def cancel_and_wait(name: str, *, send: bool = True) -> None:
            if send:
                await fleet.event(fleet.started, (name, 1)).wait()
                await controller.cancel(name, f"cancel {name}")
            landings[name] = await controller.wait_landed(name)

        with trio.fail_after(WAIT * 2):
            async with trio.open_nursery() as waves:
                for name in early:
                    waves.start_soon(functools.partial(cancel_and_wait, name, send=False))
                for name in first_wave:
                    waves.start_soon(cancel_and_wait, name)
                for n, name in enumerate(jobs):
                    seconds = 3600.0 if name in doomed_set else rng.uniform(0.005, 0.1)
                    await fleet.run(name, seconds, n % 4)
                for name in first_wave:
                    await fleet.event(fleet.started, (name, 1)).wait()
                for name in outage_wave:
                    await fleet.event(fleet.started, (name, 1)).wait()
            # The restart: the cancels of this wave are sent while the server is down.
            async with trio.open_nursery() as outage:
                outage.start_soon(
                    functools.partial(
                        trio.run_process, restart, stdout=subprocess.DEVNULL, check=True
                    )
                )
                await _wait_connected(controller, False)
                for name in outage_wave:
                    outage.start_soon(cancel_and_wait, name)
            await _wait_connected(controller, True)
            async with trio.open_nursery() as waves:
                for name in last_wave:
                    waves.start_soon(cancel_and_wait, name)
            # Every job has ended: the cancelled ones through the bus, the others on their own.
            for name in jobs:
                await fleet.event(fleet.finished, (name, 1)).wait()

            # Each worker's bus has read the landings' notifications once it has seen a later
            # request (notifications arrive in commit order): one probe job per worker.
            for index in range(4):
                await controller.cancel(f"probe-{index}", "barrier")
                await fleet.run(f"probe-{index}", 3600.0, index)
            for index in range(4):
                await fleet.event(fleet.finished, (f"probe-{index}", 1)).wait()
            # The same job ids again: their old requests were consumed by the landings.
            reused = doomed[:10] + during[-10:]
            for n, name in enumerate(reused):
                await fleet.run(name, 0.01, (n + 1) % 4)  # another worker than before, mostly
            for name in reused:
                await fleet.event(fleet.finished, (name, 2)).wait()

            for worker in fleet.workers:
                assert worker.proc.stdin is not None
                await worker.proc.stdin.aclose()
            for worker in fleet.workers:
                assert await worker.proc.wait() == 0

    assert sorted(landings) == sorted(doomed)
    assert {landing.outcome for landing in landings.values()} == {"aborted"}
    assert {name for name in jobs if fleet.done[(name, 1)] == "aborted"} == doomed_set
    assert all(fleet.done[(name, 1)] == "completed" for name in jobs if name not in doomed_set)
    assert all(fleet.done[(name, 2)] == "completed" for name in reused)
    assert await _count(names, "kind = 'cancel'") == 0  # every request was consumed


# ---------------------------------------------------------------------------- adversarial


async def test_random_race_between_cancels_and_endings_loses_no_request(names: Names) -> None:
    """Cancels and job endings race at random (seeded): every request ends either consumed by
    exactly one landing or still pending for the next run, and every job that its token
    stopped has a landing that says so."""
    rng = random.Random(7)
    jobs = [f"race-{n}" for n in range(40)]
    outcomes: dict[str, str] = {}
    async with names.open() as worker, names.open() as controller:

        async def job(name: str, seconds: float) -> None:
            token = worker.token(name)
            with token.cancel_scope() as scope:
                await trio.sleep(seconds)
            outcomes[name] = "aborted" if scope.cancelled_caught else "completed"
            outcome = tc.Aborted(token.reason) if scope.cancelled_caught else tc.Completed(None)
            await worker.landed(name, outcome)

        async def cancel_later(name: str, seconds: float) -> None:
            await trio.sleep(seconds)
            await controller.cancel(name, "race")

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                for n, name in enumerate(jobs):
                    # A quarter only end by their cancel; the others race it.
                    seconds = WAIT * 2 if n % 4 == 0 else rng.uniform(0, 0.03)
                    nursery.start_soon(job, name, seconds)
                    nursery.start_soon(cancel_later, name, rng.uniform(0, 0.03))
        for name in jobs:
            pending = await _count(names, f"kind = 'cancel' AND job_id = '{name}'")
            landed = await _sql(
                names.dsn,
                f"SELECT outcome FROM \"{names.table}\" WHERE kind = 'landed' AND job_id = %s",
                (name,),
            )
            assert pending + len(landed) == 1, (name, pending, landed)
            if outcomes[name] == "aborted":
                assert landed == [("aborted",)]
                with trio.fail_after(WAIT):
                    assert (await controller.wait_landed(name)).outcome == "aborted"
            elif landed:
                assert landed == [("completed",)]  # ended just after the request arrived
    assert all(outcomes[name] == "aborted" for name in jobs[::4])


async def test_landed_cancelled_before_the_call_consumes_nothing(names: Names) -> None:
    async with names.open() as bus:
        token = bus.token("kept")
        await bus.cancel("kept", "x")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.landed("kept", tc.Aborted("x"))
        assert scope.cancelled_caught
        assert await _count(names, "kind = 'cancel'") == 1
        assert await _count(names, "kind = 'landed'") == 0
        with pytest.raises(RuntimeError, match="already has a run"):
            bus.token("kept")  # the run goes on
        await bus.landed("kept", tc.Aborted("x"))
        assert await _count(names, "kind = 'cancel'") == 0


async def test_calls_survive_the_loss_of_their_connection(names: Names) -> None:
    async with names.open() as worker, names.open() as controller:
        token = worker.token("after-loss")
        conn = controller._link._conn
        assert conn is not None
        row = await conn.fetchone("SELECT pg_backend_pid()")
        assert row is not None
        await _sql(names.dsn, "SELECT pg_terminate_backend(%s)", (row[0],))
        await controller.cancel("after-loss", "on a new connection")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        assert controller._link._conn is not conn
        await worker.landed("after-loss", tc.Aborted("x"))


async def test_one_refused_landing_in_a_batch_fails_only_its_own_call(names: Names) -> None:
    import psycopg

    async with names.open() as bus:
        # A rule of the application's own refuses the landings of one job (as a policy or a
        # constraint of the server may): only that caller may fail.
        await _sql(
            names.dsn,
            f"""CREATE FUNCTION "{names.table}_refuse"() RETURNS trigger LANGUAGE plpgsql AS
            $fn$ BEGIN
                IF NEW.kind = 'landed' AND NEW.job_id = 'poison' THEN
                    RAISE EXCEPTION 'landings of poison are refused';
                END IF;
                RETURN NEW;
            END $fn$""",
        )
        await _sql(
            names.dsn,
            f'CREATE TRIGGER "{names.table}_refuse" BEFORE INSERT ON "{names.table}" '
            f'FOR EACH ROW EXECUTE FUNCTION "{names.table}_refuse"()',
        )
        jobs = ["poison"] + [f"good-{i}" for i in range(5)]
        tokens = {job: bus.token(job) for job in jobs}
        for job in jobs:
            await bus.cancel(job, "stop")
        with trio.fail_after(WAIT):
            for token in tokens.values():
                await token.wait_cancelled()
        errors: dict[str, BaseException | None] = {}

        async def land(job: str) -> None:
            try:
                await bus.landed(job, tc.Aborted("stop"))
            except psycopg.Error as exc:
                errors[job] = exc
            else:
                errors[job] = None

        async with trio.open_nursery() as nursery:  # all in one batch of the writer
            for job in jobs:
                nursery.start_soon(land, job)
        assert isinstance(errors.pop("poison"), psycopg.Error)
        assert errors == {f"good-{i}": None for i in range(5)}
        # Only the refused job's request is left; the others were consumed and landed.
        rows = await _sql(names.dsn, f'SELECT job_id, kind FROM "{names.table}" ORDER BY id')
        assert sorted(rows) == sorted(
            [("poison", "cancel")] + [(f"good-{i}", "landed") for i in range(5)]
        )
        await _sql(names.dsn, f'DROP FUNCTION "{names.table}_refuse"() CASCADE')


async def _wait_confirmed(bus: CancelBus, job: str) -> None:
    """Return once a read of ``job`` begun now has been applied (the bus's own confirmation
    read, or this one)."""
    await bus._read_requests([job])


async def test_start_run_ignores_a_request_consumed_elsewhere_whose_landing_is_on_its_way(
    names: Names,
) -> None:
    async with names.open() as first, names.open() as second, names.open() as controller:
        token = first.token("handed-on")
        await controller.cancel("handed-on", "for run 1")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        await _barrier(controller, second)
        assert second._pending.get("handed-on")  # the second worker's copy holds the request
        # The server holds notifications back from a session inside a transaction: the second
        # worker will not hear of the landing until it ends (a slow notification).
        second._listen.execute("BEGIN")
        try:
            await first.landed("handed-on", tc.Aborted("for run 1"))  # run 1 consumed it
            # Run 2 of the same job, handed to the second worker after the landing, started
            # with start_run(): the server, not the stale copy, decides.
            assert second._pending.get("handed-on")  # the copy is stale
            with trio.fail_after(WAIT):
                again = await second.start_run("handed-on")
            assert not again.is_cancelled()
            assert "handed-on" not in second._pending  # the read corrected the copy
            with trio.fail_after(WAIT):
                await _wait_confirmed(second, "handed-on")
            assert not again.is_cancelled()
        finally:
            second._listen.execute("COMMIT")
        await _barrier(controller, second)
        assert not again.is_cancelled()
        await second.landed("handed-on", tc.Completed(None))


async def test_a_read_older_than_the_run_does_not_cancel_it_with_a_consumed_request(
    names: Names,
) -> None:
    async with names.open() as first, names.open() as second, names.open() as controller:
        token = first.token("old-read")
        await controller.cancel("old-read", "for run 1")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        await _barrier(controller, second)
        second._listen.execute("BEGIN")
        try:
            # A read of the job's requests made before the landing, applied after run 2
            # began: what it found was consumed in between.
            rows = await second._fetch_link.run(
                lambda conn: conn.fetchall(second._sql.requests(some=True), (["old-read"],))
            )
            seq, landing_seq = second._read_seq, second._landing_seq
            await first.landed("old-read", tc.Aborted("for run 1"))
            with trio.fail_after(WAIT):
                again = await second.start_run("old-read")
            assert not again.is_cancelled()
            second._apply(["old-read"], rows, landing_seq, seq)
            assert not again.is_cancelled()
            with trio.fail_after(WAIT):
                await _wait_confirmed(second, "old-read")
            assert not again.is_cancelled()
        finally:
            second._listen.execute("COMMIT")
        await second.landed("old-read", tc.Completed(None))


async def test_a_read_in_flight_during_a_landing_here_does_not_put_the_request_back(
    names: Names,
) -> None:
    async with names.open() as worker, names.open() as controller:
        token = worker.token("own")
        await controller.cancel("own", "for run 1")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        # The landing's own notification is held back (the listener inside a transaction).
        worker._listen.execute("BEGIN")
        try:
            # A read of the job's requests that began before the landing and is applied after
            # it: what it found, the landing consumed.
            worker._read_seq += 1
            seq, landing_seq = worker._read_seq, worker._landing_seq
            rows = await worker._fetch_link.run(
                lambda conn: conn.fetchall(worker._sql.requests(some=True), (["own"],))
            )
            assert rows
            await worker.landed("own", tc.Aborted("for run 1"))
            worker._apply(["own"], rows, landing_seq, seq)
            assert "own" not in worker._pending
            again = worker.token("own")  # the next run, in the same process
            assert not again.is_cancelled()
        finally:
            worker._listen.execute("COMMIT")
        await _barrier(controller, worker)
        assert not again.is_cancelled()
        await worker.landed("own", tc.Completed(None))


async def test_start_run_ignores_a_request_expired_on_the_server(
    names: Names, mock_clock: trio.testing.MockClock
) -> None:
    # Trio's clock stands still (the mock clock), so the bus's copy keeps the request past
    # its expiry: only the server's clock may decide.
    async with names.open() as worker, names.open(ttl=0.2) as controller:
        await controller.cancel("brief", "short-lived")
        await _barrier(controller, worker)
        assert worker._pending.get("brief")
        # Wait, on the server, until the request has expired there.
        await _sql(
            names.dsn,
            "SELECT pg_sleep(greatest(0, extract(epoch FROM expires_at - clock_timestamp())) "
            f"+ 0.01) FROM \"{names.table}\" WHERE job_id = 'brief'",
        )
        born = await worker.start_run("brief")
        assert not born.is_cancelled()
        await _wait_confirmed(worker, "brief")
        assert not born.is_cancelled()
        await worker.landed("brief", tc.Completed(None))


@attrs.define
class _ReadGate:
    """Holds the next read of a bus (one ``_fetch_link.run`` call) before its statement runs,
    until released: the read's numbers are taken, its statement has not run yet."""

    armed: bool = False
    reached: trio.Event = attrs.field(factory=trio.Event)
    release: trio.Event = attrs.field(factory=trio.Event)

    def install(self, bus: CancelBus, monkeypatch: pytest.MonkeyPatch) -> None:
        run = bus._fetch_link.run

        async def gated(fn: Any) -> Any:  # noqa: ANN401
            if self.armed:
                self.armed = False
                self.reached.set()
                await self.release.wait()
            return await run(fn)

        monkeypatch.setattr(bus._fetch_link, "run", gated)


async def test_a_read_discarded_for_a_landing_here_is_made_again(
    names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read of the job began (its notifications taken from the wanted set) before this bus's
    # landed() resumed; it finds a request sent after the landing, but a landing came after it
    # began, so it is discarded: a new read of the job must follow, or the request never
    # reaches the next run.
    gate = _ReadGate()
    async with names.open() as worker, names.open() as controller:
        gate.install(worker, monkeypatch)
        token = worker.token("after")
        await controller.cancel("after", "for run 1")
        with trio.fail_after(WAIT):
            await token.wait_cancelled()
        # No notification reaches the worker for now (its listener inside a transaction): the
        # only read of the job is the one below.
        worker._listen.execute("BEGIN")
        try:
            gate.armed = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker._read_requests, ["after"])
                await gate.reached.wait()
                await worker.landed("after", tc.Aborted("for run 1"))
                await controller.cancel("after", "for the next run")
                gate.release.set()
            assert "after" not in worker._pending  # discarded: it began before the landing
            again = worker.token("after")
            with trio.fail_after(WAIT):
                await again.wait_cancelled()  # the read made again found the request
            assert again.reason == "for the next run"
        finally:
            worker._listen.execute("COMMIT")
        await worker.landed("after", tc.Aborted("for the next run"))


async def test_start_run_reads_again_when_a_landing_discards_its_read(
    names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A landing of the job announced while start_run()'s read is in flight (another process's
    # earlier run, its notification late) discards that read: start_run() must read again
    # rather than return a token the server's live request has not cancelled.
    gate = _ReadGate()
    async with names.open() as worker, names.open() as controller:
        gate.install(worker, monkeypatch)
        await controller.cancel("strict", "pending before the run")
        await _barrier(controller, worker)
        # The bus's own read of the job, which the landing's notification schedules, is kept
        # from starting: only start_run() may find the request before it returns.
        from trio_cancel.postgres import CancelBus

        want = CancelBus._want

        def want_other_jobs(bus: CancelBus, job_id: str) -> None:
            if not (bus is worker and job_id == "strict"):
                want(bus, job_id)

        monkeypatch.setattr(CancelBus, "_want", want_other_jobs)
        gate.armed = True
        async with trio.open_nursery() as nursery:
            result: list[tc.CancellationToken] = []

            async def start() -> None:
                result.append(await worker.start_run("strict"))

            nursery.start_soon(start)
            await gate.reached.wait()
            worker._on_notification("l:strict")  # a landing's notification arrives
            gate.release.set()
        (token,) = result
        assert token.is_cancelled()  # on return: the server holds a live request
        assert token.reason == "pending before the run"
        monkeypatch.setattr(CancelBus, "_want", want)
        await worker.landed("strict", tc.Aborted("pending before the run"))
