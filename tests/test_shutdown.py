"""GracefulShutdown: phase 1 cancels the token, phase 2 aborts who is left, the report says who."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import tracemalloc
import unicodedata
from typing import Any

import pytest
import trio
import trio.testing
from _signals import ProgramHandler, send_together

import trio_cancel as tc


async def cooperative(wind_down: float, *, token: tc.CancellationToken) -> str:
    """Works until its token fires, then takes ``wind_down`` seconds to finish up."""
    await token.wait_cancelled()
    await trio.sleep(wind_down)
    return f"landed after {wind_down}"


async def stubborn() -> None:
    """Takes no token: only phase 2 stops it."""
    await trio.sleep_forever()


async def with_kwargs(**kwargs: Any) -> str:  # noqa: ANN401 - the point of the test
    return "got a token through **kwargs" if "token" in kwargs else "no token through **kwargs"


async def test_cooperative_tasks_land_in_phase_one(autojump_clock: trio.testing.MockClock) -> None:
    async with tc.GracefulShutdown(grace=5.0) as gs:
        fast = gs.spawn(cooperative, 0.5, name="fast")
        slow = gs.spawn(cooperative, 2.0, name="slow")
        await trio.sleep(10)
        gs.trigger("deploy")
        report = await gs.wait()
    assert gs.token.reason == "deploy"
    assert [t.name for t in report] == ["fast", "slow"]
    assert [t.seconds for t in report] == [pytest.approx(0.5), pytest.approx(2.0)]
    assert not any(t.forced for t in report)
    assert fast.outcome == tc.Completed("landed after 0.5")
    assert slow.outcome == tc.Completed("landed after 2.0")
    assert report.forced == ()
    assert gs.report is report


async def test_stubborn_tasks_are_forced_at_the_end_of_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=3.0) as gs:
        gs.spawn(cooperative, 1.0, name="polite")
        rude = gs.spawn(stubborn, name="rude")
        late = gs.spawn(cooperative, 60.0, name="late")
        start = trio.current_time()
        report = await gs.wait()  # triggers too
    assert trio.current_time() - start == pytest.approx(3.0)
    by_name = {t.name: t for t in report}
    assert not by_name["polite"].forced
    assert by_name["rude"].forced
    assert by_name["late"].forced
    assert by_name["rude"].seconds == pytest.approx(3.0)
    assert rude.outcome == tc.Aborted("shutdown: forced after the grace period")
    assert isinstance(late.outcome, tc.Aborted)
    assert [t.name for t in report.forced] == ["rude", "late"]
    text = str(report)
    assert "1 of 3 tasks landed within the 3 s grace period, 2 forced" in text
    assert text.index("late") < text.index("polite")  # slowest first


async def test_a_task_that_takes_no_token_runs_on_through_phase_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    progress: list[float] = []

    async def ticker() -> None:
        while True:
            await trio.sleep(1)
            progress.append(trio.current_time())

    async with tc.GracefulShutdown(grace=4.5) as gs:
        gs.spawn(ticker)
        gs.trigger()
        triggered = trio.current_time()
    assert len(progress) == 4  # ticked through the grace period, then was aborted
    assert gs.report is not None
    assert gs.report.tasks[0].forced
    assert gs.report.tasks[0].seconds == pytest.approx(4.5)
    assert trio.current_time() - triggered == pytest.approx(4.5)


async def test_kwargs_function_gets_no_token() -> None:
    async with tc.GracefulShutdown(grace=1.0) as gs:
        handle = gs.spawn(with_kwargs)
    assert handle.outcome == tc.Completed("no token through **kwargs")


async def test_task_that_ended_before_the_trigger_is_counted_not_listed(
    mock_clock: trio.testing.MockClock,
) -> None:
    async def quick() -> int:
        return 7

    async def slow(*, token: tc.CancellationToken) -> None:
        await token.wait_cancelled()

    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.spawn(quick)
        gs.spawn(slow)
        await trio.testing.wait_all_tasks_blocked()
        report = await gs.wait()  # no time passed under the MockClock: ended *before* counts
    assert [t.name for t in report] == [slow.__qualname__]
    assert report.tasks[0].seconds == 0.0
    assert report.ended_before == {"completed": 1, "failed": 0, "aborted": 0}


async def test_failed_task_is_reported_not_raised() -> None:
    async def broken(*, token: tc.CancellationToken) -> None:
        await token.wait_cancelled()
        raise OSError("flush failed")

    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.spawn(broken)
    assert gs.report is not None
    outcome = gs.report.tasks[0].outcome
    assert isinstance(outcome, tc.Failed)
    assert isinstance(outcome.error, OSError)


async def test_trigger_is_idempotent_and_first_reason_stays() -> None:
    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.trigger("first")
        gs.trigger("second")
        report = await gs.wait()
        assert await gs.wait() is report  # a second wait returns the same report
    assert report.reason == "first"
    assert gs.token.reason == "first"
    assert len(report) == 0


async def test_leaving_without_wait_triggers_and_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=2.0) as gs:
        handle = gs.spawn(cooperative, 1.0)
    assert handle.outcome == tc.Completed("landed after 1.0")
    assert gs.report is not None
    assert gs.report.reason == "shutdown"


async def test_body_error_propagates_as_itself_after_landing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(KeyError) as info:
        async with tc.GracefulShutdown(grace=2.0) as gs:
            handle = gs.spawn(cooperative, 1.0)
            raise KeyError("config")
    assert type(info.value) is KeyError
    assert handle.outcome == tc.Completed("landed after 1.0")  # it still landed gracefully


async def test_cancelled_wait_changes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with tc.GracefulShutdown(grace=10.0) as gs:
        handle = gs.spawn(cooperative, 5.0)
        with trio.move_on_after(1) as cs:
            await gs.wait()
        assert cs.cancelled_caught
        assert not handle.is_finished()
        report = await gs.wait()
    assert report.tasks[0].seconds == pytest.approx(5.0)
    assert not report.tasks[0].forced


async def test_cancelled_from_outside_cancels_every_task_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.move_on_after(1) as outer:
        async with tc.GracefulShutdown(grace=100.0) as gs:
            handle = gs.spawn(cooperative, 5.0)
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert isinstance(handle.outcome, tc.Aborted)
    assert trio.current_time() == pytest.approx(1.0)  # no grace period: Trio's cancellation


async def test_cancelled_before_entering(autojump_clock: trio.testing.MockClock) -> None:
    gs = tc.GracefulShutdown(grace=1.0)
    with trio.CancelScope() as outer:
        outer.cancel()
        async with gs:
            pytest.fail("the body ran")  # pragma: no cover
    assert outer.cancelled_caught


async def test_force_skips_the_rest_of_the_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=100.0) as gs:
        gs.spawn(stubborn)
        gs.trigger()
        await trio.sleep(1)
        gs.force()
        report = await gs.wait()
    assert report.tasks[0].forced
    assert report.tasks[0].seconds == pytest.approx(1.0)


async def test_spawn_after_trigger_gets_a_cancelled_token() -> None:
    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.trigger("late")
        handle = gs.spawn(cooperative, 0.0)
    assert handle.outcome == tc.Completed("landed after 0.0")


async def test_bad_input_and_wrong_state() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        tc.GracefulShutdown(grace=-1)
    with pytest.raises(TypeError, match="number of seconds"):
        tc.GracefulShutdown(grace="5")  # type: ignore[arg-type]
    gs = tc.GracefulShutdown(grace=math.inf)
    with pytest.raises(RuntimeError, match="inside its 'async with'"):
        gs.spawn(stubborn)
    with pytest.raises(RuntimeError, match="inside its 'async with'"):
        gs.trigger()
    async with gs:
        with pytest.raises(TypeError, match="async function"):
            gs.spawn(42)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="reason"):
            gs.trigger(3)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="entered only once"):
        async with gs:
            pass  # pragma: no cover
    with pytest.raises(RuntimeError, match="inside its 'async with'"):
        gs.spawn(stubborn)


async def test_signals_trigger_then_force_and_handlers_are_restored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    async with tc.GracefulShutdown(grace=100.0) as gs:
        gs.install_signal_handlers(signal.SIGUSR1)
        assert signal.getsignal(signal.SIGUSR1) is not before
        rude = gs.spawn(stubborn)
        os.kill(os.getpid(), signal.SIGUSR1)
        await trio.sleep(1)
        assert gs.token.reason == "signal SIGUSR1"
        assert not rude.is_finished()
        os.kill(os.getpid(), signal.SIGUSR1)  # the second one forces phase 2 at once
        report = await gs.wait()
    assert report.tasks[0].forced
    assert report.tasks[0].seconds is not None
    assert report.tasks[0].seconds < 100
    assert signal.getsignal(signal.SIGUSR1) is before
    with pytest.raises(RuntimeError, match="inside the 'async with'"):
        gs.install_signal_handlers()


async def test_signals_that_arrive_together_trigger_once_and_do_not_force(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=100.0) as gs:
        gs.install_signal_handlers()
        polite = gs.spawn(cooperative, 0.5, name="polite")
        await trio.testing.wait_all_tasks_blocked()
        send_together(signal.SIGTERM, signal.SIGINT)  # an orchestrator's and a terminal's
        await gs.token.wait_cancelled()
        report = await gs.wait()
    assert report.reason == "signal SIGINT"  # the first one dispatched
    assert polite.outcome == tc.Completed("landed after 0.5")
    assert [(t.name, t.seconds, t.forced) for t in report] == [("polite", 0.5, False)]
    assert report.phases["phase_two"] is None


@pytest.mark.skipif(not hasattr(signal, "SIGRTMIN"), reason="no real-time signals here")
async def test_a_real_time_signal_is_named_as_kill_l_names_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    signum = signal.SIGRTMIN + 1  # not a member of signal.Signals
    before = signal.getsignal(signum)
    async with tc.GracefulShutdown(grace=100.0) as gs:
        gs.install_signal_handlers(signum)
        rude = gs.spawn(stubborn, name="rude")
        os.kill(os.getpid(), signum)
        await gs.token.wait_cancelled()
        assert gs.token.reason == "signal SIGRTMIN+1"
        await trio.sleep(1)
        os.kill(os.getpid(), signum)  # a second one: phase 2
        report = await gs.wait()
    assert rude.outcome == tc.Aborted("signal SIGRTMIN+1: forced by a second signal (SIGRTMIN+1)")
    assert report.tasks[0].seconds == 1.0
    assert signal.getsignal(signum) is before


async def test_install_signal_handlers_refuses_a_signal_it_cannot_catch() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    async with tc.GracefulShutdown(grace=1.0) as gs:
        with pytest.raises(OSError, match="Invalid argument"):
            gs.install_signal_handlers(signal.SIGUSR1, signal.SIGKILL)
        assert signal.getsignal(signal.SIGUSR1) is before  # nothing left installed
        gs.install_signal_handlers(signal.SIGUSR1)  # and the call can be made again
        os.kill(os.getpid(), signal.SIGUSR1)
        await gs.token.wait_cancelled()
    assert gs.token.reason == "signal SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


async def test_spawn_after_the_report_is_refused() -> None:
    async with tc.GracefulShutdown(grace=1.0) as gs:
        await gs.wait()
        with pytest.raises(RuntimeError, match="landed already"):
            gs.spawn(stubborn)
    assert "landed" in repr(gs)


async def test_cancelled_from_outside_while_the_exit_waits_for_landing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    before = signal.getsignal(signal.SIGUSR2)
    with trio.move_on_after(1) as outer:
        async with tc.GracefulShutdown(grace=100.0) as gs:
            gs.install_signal_handlers(signal.SIGUSR2)
            slow = gs.spawn(cooperative, 60.0)  # winding down would take a minute
    # The exit triggered and was waiting for the landing when the outer deadline came:
    # every task is cancelled at once, the helpers stop, the handlers come back.
    assert outer.cancelled_caught
    assert gs.token.reason == "shutdown"
    assert isinstance(slow.outcome, tc.Aborted)
    assert trio.current_time() == pytest.approx(1.0)
    assert gs.report is None  # no landing to report: the shutdown was not graceful
    assert signal.getsignal(signal.SIGUSR2) is before


async def test_ten_thousand_tasks_land_and_the_stragglers_are_named(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=5.0) as gs:
        for i in range(10_000):
            if i % 100 == 99:
                gs.spawn(stubborn, name=f"stuck-{i}")
            else:
                gs.spawn(cooperative, (i % 50) / 10, name=f"task-{i}")  # 0 to 4.9 s
        await trio.testing.wait_all_tasks_blocked()
        report = await gs.wait()
    assert len(report) == 10_000
    assert sorted(t.name for t in report.forced) == sorted(
        f"stuck-{i}" for i in range(99, 10_000, 100)
    )
    landed = [t for t in report if not t.forced]
    assert all(isinstance(t.outcome, tc.Completed) for t in landed)
    assert max(t.seconds or 0.0 for t in landed) == pytest.approx(4.9)
    assert str(report).startswith(
        "shutdown 'shutdown': 9900 of 10000 tasks landed within the 5 s grace period, 100 forced"
    )


# ---------------------------------------------------------------- reliability regressions


async def test_exit_still_forces_when_a_callback_raises_at_the_implicit_trigger(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stubborn() -> None:
        await trio.sleep_forever()  # ignores the token

    def broken() -> None:
        raise ZeroDivisionError

    with pytest.raises(ExceptionGroup) as info:
        async with tc.GracefulShutdown(grace=1.0) as gs:
            gs.token.on_cancel(broken)
            gs.spawn(stubborn, name="stubborn")
            await trio.sleep(0.1)
            start = trio.current_time()
    assert trio.current_time() - start == 1.0  # phase 2 came after the grace period
    assert info.group_contains(ZeroDivisionError)
    assert gs.report is not None
    assert [t.forced for t in gs.report] == [True]


async def test_explicit_trigger_raises_callback_errors_and_phase_two_still_comes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken() -> None:
        raise ZeroDivisionError

    async with tc.GracefulShutdown(grace=2.0) as gs:
        gs.token.on_cancel(broken)
        gs.spawn(trio.sleep_forever, name="stubborn")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ExceptionGroup):
            gs.trigger()
        report = await gs.wait()
    assert report.tasks[0].forced
    assert report.tasks[0].seconds == 2.0


async def test_task_spawned_after_phase_two_is_aborted_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ran: list[str] = []

    async def late() -> None:
        ran.append("late")
        await trio.sleep_forever()

    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.spawn(trio.sleep_forever, name="early")
        gs.trigger()
        await trio.sleep(5)  # phase 2 began at 1 s
        gs.spawn(late, name="late")
        report = await gs.wait()
    assert ran == []
    late_row = report.tasks[1]
    assert late_row.forced
    assert late_row.outcome == tc.Aborted("shutdown: forced after the grace period")


async def test_finished_tasks_before_the_trigger_are_not_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def request(n: int) -> int:
        await trio.lowlevel.checkpoint()
        if n % 1000 == 999:
            raise OSError(f"request {n} failed")
        return n

    tracemalloc.start()
    try:
        async with tc.GracefulShutdown(grace=1.0) as gs:
            memory = []
            with caplog.at_level(logging.ERROR, logger="trio_cancel"):
                for i in range(5000):
                    gs.spawn(request, i)
                    if i % 500 == 499:
                        await trio.testing.wait_all_tasks_blocked()
                        memory.append(tracemalloc.get_traced_memory()[0])
            grown = memory[-1] - memory[1]  # over 4,000 requests that came and went
            gs.spawn(trio.sleep_forever, name="in flight")
            report = await gs.wait()
    finally:
        tracemalloc.stop()
    # was ~2.7 KB per finished task (11 MB here); what remains is caplog keeping the 4 failures
    # with their tracebacks (about 50 KB on Python 3.13)
    assert grown < 150_000, grown
    assert report.ended_before == {"completed": 4995, "failed": 5, "aborted": 0}
    assert [t.name for t in report] == ["in flight"]
    assert caplog.text.count("request") >= 5  # each failure logged with its traceback


async def test_report_to_dict_is_plain_data(autojump_clock: trio.testing.MockClock) -> None:
    async def polite(*, token: tc.CancellationToken) -> str:
        await token.wait_cancelled()
        return "done"

    async def broken(*, token: tc.CancellationToken) -> None:
        await token.wait_cancelled()
        raise OSError("flush failed")

    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.spawn(polite, name="polite")
        gs.spawn(broken, name="broken")
        gs.spawn(trio.sleep_forever, name="stubborn")
        await trio.testing.wait_all_tasks_blocked()
        gs.trigger("deploy")
        report = await gs.wait()
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["reason"] == "deploy"
    assert (data["landed"], data["forced"]) == (2, 1)
    rows = {row["name"]: row for row in data["tasks"]}
    assert rows["polite"]["outcome"] == "completed"
    assert rows["broken"]["error"] == "OSError('flush failed')"
    assert rows["stubborn"] == {
        "name": "stubborn",
        "outcome": "aborted",
        "reason": "deploy: forced after the grace period",
        "error": None,
        "seconds": 1.0,
        "forced": True,
        "abandoned": [],
        "detail": None,
    }
    assert data["phases"] == {
        "drain": None,
        "trigger": 0.0,
        "listener_closed": None,
        "phase_two": 1.0,
        "exit": 1.0,
    }


async def test_cpu_hog_past_the_grace_period_is_reported_forced(
    mock_clock: trio.testing.MockClock,
) -> None:
    async def hog(*, token: tc.CancellationToken) -> str:
        await token.wait_cancelled()
        mock_clock.jump(5)  # holds the CPU past the 1 s grace period, no checkpoint
        return "done"

    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.spawn(hog, name="hog")
        await trio.testing.wait_all_tasks_blocked()
        gs.trigger()
        report = await gs.wait()
    row = report.tasks[0]
    assert row.outcome == tc.Completed("done")
    assert row.forced
    assert row.seconds == 5.0
    assert "0 of 1 tasks landed" in str(report)


async def test_force_and_second_signal_name_what_forced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=60.0) as gs:
        gs.spawn(trio.sleep_forever, name="a")
        gs.trigger("deploy")
        gs.force()
        report = await gs.wait()
    assert report.tasks[0].outcome == tc.Aborted("deploy: forced by force()")

    async with tc.GracefulShutdown(grace=60.0) as gs:
        gs.install_signal_handlers(signal.SIGUSR1)
        gs.spawn(trio.sleep_forever, name="b")
        os.kill(os.getpid(), signal.SIGUSR1)
        await trio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)
        report = await gs.wait()
    assert report.tasks[0].outcome == tc.Aborted(
        "signal SIGUSR1: forced by a second signal (SIGUSR1)"
    )


async def test_trigger_rejects_non_str_reason_and_grace_overflow() -> None:
    with pytest.raises(ValueError, match="too large"):
        tc.GracefulShutdown(10**400)
    async with tc.GracefulShutdown(grace=1.0) as gs:
        with pytest.raises(TypeError, match="str"):
            gs.trigger(None)  # type: ignore[arg-type]
        gs.trigger("ok")
    assert gs.report is not None
    assert gs.report.reason == "ok"


async def test_trigger_from_another_thread_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.spawn(trio.sleep_forever, name="stubborn")
        with pytest.raises(RuntimeError, match="Trio thread"):
            await trio.to_thread.run_sync(gs.trigger, "from a thread")
        assert not gs.token.is_cancelled()
        trio_token = trio.lowlevel.current_trio_token()
        await trio.to_thread.run_sync(
            lambda: trio.from_thread.run_sync(gs.trigger, "retried", trio_token=trio_token)
        )
        report = await gs.wait()
    assert report.reason == "retried"


async def test_implicit_trigger_error_survives_a_cancellation_from_outside_during_the_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken() -> None:
        raise ZeroDivisionError

    with pytest.raises(ExceptionGroup) as info, trio.move_on_after(5) as outer:
        async with tc.GracefulShutdown(grace=60.0) as gs:
            gs.token.on_cancel(broken)
            gs.spawn(trio.sleep_forever, name="stubborn")
            await trio.testing.wait_all_tasks_blocked()
        # the exit triggers implicitly, then waits for the landing; at 5 s the outer scope
        # cancels it: the tasks are cancelled at once and the callback's error still surfaces
    assert info.group_contains(ZeroDivisionError)
    assert trio.current_time() == 5.0
    assert outer.cancel_called


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_signal_trigger_with_a_raising_callback_stays_graceful(
    signum: signal.Signals, autojump_clock: trio.testing.MockClock
) -> None:
    """As for the implicit trigger: the landing goes on (phase 2 after the full grace period),
    the report is produced, and the callbacks' group is raised at the block's exit."""
    before = signal.getsignal(signum)

    def broken() -> None:
        raise RuntimeError("callback bug")

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="callback bug")):
        async with tc.GracefulShutdown(grace=5.0) as gs:
            gs.install_signal_handlers(signum)
            gs.token.on_cancel(broken)
            polite = gs.spawn(cooperative, 0.5, name="polite")
            rude = gs.spawn(stubborn, name="rude")
            await trio.sleep(1)
            os.kill(os.getpid(), signum)
            await gs.token.wait_cancelled()
            triggered_at = trio.current_time()
            report = await gs.wait()
            assert trio.current_time() - triggered_at == 5.0  # phase 2 after the grace period
            body_reached_its_end = True
    assert body_reached_its_end
    assert gs.report is report
    assert report.reason == f"signal {signum.name}"
    assert polite.outcome == tc.Completed("landed after 0.5")
    assert rude.outcome == tc.Aborted(f"signal {signum.name}: forced after the grace period")
    assert [(t.name, t.seconds, t.forced) for t in report] == [
        ("polite", 0.5, False),
        ("rude", 5.0, True),
    ]
    assert signal.getsignal(signum) is before


async def test_signal_trigger_with_a_raising_callback_and_a_body_error_raises_both(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken() -> None:
        raise RuntimeError("callback bug")

    with pytest.RaisesGroup(
        KeyError, pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="callback bug"))
    ):
        async with tc.GracefulShutdown(grace=5.0) as gs:
            gs.install_signal_handlers(signal.SIGTERM)
            gs.token.on_cancel(broken)
            polite = gs.spawn(cooperative, 0.5)
            os.kill(os.getpid(), signal.SIGTERM)
            await gs.token.wait_cancelled()
            raise KeyError("body")
    assert polite.outcome == tc.Completed("landed after 0.5")
    assert gs.report is not None


async def test_second_signal_still_forces_after_a_raising_callback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken() -> None:
        raise RuntimeError("callback bug")

    with pytest.RaisesGroup(RuntimeError):
        async with tc.GracefulShutdown(grace=100.0) as gs:
            gs.install_signal_handlers(signal.SIGUSR1)
            gs.token.on_cancel(broken)
            rude = gs.spawn(stubborn, name="rude")
            os.kill(os.getpid(), signal.SIGUSR1)
            await gs.token.wait_cancelled()
            await trio.sleep(1)
            os.kill(os.getpid(), signal.SIGUSR1)  # the second one forces phase 2 at once
            report = await gs.wait()
    assert rude.outcome == tc.Aborted("signal SIGUSR1: forced by a second signal (SIGUSR1)")
    assert [t.seconds for t in report] == [1.0]


async def test_task_forced_while_its_inner_nursery_fails_is_reported_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def inner_nursery_failing_when_cancelled() -> None:
        async def child() -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise ValueError("cleanup failed")

        async with trio.open_nursery() as inner:
            inner.start_soon(child)
            await trio.sleep_forever()

    async with tc.GracefulShutdown(grace=2.0) as gs:
        gs.spawn(inner_nursery_failing_when_cancelled, name="fragile")
        gs.spawn(cooperative, 3.0, name="slow but polite")
        gs.spawn(cooperative, 1.0, name="polite")
        report = await gs.wait()
    rows = {t.name: t for t in report}
    fragile = rows["fragile"].outcome
    assert isinstance(fragile, tc.Failed)
    assert pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="cleanup failed")).matches(
        fragile.error
    )
    assert rows["fragile"].forced
    assert rows["polite"].outcome == tc.Completed("landed after 1.0")
    assert rows["slow but polite"].outcome == tc.Aborted("shutdown: forced after the grace period")


# ---------------------------------------------------------------- the report's text


async def _lands_at_once(*, token: tc.CancellationToken) -> None:
    await token.wait_cancelled()


async def test_report_text_stays_small_with_a_huge_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    huge = "y" * 200_000
    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.spawn(_lands_at_once, name=huge)
        for i in range(2_000):
            gs.spawn(_lands_at_once, name=f"t{i}")
    report = gs.report
    assert report is not None
    text = str(report)
    lines = text.splitlines()
    assert len(lines) == 2 + 2_001
    assert len(text) < 2_001 * 150  # every row is short, not padded to 200,000 columns
    (row,) = [line for line in lines if "yyy" in line]
    assert "y…" in row
    assert len(row) < 150
    assert max(len(line) for line in lines[1:]) < 120
    # the full name is still in the data
    assert report.tasks[0].name == huge
    assert report.to_dict()["tasks"][0]["name"] == huge


async def test_report_rows_are_one_line_whatever_the_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    names = ["a\nb", "c\r\nd", "e\u2028f", "tab\there", "bell\x07", "ünïcødé-タスク", "", "{0}%s"]
    async with tc.GracefulShutdown(grace=1.0) as gs:
        for name in names:
            gs.spawn(_lands_at_once, name=name)
    report = gs.report
    assert report is not None
    lines = str(report).splitlines()
    assert len(lines) == 2 + len(names)  # the header, the column titles, one line per task
    rows = "\n".join(lines[2:])
    for shown in [r"a\nb", r"c\r\nd", r"e\u2028f", r"tab\there", r"bell\x07", "ünïcødé-タスク"]:
        assert shown in rows
    assert [t.name for t in report] == names  # the data keeps the names as they are


def _columns(text: str) -> int:
    """Display width in a terminal: East Asian wide characters take two columns."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


async def test_report_columns_line_up_with_wide_characters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=1.0) as gs:
        for name in ["タスク", "task-one", "長い名前" * 30]:
            gs.spawn(_lands_at_once, name=name)
    report = gs.report
    assert report is not None
    lines = str(report).splitlines()[1:]
    # the "seconds" column ends at the same display column on every line
    ends = {_columns(line[: line.index(" 0.000") + len(" 0.000")]) for line in lines[1:]}
    assert len(ends) == 1
    assert _columns(lines[0][: lines[0].index("seconds") + len("seconds")]) in ends


async def test_report_text_shortens_a_huge_outcome(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def returns_a_lot(*, token: tc.CancellationToken) -> str:
        await token.wait_cancelled()
        return "z" * 100_000

    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.spawn(returns_a_lot, name="big")
    report = gs.report
    assert report is not None
    text = str(report)
    assert len(text) < 500
    assert "Completed(value='zzz" in text
    assert report.tasks[0].outcome == tc.Completed("z" * 100_000)


async def test_report_text_of_an_empty_shutdown_says_no_task_was_running() -> None:
    async def quick() -> None:
        await trio.lowlevel.checkpoint()

    async with tc.GracefulShutdown(grace=1.0) as gs:
        pass
    assert gs.report is not None
    assert str(gs.report) == "shutdown 'shutdown': no task was running"

    async with tc.GracefulShutdown(grace=1.0) as gs:
        await gs.spawn(quick).join()
        await gs.spawn(quick).join()
        gs.trigger("deploy")
    assert gs.report is not None
    assert str(gs.report) == (
        "shutdown 'deploy': no task was running (2 had ended before the trigger: 2 completed)"
    )


async def test_overlapping_shutdowns_each_get_every_signal_whatever_the_order_of_exits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two independent subsystems, each with its GracefulShutdown and its signal handlers,
    # whose blocks overlap without nesting: the first one opened ends first.
    with ProgramHandler(signal.SIGUSR1) as program:
        a_open, b_open, a_done = trio.Event(), trio.Event(), trio.Event()
        shutdowns: dict[str, tc.GracefulShutdown] = {}
        rude: list[tc.TaskHandle[None]] = []

        async def a() -> None:
            async with tc.GracefulShutdown(grace=100.0) as gs:
                shutdowns["a"] = gs
                gs.install_signal_handlers(signal.SIGUSR1)
                gs.spawn(cooperative, 1.0, name="a")
                a_open.set()
                await gs.token.wait_cancelled()
            a_done.set()

        async def b() -> None:
            async with tc.GracefulShutdown(grace=100.0) as gs:
                shutdowns["b"] = gs
                gs.install_signal_handlers(signal.SIGUSR1)
                rude.append(gs.spawn(stubborn, name="b"))
                b_open.set()
                await gs.token.wait_cancelled()

        # (A bound in virtual time: a shutdown that never got its signal would wait forever.)
        with trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a)
                await a_open.wait()
                nursery.start_soon(b)
                await b_open.wait()
                signal.raise_signal(signal.SIGUSR1)  # one signal: both trigger (fan-out)
                await a_done.wait()
                assert shutdowns["a"].token.reason == "signal SIGUSR1"
                assert shutdowns["b"].token.reason == "signal SIGUSR1"
                assert signal.getsignal(signal.SIGUSR1) is not program  # b's exit has not come
                signal.raise_signal(signal.SIGUSR1)  # a second one, after a's exit: b forces
        assert rude[0].outcome == tc.Aborted("signal SIGUSR1: forced by a second signal (SIGUSR1)")
        assert shutdowns["b"].report is not None
        assert shutdowns["b"].report.phases["phase_two"] == 1.0
        assert program.calls == 0  # no signal went to the program while a shutdown was open
        assert signal.getsignal(signal.SIGUSR1) is program  # back after the last exit


async def test_nested_shutdowns_each_get_every_signal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with ProgramHandler(signal.SIGUSR1) as program:
        async with tc.GracefulShutdown(grace=100.0) as outer:
            outer.install_signal_handlers(signal.SIGUSR1)
            async with tc.GracefulShutdown(grace=100.0) as inner:
                inner.install_signal_handlers(signal.SIGUSR1)
                signal.raise_signal(signal.SIGUSR1)
                await inner.token.wait_cancelled()
            with trio.fail_after(1000):  # virtual time: a missed signal would wait forever
                await outer.token.wait_cancelled()  # the outer one had it too
            assert outer.token.reason == "signal SIGUSR1"
            assert signal.getsignal(signal.SIGUSR1) is not program
        assert program.calls == 0
        assert signal.getsignal(signal.SIGUSR1) is program


async def test_the_first_signal_after_trigger_does_not_force_a_second_one_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=100.0) as gs:
        gs.install_signal_handlers(signal.SIGUSR1)
        polite = gs.spawn(cooperative, 2.0, name="polite")
        rude = gs.spawn(stubborn, name="rude")
        await trio.sleep(1)
        gs.trigger("deploy")  # the program's own trigger
        signal.raise_signal(signal.SIGUSR1)  # the first signal: a trigger, already done
        await trio.sleep(3)
        assert not gs.forcing
        assert polite.outcome == tc.Completed("landed after 2.0")  # its grace period stood
        signal.raise_signal(signal.SIGUSR1)  # the second one forces
        report = await gs.wait()
    assert report.reason == "deploy"
    assert rude.outcome == tc.Aborted("deploy: forced by a second signal (SIGUSR1)")
    assert report.phases["phase_two"] == 3.0


async def test_the_first_signal_during_the_exits_landing_does_not_force(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def signalled_while_landing(*, token: tc.CancellationToken) -> str:
        await token.wait_cancelled()  # the exit's implicit trigger
        signal.raise_signal(signal.SIGUSR1)  # an orchestrator's first signal, now
        await trio.sleep(1)
        return "landed"

    async with tc.GracefulShutdown(grace=100.0) as gs:
        gs.install_signal_handlers(signal.SIGUSR1)
        task = gs.spawn(signalled_while_landing)
    assert task.outcome == tc.Completed("landed")
    assert gs.report is not None
    assert gs.report.reason == "shutdown"
    assert gs.report.forced == ()
    assert gs.report.phases["phase_two"] is None


class _ProgramExit(Exception):
    pass


def _exiting_handler(signum: int, frame: object) -> None:
    raise _ProgramExit(f"the program's handler for signal {signum}")


def test_a_signal_caught_at_the_end_is_raised_again_from_the_exit_for_a_raising_handler() -> None:
    """A signal whose handler ran just before the block ended (not received) is raised again
    for the program's handler from the exit itself: what that handler raises comes out of
    the ``with`` statement, not out of Trio's callback queue (a TrioInternalError)."""
    from trio_cancel._shutdown import open_signal_batches

    async def main() -> None:
        with open_signal_batches([signal.SIGUSR1]):
            signal.raise_signal(signal.SIGUSR1)  # caught: the handler ran, nothing received
        raise AssertionError("not reached")  # pragma: no cover

    saved = signal.signal(signal.SIGUSR1, _exiting_handler)
    try:
        with pytest.raises(_ProgramExit, match=f"signal {int(signal.SIGUSR1)}$"):
            trio.run(main)
    finally:
        signal.signal(signal.SIGUSR1, saved)


async def test_a_signal_another_receiver_still_holds_is_not_raised_again() -> None:
    from trio_cancel._shutdown import open_signal_batches

    with ProgramHandler(signal.SIGUSR1) as program:
        with open_signal_batches([signal.SIGUSR1]) as outer:
            with open_signal_batches([signal.SIGUSR1]):
                signal.raise_signal(signal.SIGUSR1)  # both caught it; the inner one leaves
            assert await outer.receive() == [signal.SIGUSR1]  # once: not raised again
            with trio.move_on_after(0.05):  # a short real wait: nothing more may come
                await outer.receive()
                raise AssertionError("the signal came twice")  # pragma: no cover
        assert program.calls == 0


async def test_the_trigger_phase_is_exactly_zero_under_the_real_clock() -> None:
    async with tc.GracefulShutdown(grace=1.0) as gs:
        gs.trigger()
        report = await gs.wait()
    assert report.phases["trigger"] == 0.0
