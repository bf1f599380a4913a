"""Tests of run_sync_interruptible: blocking calls that a cancellation interrupts."""

from __future__ import annotations

import contextvars
import gc
import inspect
import math
import os
import random
import signal
import sqlite3
import threading
import time
import tracemalloc
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Blocker:
    """A blocking call that runs until interrupted (or released), recording what happened."""

    def __init__(self, *, obey: bool = True) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.started = trio.Event()
        self.release = threading.Event()
        self.obey = obey
        self.interrupts: list[int] = []  # thread idents of the interrupt() calls
        self.interrupted = trio.Event()
        self.finally_ran = False
        self.calls = 0

    def __call__(self, value: str = "done") -> str:
        self.calls += 1
        try:
            self.token.run_sync_soon(self.started.set)
            self.release.wait(10)
            if self.interrupts and self.obey:
                raise InterruptedError("interrupted")
            return value
        finally:
            self.finally_ran = True

    def interrupt(self) -> None:
        self.interrupts.append(threading.get_ident())
        self.interrupted.set()
        if self.obey:
            self.release.set()


def _is_interrupted(exc: BaseException) -> bool:
    return isinstance(exc, InterruptedError)


async def test_returns_the_value_and_is_a_checkpoint() -> None:
    blocker = Blocker()
    blocker.release.set()
    with trio.testing.assert_checkpoints():
        assert await tc.run_sync_interruptible(blocker, "x", interrupt=blocker.interrupt) == "x"
    assert blocker.interrupts == []


async def test_cancel_interrupts_once_from_the_trio_thread_and_waits_for_the_thread() -> None:
    blocker = Blocker()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            await tc.run_sync_interruptible(
                blocker, interrupt=blocker.interrupt, is_interruption=_is_interrupted
            )
    assert cs.cancelled_caught
    assert blocker.interrupts == [threading.get_ident()]  # once, from this (the Trio) thread
    assert blocker.finally_ran  # the thread was waited for, not abandoned


async def _cancel_when_started(blocker: Blocker, cs: trio.CancelScope) -> None:
    await blocker.started.wait()
    cs.cancel("stop")


async def test_the_interrupts_error_becomes_the_cancelled() -> None:
    blocker = Blocker()
    seen: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            try:
                await tc.run_sync_interruptible(blocker, interrupt=blocker.interrupt)
            except trio.Cancelled as exc:
                seen.append(exc)
                raise
    assert cs.cancelled_caught
    assert isinstance(seen[0].__context__, InterruptedError)


async def test_another_error_of_fn_propagates_unchanged() -> None:
    def broken() -> None:
        raise KeyError("sql error")

    with pytest.raises(KeyError, match="sql error"):
        await tc.run_sync_interruptible(broken, interrupt=lambda: None)

    # Interrupted, but fn's error is not the interrupt's: it propagates as itself.
    blocker = Blocker()

    def fails_its_own_way() -> None:
        blocker()
        raise LookupError("constraint")

    blocker.obey = False
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            nursery.start_soon(_release_after_interrupt, blocker)
            with pytest.raises(LookupError, match="constraint"):
                await tc.run_sync_interruptible(
                    fails_its_own_way, interrupt=blocker.interrupt, is_interruption=_is_interrupted
                )
    assert blocker.interrupts


async def _release_after_interrupt(blocker: Blocker) -> None:
    await blocker.interrupted.wait()
    blocker.release.set()


async def test_a_call_that_completes_despite_the_interrupt_wins() -> None:
    blocker = Blocker(obey=False)  # returns normally even after interrupt()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            nursery.start_soon(_release_after_interrupt, blocker)
            result = await tc.run_sync_interruptible(blocker, "kept", interrupt=blocker.interrupt)
            assert result == "kept"  # returned although the scope is cancelled...
            await trio.lowlevel.checkpoint()  # ...which the next checkpoint delivers
            pytest.fail("the cancellation was lost")  # pragma: no cover
    assert cs.cancelled_caught


async def test_cancelled_before_start_never_runs_fn() -> None:
    blocker = Blocker()
    with trio.CancelScope() as cs:
        cs.cancel()
        await tc.run_sync_interruptible(blocker, interrupt=blocker.interrupt)
    assert cs.cancelled_caught
    assert blocker.calls == 0
    assert blocker.interrupts == []


async def test_started_counts_each_call_whose_fn_ran_once() -> None:
    """``started`` counts a call as its thread starts ``fn`` (also while ``fn`` still runs),
    once, and never a call cancelled before it started."""
    before = tc.thread_call_statistics().started
    for i in range(3):
        assert await tc.run_sync_interruptible(int, i, interrupt=lambda: None) == i
    assert tc.thread_call_statistics().started == before + 3
    with trio.CancelScope() as cs:
        cs.cancel()
        await tc.run_sync_interruptible(int, interrupt=lambda: None)
    assert tc.thread_call_statistics().started == before + 3
    blocker = Blocker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: tc.run_sync_interruptible(blocker, interrupt=blocker.interrupt))
        await blocker.started.wait()
        assert tc.thread_call_statistics().started == before + 4
        blocker.release.set()
    assert tc.thread_call_statistics().started == before + 4


async def test_cancelled_while_waiting_for_the_limiter_never_runs_fn() -> None:
    limiter = trio.CapacityLimiter(1)
    first, second = Blocker(), Blocker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: tc.run_sync_interruptible(first, interrupt=first.interrupt, limiter=limiter)
        )
        await first.started.wait()
        with trio.move_on_after(0.01) as cs:
            await tc.run_sync_interruptible(second, interrupt=second.interrupt, limiter=limiter)
        assert cs.cancelled_caught
        first.release.set()
    assert second.calls == 0
    assert limiter.borrowed_tokens == 0


async def test_grace_runs_out_the_thread_is_abandoned_counted_and_warned() -> None:
    blocker = Blocker(obey=False)
    limiter = trio.CapacityLimiter(1)
    before = tc.thread_call_statistics()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            with pytest.warns(tc.CleanupTimeoutWarning, match="Blocker.*abandoned"):
                await tc.run_sync_interruptible(
                    blocker, interrupt=blocker.interrupt, grace=0.01, limiter=limiter
                )
    assert cs.cancelled_caught
    during = tc.thread_call_statistics()
    assert during.abandoned == before.abandoned + 1
    assert during.abandoned_running == before.abandoned_running + 1
    assert limiter.borrowed_tokens == 1  # the abandoned thread still holds its token
    blocker.release.set()
    # The thread counts itself down as it ends, then Trio gives its token back: poll both.
    while (  # noqa: ASYNC110
        tc.thread_call_statistics().abandoned_running != before.abandoned_running
        or limiter.borrowed_tokens != 0
    ):
        await trio.sleep(0.001)


async def test_an_error_of_interrupt_is_chained_and_the_thread_still_waited_for() -> None:
    blocker = Blocker()

    def bad_interrupt() -> None:
        blocker.interrupt()
        raise OSError("interrupt failed")

    seen: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            try:
                await tc.run_sync_interruptible(blocker, interrupt=bad_interrupt)
            except trio.Cancelled as exc:
                seen.append(exc)
                raise
    assert cs.cancelled_caught
    assert isinstance(seen[0].__cause__, OSError)
    assert blocker.finally_ran


async def test_limiter_released_on_every_path() -> None:
    limiter = trio.CapacityLimiter(1)

    def broken() -> None:
        raise ValueError

    assert await tc.run_sync_interruptible(lambda: 1, interrupt=lambda: None, limiter=limiter)
    with pytest.raises(ValueError):  # noqa: PT011
        await tc.run_sync_interruptible(broken, interrupt=lambda: None, limiter=limiter)
    blocker = Blocker()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            await tc.run_sync_interruptible(blocker, interrupt=blocker.interrupt, limiter=limiter)
    assert limiter.borrowed_tokens == 0


async def test_under_graceful_shutdown_an_abandoned_call_is_in_the_report() -> None:
    blocker = Blocker(obey=False)

    async def worker() -> None:
        await tc.run_sync_interruptible(blocker, interrupt=blocker.interrupt, grace=0.01)

    with pytest.warns(tc.CleanupTimeoutWarning):  # noqa: PT031 - the warning comes from inside
        async with tc.GracefulShutdown(grace=0.05) as gs:
            gs.spawn(worker, name="db worker")
            await blocker.started.wait()
            report = await gs.wait()
    blocker.release.set()
    (landing,) = report.tasks
    assert landing.forced
    assert landing.abandoned == ("Blocker",)
    assert "abandoned thread: Blocker" in str(report)
    assert report.to_dict()["tasks"][0]["abandoned"] == ["Blocker"]


async def test_bad_input_is_rejected_before_anything_runs() -> None:
    async def coroutine_fn() -> None:
        pass  # pragma: no cover

    with pytest.raises(TypeError, match="await it directly"):
        await tc.run_sync_interruptible(coroutine_fn, interrupt=lambda: None)  # type: ignore[unused-coroutine]
    with pytest.raises(TypeError, match="callable"):
        await tc.run_sync_interruptible(lambda: None, interrupt=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="synchronous"):
        await tc.run_sync_interruptible(lambda: None, interrupt=coroutine_fn)
    for grace in (-1, math.nan):
        with pytest.raises(ValueError, match="grace"):
            await tc.run_sync_interruptible(lambda: None, interrupt=lambda: None, grace=grace)
    with pytest.raises(TypeError, match="CapacityLimiter"):
        await tc.run_sync_interruptible(lambda: None, interrupt=lambda: None, limiter=3)  # type: ignore[arg-type]


def test_outside_trio_run_is_a_runtime_error() -> None:
    coro = tc.run_sync_interruptible(lambda: None, interrupt=lambda: None)
    with pytest.raises(RuntimeError, match=r"inside trio\.run"):
        coro.send(None)
    coro.close()


# ---------------------------------------------------------------- a real SQLite database


@pytest.fixture
def sqlite_conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(tmp_path / "db.sqlite", check_same_thread=False)
    try:
        yield conn
    finally:
        conn.close()


SLOW_QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
    "SELECT count(*) FROM c"
)


def _sqlite_interrupted(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "interrupted" in str(exc)


async def test_a_ten_second_sqlite_query_is_cut_at_the_deadline(
    sqlite_conn: sqlite3.Connection,
) -> None:
    done: list[bool] = []
    interrupts: list[int] = []

    def query() -> int:
        try:
            return int(sqlite_conn.execute(SLOW_QUERY, (10**10,)).fetchone()[0])
        finally:
            done.append(True)

    def interrupt() -> None:
        interrupts.append(threading.get_ident())
        sqlite_conn.interrupt()

    start = time.perf_counter()
    with trio.move_on_after(0.2) as cs:
        await tc.run_sync_interruptible(
            query, interrupt=interrupt, is_interruption=_sqlite_interrupted
        )
    elapsed = time.perf_counter() - start
    assert cs.cancelled_caught
    assert done == [True]  # fn's finally ran before the call returned
    assert interrupts == [threading.get_ident()]
    assert elapsed < 2.0  # measured: about 0.20 s (examples/interrupt_blocking.py reports it)
    # The connection is usable again: the interrupt did not stick.
    assert sqlite_conn.execute("SELECT 1").fetchone() == (1,)


async def test_race_between_return_and_cancel_loses_no_value_and_leaves_no_stray_interrupt(
    sqlite_conn: sqlite3.Connection,
) -> None:
    rng = random.Random(20261130)
    produced: list[int] = []
    received = cancelled = 0
    for i in range(1000):

        def query(i: int = i) -> int:
            value = int(sqlite_conn.execute(SLOW_QUERY, (2000,)).fetchone()[0]) + i
            produced.append(value)
            return value

        with trio.move_on_after(rng.uniform(0, 0.002)):
            try:
                value = await tc.run_sync_interruptible(
                    query, interrupt=sqlite_conn.interrupt, is_interruption=_sqlite_interrupted
                )
            except trio.Cancelled:
                cancelled += 1
                raise
            assert value == 2000 + i
            received += 1
        # An interrupt never outlives its call: the next statement is not hit by it.
        assert sqlite_conn.execute("SELECT 1").fetchone() == (1,)
    assert received == len(produced)  # every value fn produced reached its caller
    assert received + cancelled == 1000
    assert received > 0
    assert cancelled > 0


async def test_a_thousand_interrupted_calls_keep_threads_and_memory_flat() -> None:
    def one_round() -> Blocker:
        return Blocker()

    async def interrupted_call() -> None:
        blocker = one_round()
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as cs:
                nursery.start_soon(_cancel_when_started, blocker, cs)
                await tc.run_sync_interruptible(
                    blocker, interrupt=blocker.interrupt, is_interruption=_is_interrupted
                )
        assert cs.cancelled_caught

    for _ in range(100):
        await interrupted_call()
    gc.collect()
    threads = threading.active_count()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            await interrupted_call()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert threading.active_count() <= threads + 2
    assert grown < 100_000, grown  # flat: no per-call leak (measured: a few kB of caches)


class LateStatement:
    """A driver call that begins its statement only after a delay: an interrupt that comes
    before that is lost (as SQLite's and PostgreSQL's are)."""

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.started = trio.Event()
        self.go = threading.Event()
        self.began = False
        self.stop = threading.Event()
        self.interrupts = 0
        self.lost = 0

    def __call__(self) -> str:
        self.token.run_sync_soon(self.started.set)
        self.go.wait(10)
        self.began = True
        if self.stop.wait(10):
            raise InterruptedError("interrupted")
        return "ran to the end"  # pragma: no cover

    def interrupt(self) -> None:
        self.interrupts += 1
        if self.began:
            self.stop.set()
        else:
            self.lost += 1
            self.go.set()  # the statement begins right after this lost interrupt


async def test_an_interrupt_that_came_before_the_statement_began_is_repeated() -> None:
    call = LateStatement()
    before = tc.thread_call_statistics().abandoned
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_scope_when, call.started, cs)
            await tc.run_sync_interruptible(
                call, interrupt=call.interrupt, is_interruption=_is_interrupted, grace=5.0
            )
    assert cs.cancelled_caught
    assert call.lost == 1
    assert call.interrupts == 2  # the repeat, 0.1 s later, stopped it
    assert trio.current_time() - start < 1.0
    assert tc.thread_call_statistics().abandoned == before


async def _cancel_scope_when(event: trio.Event, cs: trio.CancelScope) -> None:
    await event.wait()
    cs.cancel()


# ---------------------------------------------------------------- interrupt() raising


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("fn_returns", [True, False], ids=["fn returns", "fn raises"])
async def test_a_base_exception_from_interrupt_propagates(
    exc_type: type[BaseException], *, fn_returns: bool
) -> None:
    blocker = Blocker(obey=not fn_returns)  # obeying, it raises InterruptedError

    def bad_interrupt() -> None:
        blocker.interrupt()
        blocker.release.set()
        raise exc_type("from interrupt")

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            with pytest.raises(exc_type, match="from interrupt") as info:
                await tc.run_sync_interruptible(blocker, interrupt=bad_interrupt, grace=5.0)
    assert isinstance(info.value.__context__, trio.Cancelled)  # what it interrupted
    assert blocker.finally_ran  # the call was waited for, not abandoned
    assert len(blocker.interrupts) == 1  # never called again after it raised


async def test_an_error_of_interrupt_with_a_call_that_won_is_a_warning() -> None:
    blocker = Blocker(obey=False)

    def bad_interrupt() -> None:
        blocker.interrupt()
        blocker.release.set()
        raise OSError("interrupt failed")

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            with pytest.warns(RuntimeWarning, match="interrupt failed"):
                assert await tc.run_sync_interruptible(blocker, interrupt=bad_interrupt) == "done"
            await trio.lowlevel.checkpoint()
    assert cs.cancelled_caught


# ---------------------------------------------------------------- Ctrl+C


@pytest.fixture
def real_ctrl_c() -> None:
    """Tests that send this process a real SIGINT need Trio's own handler, which ``trio.run``
    installs only over Python's default one (and only in the main thread)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT has a handler other than Python's default one here")
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("not in the main thread")


class SignalsCtrlC(Blocker):
    """A call that sends the process a real SIGINT once it runs, then blocks until
    interrupted (or, with ``obey=False``, until released)."""

    def __call__(self, value: str = "done") -> str:
        os.kill(os.getpid(), signal.SIGINT)
        return super().__call__(value)


@pytest.mark.usefixtures("real_ctrl_c")
def test_ctrl_c_interrupts_the_call_before_it_propagates() -> None:
    seen: dict[str, object] = {}

    async def main() -> None:
        blocker = SignalsCtrlC()
        seen["blocker"] = blocker
        limiter = trio.CapacityLimiter(1)
        seen["limiter"] = limiter
        await tc.run_sync_interruptible(
            blocker, interrupt=blocker.interrupt, grace=5.0, limiter=limiter
        )

    with pytest.raises(KeyboardInterrupt) as info:
        trio.run(main)
    blocker = seen["blocker"]
    assert isinstance(blocker, SignalsCtrlC)
    assert len(blocker.interrupts) == 1  # interrupted, from the Trio thread
    assert blocker.interrupts[0] == threading.get_ident()
    assert blocker.finally_ran  # and waited for: fn was over before trio.run returned
    assert isinstance(info.value.__context__, InterruptedError)  # what fn raised
    limiter = seen["limiter"]
    assert isinstance(limiter, trio.CapacityLimiter)
    assert limiter.borrowed_tokens == 0


@pytest.mark.usefixtures("real_ctrl_c")
def test_ctrl_c_with_a_stubborn_call_abandons_it_visibly() -> None:
    blocker_box: list[SignalsCtrlC] = []

    async def main() -> None:
        blocker = SignalsCtrlC(obey=False)
        blocker_box.append(blocker)
        await tc.run_sync_interruptible(blocker, interrupt=blocker.interrupt, grace=0.05)

    before = tc.thread_call_statistics()
    with (
        pytest.warns(tc.CleanupTimeoutWarning, match="abandoned"),
        pytest.raises(KeyboardInterrupt),
    ):
        trio.run(main)
    (blocker,) = blocker_box
    assert blocker.interrupts  # interrupted (and repeated) before giving up
    assert tc.thread_call_statistics().abandoned == before.abandoned + 1
    blocker.release.set()
    _wait_for_abandoned_running(before.abandoned_running)


def _wait_for_abandoned_running(expected: int) -> None:
    """Another thread ends the call and counts it down: wait (bounded) for that count."""
    deadline = time.monotonic() + 10
    while tc.thread_call_statistics().abandoned_running != expected:
        assert time.monotonic() < deadline, tc.thread_call_statistics()
        time.sleep(0.001)


# ---------------------------------------------------------------- abandoned after the run


def test_abandoned_running_counts_down_when_the_thread_ends_after_trio_run() -> None:
    blocker_box: list[Blocker] = []

    async def main() -> None:
        blocker = Blocker(obey=False)
        blocker_box.append(blocker)
        with trio.CancelScope() as cs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_started, blocker, cs)
                await tc.run_sync_interruptible(blocker, interrupt=blocker.interrupt, grace=0)

    before = tc.thread_call_statistics()
    with pytest.warns(tc.CleanupTimeoutWarning):
        trio.run(main)
    during = tc.thread_call_statistics()
    assert during.abandoned_running == before.abandoned_running + 1
    (blocker,) = blocker_box
    blocker.release.set()  # the thread ends only now, after trio.run returned
    _wait_for_abandoned_running(before.abandoned_running)
    assert blocker.finally_ran


# ---------------------------------------------------------------- how often interrupt() runs


async def test_interrupt_is_repeated_with_back_off_until_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    blocker = Blocker(obey=False)
    times: list[float] = []

    def interrupt() -> None:
        times.append(trio.current_time())
        blocker.interrupt()

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            with pytest.warns(tc.CleanupTimeoutWarning):
                await tc.run_sync_interruptible(blocker, interrupt=interrupt, grace=5.0)
    blocker.release.set()
    start = times[0]
    assert [round(t - start, 6) for t in times] == [0, 0.1, 0.3, 0.7, 1.5, 2.5, 3.5, 4.5]


def test_the_docstring_says_how_often_interrupt_is_called() -> None:
    doc = inspect.getdoc(tc.run_sync_interruptible) or ""
    interrupt_arg = doc.split("interrupt:", 1)[1].split("grace:", 1)[0]
    assert "once" not in interrupt_arg
    assert "repeated" in interrupt_arg


# ---------------------------------------------------------------- like trio.to_thread.run_sync

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID", default="unset")


async def test_contextvars_are_copied_into_the_thread() -> None:
    REQUEST_ID.set("request-42")

    def fn() -> str:
        seen = REQUEST_ID.get()
        REQUEST_ID.set("changed in the thread")  # a copy: the caller's stays
        return seen

    assert await tc.run_sync_interruptible(fn, interrupt=lambda: None) == "request-42"
    assert REQUEST_ID.get() == "request-42"


async def test_from_thread_run_and_run_sync_work_inside_fn() -> None:
    REQUEST_ID.set("request-7")

    async def async_part() -> str:
        await trio.lowlevel.checkpoint()
        return "async " + REQUEST_ID.get()

    def fn() -> tuple[str, str, bool]:
        return (
            trio.from_thread.run(async_part),
            trio.from_thread.run_sync(REQUEST_ID.get),
            trio.from_thread.run_sync(trio.lowlevel.in_trio_run),
        )

    assert await tc.run_sync_interruptible(fn, interrupt=lambda: None) == (
        "async request-7",
        "request-7",
        True,
    )


async def test_check_cancelled_inside_fn_raises_once_the_caller_is_cancelled() -> None:
    checked = threading.Event()
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()

    def cooperative() -> str:
        trio.from_thread.check_cancelled()  # not cancelled yet: returns
        checked.set()
        token.run_sync_soon(started.set)
        try:
            while True:
                trio.from_thread.check_cancelled()
                time.sleep(0.001)
        except trio.Cancelled as exc:
            raised.append(exc)
            raise

    raised: list[trio.Cancelled] = []
    with trio.CancelScope() as cs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_scope_when, started, cs)
            await tc.run_sync_interruptible(cooperative, interrupt=lambda: None)
    assert cs.cancelled_caught
    assert checked.is_set()
    assert len(raised) == 1  # fn ended through check_cancelled() (interrupt() does nothing)


async def test_check_cancelled_stopping_fn_is_the_cancellation() -> None:
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    seen: list[BaseException] = []

    def cooperative() -> None:
        token.run_sync_soon(started.set)
        while True:
            trio.from_thread.check_cancelled()
            time.sleep(0.001)

    with trio.CancelScope() as cs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_scope_when, started, cs)
            try:
                # is_interruption says no to everything: a Cancelled from check_cancelled is
                # still the caller's own cancellation.
                await tc.run_sync_interruptible(
                    cooperative, interrupt=lambda: None, is_interruption=lambda _: False
                )
            except trio.Cancelled as exc:
                seen.append(exc)
                raise
    assert cs.cancelled_caught
    assert isinstance(seen[0].__context__, trio.Cancelled)


@pytest.mark.usefixtures("real_ctrl_c")
def test_a_second_ctrl_c_during_the_wait_abandons_the_call_at_once() -> None:
    box: list[SignalsCtrlC] = []

    class TwiceCtrlC(SignalsCtrlC):
        def interrupt(self) -> None:
            super().interrupt()
            if len(self.interrupts) == 1:
                os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl+C again

    async def main() -> None:
        blocker = TwiceCtrlC(obey=False)
        box.append(blocker)
        await tc.run_sync_interruptible(blocker, interrupt=blocker.interrupt, grace=math.inf)

    before = tc.thread_call_statistics()
    with (
        pytest.warns(tc.CleanupTimeoutWarning, match="KeyboardInterrupt arrived"),
        pytest.raises(KeyboardInterrupt) as info,
    ):
        trio.run(main)  # grace is infinite: only the second Ctrl+C ends the wait
    assert isinstance(info.value.__context__, KeyboardInterrupt)  # the first one
    assert tc.thread_call_statistics().abandoned == before.abandoned + 1
    box[0].release.set()
    _wait_for_abandoned_running(before.abandoned_running)


@pytest.mark.usefixtures("real_ctrl_c")
def test_check_cancelled_inside_fn_raises_keyboard_interrupt_after_ctrl_c() -> None:
    raised: list[BaseException] = []

    def cooperative() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        try:
            while True:
                trio.from_thread.check_cancelled()
                time.sleep(0.001)
        except BaseException as exc:
            raised.append(exc)
            raise

    async def main() -> None:
        await tc.run_sync_interruptible(cooperative, interrupt=lambda: None)

    with pytest.raises(KeyboardInterrupt) as info:
        trio.run(main)
    assert len(raised) == 1
    assert isinstance(raised[0], KeyboardInterrupt)  # what reached the caller
    assert info.value.__context__ is raised[0]


@pytest.mark.usefixtures("real_ctrl_c")
def test_ctrl_c_while_waiting_for_the_limiter_never_runs_fn() -> None:
    calls: list[str] = []

    async def ctrl_c_when_waiting(limiter: trio.CapacityLimiter) -> None:
        while limiter.statistics().tasks_waiting == 0:
            await trio.testing.wait_all_tasks_blocked()
            await trio.lowlevel.checkpoint()
        # From another thread, as a real Ctrl+C comes: Trio delivers it to the main task.
        await trio.to_thread.run_sync(os.kill, os.getpid(), signal.SIGINT)

    async def main() -> None:
        limiter = trio.CapacityLimiter(1)
        first = Blocker()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: tc.run_sync_interruptible(first, interrupt=first.interrupt, limiter=limiter)
            )
            await first.started.wait()
            nursery.start_soon(ctrl_c_when_waiting, limiter)
            await tc.run_sync_interruptible(
                calls.append, "ran", interrupt=lambda: None, limiter=limiter
            )

    with pytest.RaisesGroup(KeyboardInterrupt, allow_unwrapped=True, flatten_subgroups=True):
        trio.run(main)
    assert calls == []


async def test_a_base_exception_of_fn_after_the_interrupt_is_not_taken_for_the_cancellation() -> (
    None
):
    blocker = Blocker()

    def exits_when_interrupted() -> None:
        try:
            blocker()
        except InterruptedError:
            raise SystemExit(3) from None

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as cs:
            nursery.start_soon(_cancel_when_started, blocker, cs)
            with pytest.raises(SystemExit):
                await tc.run_sync_interruptible(exits_when_interrupted, interrupt=blocker.interrupt)
    assert blocker.interrupts


async def _ctrl_c_when_blocked(started: trio.Event) -> None:
    """A real Ctrl+C, sent from another thread once every task is blocked (as the main task
    is, in the call): Trio delivers it to the main task there."""
    await started.wait()
    await trio.testing.wait_all_tasks_blocked()
    await trio.to_thread.run_sync(os.kill, os.getpid(), signal.SIGINT)


@pytest.mark.usefixtures("real_ctrl_c")
def test_a_connection_threads_call_lands_a_ctrl_c_like_a_cancellation() -> None:
    # The database connections run their calls in a thread of their own and wait with
    # wait_call(): a Ctrl+C interrupts the statement there too before it propagates.
    from trio_cancel._threads import ThreadCall, wait_call

    box: list[Blocker] = []

    async def main() -> None:
        blocker = Blocker()
        box.append(blocker)
        call = ThreadCall(blocker, "statement")
        threading.Thread(target=call.run_in_thread, daemon=True).start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_ctrl_c_when_blocked, blocker.started)
            await wait_call(
                call,
                interrupt=blocker.interrupt,
                grace=5.0,
                is_interruption=_is_interrupted,
                what="test statement",
            )

    with pytest.RaisesGroup(KeyboardInterrupt, allow_unwrapped=True, flatten_subgroups=True):
        trio.run(main)
    (blocker,) = box
    assert len(blocker.interrupts) == 1
    assert blocker.finally_ran


@pytest.mark.parametrize("grace", [0.0, 5.0])
async def test_a_call_skipped_after_its_thread_took_the_token_gives_it_back_first(
    grace: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled after a thread was handed the call (it holds the limiter token) but before
    ``fn`` began: ``fn`` never runs, nothing is abandoned, and the token is back when the
    call ends, whatever ``grace`` (0 included)."""
    from trio_cancel import _threads

    entered, go = threading.Event(), threading.Event()
    real_run = _threads.ThreadCall.run_and_return
    real_skip = _threads.ThreadCall.skip_if_pending

    def run(self: _threads.ThreadCall[object]) -> object:
        entered.set()
        go.wait(10)
        return real_run(self)

    def skip(self: _threads.ThreadCall[object]) -> bool:
        skipped = real_skip(self)
        go.set()  # the thread may go on only once the call is skipped
        return skipped

    monkeypatch.setattr(_threads.ThreadCall, "run_and_return", run)
    monkeypatch.setattr(_threads.ThreadCall, "skip_if_pending", skip)
    limiter = trio.CapacityLimiter(1)
    ran: list[int] = []
    before = tc.thread_call_statistics().abandoned
    with trio.CancelScope() as cs:
        async with trio.open_nursery() as nursery:

            async def cancel_once_entered() -> None:
                await trio.to_thread.run_sync(entered.wait, 10)
                cs.cancel()

            nursery.start_soon(cancel_once_entered)
            await tc.run_sync_interruptible(
                ran.append, 1, interrupt=lambda: None, limiter=limiter, grace=grace
            )
    assert cs.cancelled_caught
    assert limiter.borrowed_tokens == 0
    assert ran == []
    assert tc.thread_call_statistics().abandoned == before


async def test_a_call_cancelled_as_fn_returns_ends_with_its_token_back_with_grace_0() -> None:
    """Cancelled around the moment fn returns (seeded schedule), with grace=0 or tiny: a call
    that ends and was not abandoned has given its limiter token back (the thread's report
    can still be queued when the caller lands)."""
    import random
    import time
    import warnings

    rng = random.Random(1234)
    held: list[tuple[int, int]] = []
    for i in range(2000):
        limiter = trio.CapacityLimiter(1)
        spin = rng.random() * 2e-4
        delay = rng.random() * 3e-4

        def fn(i: int = i, spin: float = spin) -> int:
            end = time.perf_counter() + spin
            while time.perf_counter() < end:
                pass
            return i

        with warnings.catch_warnings(record=True) as caught, trio.CancelScope() as scope:
            warnings.simplefilter("always")

            async def canceller(scope: trio.CancelScope = scope, delay: float = delay) -> None:
                await trio.lowlevel.checkpoint()
                end = time.perf_counter() + delay
                while time.perf_counter() < end:
                    pass
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(canceller)
                try:
                    await tc.run_sync_interruptible(
                        fn, interrupt=lambda: None, grace=0.0 if i % 2 else 1e-6, limiter=limiter
                    )
                finally:
                    abandoned = any(
                        issubclass(w.category, tc.CleanupTimeoutWarning) for w in caught
                    )
                    if not abandoned and limiter.borrowed_tokens:
                        held.append((i, limiter.borrowed_tokens))
    assert held == []
