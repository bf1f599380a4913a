"""Tests of the pytest plugin: the cancel_sweep fixture and the trio_cancel_leaks fixture."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

INI = """
[pytest]
trio_mode = true
"""


def test_cancel_sweep_fixture_reports_points(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import trio

        async def test_one(cancel_sweep):
            async def op():
                await trio.lowlevel.checkpoint()
                await trio.lowlevel.checkpoint()
            result = await cancel_sweep(op)
            assert result.points == 2

        async def test_two(cancel_sweep):
            async def op():
                await trio.sleep(0)
            await cancel_sweep(op)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["trio_cancel: 3 cancellation points checked in 2 sweeps"])


def test_cancel_sweep_summary_says_1_sweep_not_1_sweeps(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import trio

        async def test_one(cancel_sweep):
            async def op():
                await trio.lowlevel.checkpoint()
            await cancel_sweep(op)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["trio_cancel: 1 cancellation point checked in 1 sweep"])


def test_cancel_sweep_fixture_failure_names_point(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import trio

        async def test_buggy(cancel_sweep):
            box = []
            async def op():
                box.clear()
                item = "x"
                await trio.sleep(0)
                box.append(item)
            async def check():
                assert box == ["x"] or box == [], box
                await trio.lowlevel.checkpoint()
            # this op is safe: box is either empty or complete
            await cancel_sweep(op, check=check)

        async def test_really_buggy(cancel_sweep):
            state = {"taken": 0, "stored": 0}
            async def op():
                state["taken"] = 1
                state["stored"] = 0
                await trio.sleep(0)
                state["stored"] = 1
            async def check():
                await trio.lowlevel.checkpoint()
                assert state["taken"] == state["stored"], state
            await cancel_sweep(op, check=check)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*CancelSafetyError: check() failed at checkpoint 1 of 1*"])


def test_leaks_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import trio
        import trio_cancel as tc

        async def test_clean(trio_cancel_leaks):
            send, recv = tc.open_oneshot_channel()
            with send, recv:
                send.send(1)
            token = tc.CancellationToken()
            with token.on_cancel(print):
                pass
            async with trio.open_nursery() as nursery:
                tc.spawn(nursery, trio.sleep, 0)

        async def test_unclosed_endpoint(trio_cancel_leaks):
            send, recv = tc.open_broadcast_channel(1)
            send.close()

        async def test_pending_callback(trio_cancel_leaks):
            tc.CancellationToken().child_token().on_cancel(print)

        import pytest

        @pytest.fixture
        async def background():
            async with trio.open_nursery() as nursery:
                yield nursery
                nursery.cancel_scope.cancel()

        async def test_task_left_running(trio_cancel_leaks, background):
            tc.spawn(background, trio.sleep_forever, name="forgotten")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "*<BroadcastReceiver 0 unread> was never closed*",
            "*<Registration pending <built-in function print>> still registered*",
            "*task 'forgotten' still running*",
        ]
    )


def test_leaks_fixture_reports_only_what_the_test_left(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import pytest
        import trio
        import trio_cancel as tc

        @pytest.fixture
        async def service(trio_cancel_leaks):
            # set up after the leak fixture (it depends on it): its task starts while the
            # fixture watches, and runs until after the test
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever, name="service task")
                yield nursery
                nursery.cancel_scope.cancel()

        async def test_cancel_after_timer_is_not_a_leak(trio_cancel_leaks):
            token = tc.CancellationToken()
            token.cancel_after(10)
            token.cancel()

        async def test_cancel_after_pending_timer_is_not_a_leak(trio_cancel_leaks):
            tc.CancellationToken().cancel_after(3600)

        async def test_other_fixtures_task_is_not_a_leak(service, trio_cancel_leaks):
            await trio.sleep(0)

        async def test_other_fixtures_task_is_not_a_leak_either_order(trio_cancel_leaks, service):
            await trio.sleep(0)

        async def test_task_the_test_started_in_a_fixtures_nursery_is(trio_cancel_leaks, service):
            service.start_soon(trio.sleep_forever, name="forgotten")

        async def test_grandchild_task_is_reported(trio_cancel_leaks, service):
            async def parent():
                service.start_soon(trio.sleep_forever, name="grandchild")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(parent)

        async def test_thread_is_not_a_leak(trio_cancel_leaks):
            await trio.to_thread.run_sync(lambda: None)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=5, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*task 'forgotten' still running*",
            "*task 'grandchild' still running*",
        ]
    )
    result.stdout.no_fnmatch_line("*service task*")
    result.stdout.no_fnmatch_line("*cancel_after timers*")
