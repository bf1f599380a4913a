"""async_guard and commit_or_rollback: cleanup on every exit, shielded and bounded."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import warnings
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing

import trio_cancel as tc
from trio_cancel.testing import cancel_at_each_checkpoint

if TYPE_CHECKING:
    import threading
    from collections.abc import Awaitable
    from pathlib import Path

    import trio_cancel.sqlite as tc_sqlite

# ---------------------------------------------------------------- async_guard


@attrs.define
class Cleanup:
    """A cleanup that takes ``seconds`` (on Trio's clock) and records what happened to it."""

    seconds: float = 0.0
    error: BaseException | None = None
    log: list[str] = attrs.Factory(list)

    async def __call__(self, tag: str = "cleanup") -> None:
        self.log.append(f"{tag} started")
        await trio.sleep(self.seconds)
        if self.error is not None:
            raise self.error
        self.log.append(f"{tag} done")


async def test_guard_runs_cleanup_on_normal_exit_with_args() -> None:
    cleanup = Cleanup()
    async with tc.async_guard(cleanup, "release conn") as guard:
        armed_inside = guard.armed
    assert armed_inside
    assert cleanup.log == ["release conn started", "release conn done"]
    assert not guard.armed
    assert not guard.timed_out


async def test_guard_runs_cleanup_when_block_raises_and_error_propagates_unchanged() -> None:
    cleanup = Cleanup()
    error = ValueError("boom")
    with pytest.raises(ValueError, match="boom") as info:
        async with tc.async_guard(cleanup):
            raise error
    assert info.value is error
    assert cleanup.log == ["cleanup started", "cleanup done"]


async def test_guard_cleanup_awaits_while_block_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cleanup = Cleanup(seconds=1.0)
    with trio.move_on_after(5) as outer:
        async with tc.async_guard(cleanup, grace=2.0) as guard:
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert cleanup.log == ["cleanup started", "cleanup done"]  # shielded: its sleep finished
    assert not guard.timed_out
    assert trio.current_time() == pytest.approx(6.0)


async def test_guard_cancelled_before_the_block_still_cleans_up() -> None:
    cleanup = Cleanup()
    ran = []
    with trio.CancelScope() as outer:
        outer.cancel()
        async with tc.async_guard(cleanup):
            ran.append("body")
    assert outer.cancelled_caught
    assert ran == []
    assert cleanup.log == ["cleanup started", "cleanup done"]


async def test_guard_cleanup_is_shielded_from_a_cancel_that_arrives_during_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cleanup = Cleanup(seconds=3.0)
    with trio.move_on_after(1) as outer:
        async with tc.async_guard(cleanup, grace=10.0):
            pass  # clean exit; the outer deadline fires one second into the cleanup
    assert cleanup.log == ["cleanup started", "cleanup done"]
    assert outer.cancelled_caught  # delivered at the exit's checkpoint, after the cleanup
    assert trio.current_time() == pytest.approx(3.0)


async def test_guard_cleanup_overrunning_grace_is_cancelled_and_warned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cleanup = Cleanup(seconds=60.0)
    with (
        pytest.warns(tc.CleanupTimeoutWarning, match=r"overran its grace period of 2 s"),
        pytest.raises(KeyError),
    ):
        async with tc.async_guard(cleanup, grace=2.0) as guard:
            raise KeyError("the block's own error still propagates")
    assert guard.timed_out
    assert cleanup.log == ["cleanup started"]
    assert trio.current_time() == pytest.approx(2.0)


async def test_guard_overrun_after_a_clean_block_raises_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.warns(tc.CleanupTimeoutWarning):
        async with tc.async_guard(Cleanup(seconds=60.0), grace=0) as guard:
            pass
    assert guard.timed_out
    assert issubclass(tc.CleanupTimeoutWarning, RuntimeWarning)


async def test_guard_cleanup_error_alone_propagates() -> None:
    error = OSError("pool gone")
    with pytest.raises(OSError, match="pool gone") as info:
        async with tc.async_guard(Cleanup(error=error)):
            pass
    assert info.value is error


async def test_guard_block_and_cleanup_errors_propagate_together() -> None:
    cleanup_error = OSError("pool gone")
    with pytest.raises(BaseExceptionGroup) as info:
        async with tc.async_guard(Cleanup(error=cleanup_error)):
            raise ValueError("block")
    kinds = [type(e) for e in info.value.exceptions]
    assert kinds == [ValueError, OSError]
    assert info.value.exceptions[1] is cleanup_error


async def test_guard_cancelled_block_and_failing_cleanup_keep_both() -> None:
    cleanup_error = OSError("pool gone")
    with pytest.raises(BaseExceptionGroup) as info, trio.CancelScope() as outer:
        async with tc.async_guard(Cleanup(error=cleanup_error)):
            outer.cancel()
            await trio.lowlevel.checkpoint()
    # The group held the block's Cancelled and the cleanup's OSError; the scope took its
    # Cancelled out and the OSError travelled on.
    assert outer.cancelled_caught
    assert info.value.exceptions == (cleanup_error,)


async def test_guard_disarmed_skips_cleanup_and_exit_is_a_checkpoint() -> None:
    cleanup = Cleanup()
    with trio.CancelScope() as outer:
        async with tc.async_guard(cleanup) as guard:
            guard.disarm()
            outer.cancel()
        pytest.fail("the exit did not checkpoint")  # pragma: no cover
    assert outer.cancelled_caught
    assert cleanup.log == []
    assert "not armed" in repr(guard)


async def test_guard_bad_input_is_refused_at_the_call() -> None:
    with pytest.raises(TypeError, match="async function"):
        tc.async_guard(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="number of seconds"):
        tc.async_guard(Cleanup(), grace="5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="number of seconds"):
        tc.async_guard(Cleanup(), grace=True)
    for bad in (-1, math.nan):
        with pytest.raises(ValueError, match=">= 0"):
            tc.async_guard(Cleanup(), grace=bad)
    guard = tc.async_guard(Cleanup(), grace=math.inf)
    async with guard:
        pass
    with pytest.raises(RuntimeError, match="already entered"):
        async with guard:
            pass  # pragma: no cover


async def test_guard_releases_at_every_cancellation_point() -> None:
    held: set[str] = set()

    async def release(name: str) -> None:
        await trio.lowlevel.checkpoint()
        held.discard(name)

    async def operation() -> None:
        held.add("conn")
        async with tc.async_guard(release, "conn"):
            await trio.lowlevel.checkpoint()
            await trio.lowlevel.checkpoint()

    async def check() -> None:
        assert held == set()

    result = await cancel_at_each_checkpoint(operation, check=check)
    assert result.points >= 3


# ---------------------------------------------------------------- commit_or_rollback


@attrs.define
class FakeTx:
    commit_seconds: float = 0.0
    rollback_seconds: float = 0.0
    commit_error: BaseException | None = None
    rollback_error: BaseException | None = None
    calls: list[str] = attrs.Factory(list)

    async def commit(self) -> None:
        self.calls.append("commit")
        await trio.sleep(self.commit_seconds)
        if self.commit_error is not None:
            raise self.commit_error
        self.calls.append("committed")

    async def rollback(self) -> None:
        self.calls.append("rollback")
        await trio.sleep(self.rollback_seconds)
        if self.rollback_error is not None:
            raise self.rollback_error
        self.calls.append("rolled back")


async def test_tx_clean_exit_commits() -> None:
    tx = FakeTx()
    async with tc.commit_or_rollback(tx) as guard:
        assert guard.transaction is tx
        assert guard.outcome is None
    assert tx.calls == ["commit", "committed"]
    assert guard.outcome == "committed"


async def test_tx_exception_rolls_back_and_propagates() -> None:
    tx = FakeTx()
    with pytest.raises(ValueError, match="bad row"):
        async with tc.commit_or_rollback(tx) as guard:
            raise ValueError("bad row")
    assert tx.calls == ["rollback", "rolled back"]
    assert guard.outcome == "rolled back"


async def test_tx_delivered_cancellation_rolls_back() -> None:
    tx = FakeTx(rollback_seconds=0.01)
    with trio.CancelScope() as outer:
        async with tc.commit_or_rollback(tx):
            outer.cancel()
            await trio.lowlevel.checkpoint()
    assert outer.cancelled_caught
    assert tx.calls == ["rollback", "rolled back"]  # the rollback's own sleep was shielded


async def test_tx_pending_undelivered_cancellation_rolls_back_then_raises() -> None:
    tx = FakeTx()
    after = []
    with trio.CancelScope() as outer:
        async with tc.commit_or_rollback(tx):
            outer.cancel()  # no checkpoint: the block ends normally, cancelled
        after.append("not reached")  # pragma: no cover
    assert outer.cancelled_caught
    assert after == []
    assert tx.calls == ["rollback", "rolled back"]


async def test_tx_expired_deadline_not_yet_processed_counts_as_cancelled() -> None:
    tx = FakeTx()
    with trio.CancelScope() as outer:
        async with tc.commit_or_rollback(tx):
            outer.deadline = trio.current_time()
    assert outer.cancelled_caught
    assert tx.calls == ["rollback", "rolled back"]


async def test_tx_shielded_block_inside_a_cancelled_scope_commits() -> None:
    tx = FakeTx()
    with trio.CancelScope() as outer:
        outer.cancel()
        with trio.CancelScope(shield=True):
            async with tc.commit_or_rollback(tx):
                pass
    assert tx.calls == ["commit", "committed"]


async def test_tx_cancelled_before_the_block_rolls_back() -> None:
    tx = FakeTx()
    with trio.CancelScope() as outer:
        outer.cancel()
        async with tc.commit_or_rollback(tx):
            tx.calls.append("body")  # pragma: no cover
    assert tx.calls == ["rollback", "rolled back"]


async def test_tx_commit_is_never_torn_by_a_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tx = FakeTx(commit_seconds=2.0)
    with trio.move_on_after(1) as outer:
        async with tc.commit_or_rollback(tx, grace=10) as guard:
            pass
    assert tx.calls == ["commit", "committed"]
    assert guard.outcome == "committed"
    assert outer.cancelled_caught  # delivered after the commit, at the exit's checkpoint
    assert trio.current_time() == pytest.approx(2.0)


async def test_tx_commit_error_rolls_back_and_propagates() -> None:
    error = sqlite3.OperationalError("database is locked")
    tx = FakeTx(commit_error=error)
    with pytest.raises(sqlite3.OperationalError) as info:
        async with tc.commit_or_rollback(tx) as guard:
            pass
    assert info.value is error
    assert tx.calls == ["commit", "rollback", "rolled back"]
    assert guard.outcome == "rolled back"


async def test_tx_commit_overrun_is_unknown_and_not_rolled_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tx = FakeTx(commit_seconds=60.0)
    with pytest.raises(tc.CommitOutcomeUnknownError, match="may have committed") as info:
        async with tc.commit_or_rollback(tx, grace=3) as guard:
            pass
    assert "grace period of 3 s" in str(info.value)
    assert isinstance(info.value, Exception)
    assert tx.calls == ["commit"]  # no rollback after a commit that may have happened
    assert guard.outcome == "unknown"
    assert trio.current_time() == pytest.approx(3.0)


async def test_tx_commit_overrun_under_an_outer_cancellation_is_still_unknown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tx = FakeTx(commit_seconds=60.0)
    with trio.move_on_after(1) as outer, pytest.raises(tc.CommitOutcomeUnknownError):
        async with tc.commit_or_rollback(tx, grace=3) as guard:
            pass
    assert not outer.cancelled_caught
    assert tx.calls == ["commit"]
    assert guard.outcome == "unknown"


async def test_tx_commit_and_rollback_errors_propagate_together_commit_first() -> None:
    commit_error = ValueError("commit failed")
    rollback_error = OSError("rollback failed")
    tx = FakeTx(commit_error=commit_error, rollback_error=rollback_error)
    with pytest.raises(ExceptionGroup) as info:
        async with tc.commit_or_rollback(tx) as guard:
            pass
    assert list(info.value.exceptions) == [commit_error, rollback_error]
    assert tx.calls[:2] == ["commit", "rollback"]
    assert guard.outcome == "rolled back"


async def test_tx_rollback_overrun_warns(autojump_clock: trio.testing.MockClock) -> None:
    tx = FakeTx(rollback_seconds=60.0)
    with pytest.warns(tc.CleanupTimeoutWarning, match="rollback of"), pytest.raises(KeyError):
        async with tc.commit_or_rollback(tx, grace=1) as guard:
            raise KeyError("x")
    assert guard.outcome == "rollback timed out"
    assert trio.current_time() == pytest.approx(1.0)


async def test_tx_block_and_rollback_errors_propagate_together() -> None:
    tx = FakeTx(rollback_error=OSError("connection lost"))
    with pytest.raises(BaseExceptionGroup) as info:
        async with tc.commit_or_rollback(tx):
            raise ValueError("block")
    assert [type(e) for e in info.value.exceptions] == [ValueError, OSError]


async def test_tx_bad_input_is_refused_at_the_call() -> None:
    with pytest.raises(TypeError, match="has no commit"):
        tc.commit_or_rollback(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        tc.commit_or_rollback(FakeTx(), grace=-0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guard = tc.commit_or_rollback(FakeTx())
    assert "open" in repr(guard)


# ---------------------------------------------------------------- a real SQLite file


class SqliteTx:
    """A transaction on a real SQLite file; every statement runs in a worker thread."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")

    async def execute(self, sql: str, *params: Any) -> None:  # noqa: ANN401 - SQL parameters
        await trio.to_thread.run_sync(self._conn.execute, sql, params)

    async def commit(self) -> None:
        await trio.to_thread.run_sync(self._conn.commit)

    async def rollback(self) -> None:
        await trio.to_thread.run_sync(self._conn.rollback)

    def close(self) -> None:
        self._conn.close()


def _balances(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return dict(conn.execute("SELECT name, balance FROM accounts").fetchall())


async def test_sqlite_transfer_is_all_or_nothing_at_every_cancellation_point(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bank.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE accounts (name TEXT PRIMARY KEY, balance INTEGER)")
        conn.executemany("INSERT INTO accounts VALUES (?, ?)", [("alice", 100), ("bob", 0)])
    moved: list[int] = []
    last = {"alice": 100, "bob": 0}

    async def transfer() -> None:
        tx = SqliteTx(path)
        try:
            async with tc.commit_or_rollback(tx):
                await tx.execute("UPDATE accounts SET balance = balance - 10 WHERE name = 'alice'")
                await tx.execute("UPDATE accounts SET balance = balance + 10 WHERE name = 'bob'")
        finally:
            tx.close()

    async def check() -> None:
        balances = _balances(path)
        delta = last["alice"] - balances["alice"]
        assert delta in (0, 10), f"a partial transfer was committed: {balances}"
        assert balances["bob"] - last["bob"] == delta
        moved.append(delta)
        last.update(balances)

    result = await cancel_at_each_checkpoint(transfer, check=check)
    assert result.points >= 4
    assert moved[0] == 10  # the counting run, uncancelled, committed
    # Cancelled inside the block: rolled back. Cancelled at the exit's checkpoint after the
    # commit: the commit stands and the Cancelled is raised after it. Never half of it.
    assert moved.count(0) >= 3
    assert set(moved) == {0, 10}


def test_async_guard_rejects_sync_cleanup_and_huge_grace() -> None:
    def cleanup() -> None:
        pass

    async def async_cleanup() -> None:
        pass

    with pytest.raises(TypeError, match="synchronous"):
        tc.async_guard(cleanup)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too large"):
        tc.async_guard(async_cleanup, grace=10**400)


# ---------------------------------------------------------------- around a database block


def _held_commit(
    conn: tc_sqlite.Connection, in_commit: threading.Event, gate: threading.Event
) -> Awaitable[object]:
    """Make the next COMMIT on the SQLite ``conn`` wait for ``gate`` (a progress handler)."""

    def hold() -> int:
        in_commit.set()
        gate.wait(60)
        return 0

    return conn._call(lambda raw: raw.set_progress_handler(hold, 1), "test setup")


@pytest.mark.parametrize("which_grace", ["the connection's", "the guard's"])
async def test_commit_or_rollback_over_a_block_whose_commit_is_unknown(
    tmp_path: Path, which_grace: str
) -> None:
    """The block's commit overran a bound (its own grace, or the guard's smaller one): the
    guard reports "unknown", rolls nothing back, raises CommitOutcomeUnknownError alone, and
    returns within the smaller bound."""
    import threading

    import trio_cancel.sqlite as tc_sqlite

    gate, in_commit = threading.Event(), threading.Event()
    conn_grace, guard_grace = (0.05, 60.0) if which_grace == "the connection's" else (20.0, 0.05)
    try:
        async with await tc_sqlite.connect(
            tmp_path / "g.db", grace=conn_grace, busy_timeout=0
        ) as conn:
            await conn.execute("CREATE TABLE t (v INTEGER)")
            tx = conn.transaction(commit="explicit")
            guard = tc.commit_or_rollback(tx, grace=guard_grace)
            # The smaller bound is a fraction of a second; 10 s is a wide margin below the
            # larger one (the checkpoint after the block raises TooSlowError if it won).
            with trio.fail_after(10):
                with pytest.raises(tc.CommitOutcomeUnknownError, match="may have committed"):
                    async with tx, guard:
                        await conn.execute("INSERT INTO t VALUES (1)")
                        await _held_commit(conn, in_commit, gate)
                await trio.lowlevel.checkpoint()
            assert guard.outcome == "unknown"
            assert tx.outcome == "unknown"
            assert not gate.is_set()
            gate.set()
            assert await conn.fetchall("SELECT v FROM t") == [(1,)]  # it did commit
    finally:
        gate.set()


async def test_commit_or_rollback_over_a_block_whose_commit_failed(tmp_path: Path) -> None:
    """The block's commit failed (its transaction already ended): the guard's rollback does not
    add a RuntimeError; the driver's error propagates alone, "rolled back"."""
    import trio_cancel.sqlite as tc_sqlite

    async with await tc_sqlite.connect(tmp_path / "fk.db") as conn:
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        await conn.execute(
            "CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
        tx = conn.transaction(commit="explicit")
        guard = tc.commit_or_rollback(tx)
        with pytest.raises(sqlite3.IntegrityError):
            async with tx, guard:
                await conn.execute("INSERT INTO child VALUES (42)")  # fails at COMMIT
        assert guard.outcome == "rolled back"
        assert tx.outcome == "rolled back"
        assert await conn.fetchall("SELECT * FROM child") == []


def test_a_huge_grace_is_refused_with_a_short_message() -> None:
    async def cleanup() -> None:
        pass

    with pytest.raises(ValueError, match="too large") as info:
        tc.async_guard(cleanup, grace=10**400)
    assert len(str(info.value)) < 120
    assert "0" * 50 not in str(info.value)


async def test_a_task_spawned_inside_a_guard_does_not_inherit_its_bound(tmp_path: Path) -> None:
    """The guard's bound applies to the guard's own task: a task it spawns (which inherits its
    context) commits later with its connection's bound, not the guard's expired one."""
    import trio_cancel.sqlite as tc_sqlite

    outcomes: list[object] = []
    async with await tc_sqlite.connect(tmp_path / "spawned.db") as conn:
        await conn.execute("CREATE TABLE t (v INTEGER)")
        async with trio.open_nursery() as nursery:
            go = trio.Event()

            async def later() -> None:
                await go.wait()
                tx = conn.transaction()
                async with tx:
                    await conn.execute("INSERT INTO t VALUES (1)")
                outcomes.append(tx.outcome)

            async def cleanup() -> None:
                nursery.start_soon(later)

            async with tc.async_guard(cleanup, grace=0):
                pass
            go.set()
        assert outcomes == ["committed"]
        assert await conn.fetchall("SELECT v FROM t") == [(1,)]
