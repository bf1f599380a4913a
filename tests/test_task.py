"""Tests of spawn, TaskHandle, AbortHandle and outcomes (API.md: Tasks, Precise points)."""

from __future__ import annotations

import functools
import gc
import logging
import weakref
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import Callable


async def _returns(value: int, delay: float = 0) -> int:
    await trio.sleep(delay)
    return value


async def _fails(delay: float = 0) -> None:
    await trio.sleep(delay)
    raise ValueError("task failed")


# ---------------------------------------------------------------- completed / failed


async def test_spawn_completed_value(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, _returns, 7)
    assert not handle.is_finished()
    assert handle.outcome is None
    assert await handle.join() == tc.Completed(7)
    assert handle.is_finished()
    assert handle.outcome == tc.Completed(7)


async def test_spawn_name_default_and_given(nursery: trio.Nursery) -> None:
    seen: list[str] = []

    async def record() -> None:
        seen.append(trio.lowlevel.current_task().name)
        await trio.lowlevel.checkpoint()

    assert tc.spawn(nursery, _returns, 1).name == "_returns"
    handle = tc.spawn(nursery, record, name="worker-7")
    assert handle.name == "worker-7"
    await handle.join()
    assert seen == ["worker-7"]


async def test_spawn_failed_does_not_cancel_nursery(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        sibling = tc.spawn(nursery, _returns, 1, 5)
        failing = tc.spawn(nursery, _fails, 1)
        outcome = await failing.join()
        assert isinstance(outcome, tc.Failed)
        assert isinstance(outcome.error, ValueError)
        assert str(outcome.error) == "task failed"
    assert sibling.outcome == tc.Completed(1)
    assert not nursery.cancel_scope.cancel_called


async def test_spawn_exception_group_is_failed(nursery: trio.Nursery) -> None:
    async def raise_at_once() -> None:  # noqa: ASYNC910 - no checkpoint on purpose
        raise ValueError("task failed")

    async def inner_group() -> None:
        async with trio.open_nursery() as inner:
            inner.start_soon(raise_at_once)
            inner.start_soon(raise_at_once)

    outcome = await tc.spawn(nursery, inner_group).join()
    assert isinstance(outcome, tc.Failed)
    assert isinstance(outcome.error, ExceptionGroup)
    assert len(outcome.error.exceptions) == 2


async def test_spawn_keyboard_interrupt_recorded_and_propagates() -> None:
    handles: list[tc.TaskHandle[None]] = []

    async def interrupt() -> None:
        await trio.lowlevel.checkpoint()
        raise KeyboardInterrupt

    with pytest.RaisesGroup(KeyboardInterrupt):
        async with trio.open_nursery() as nursery:
            handles.append(tc.spawn(nursery, interrupt))
    outcome = handles[0].outcome
    assert isinstance(outcome, tc.Failed)
    assert isinstance(outcome.error, KeyboardInterrupt)


# ---------------------------------------------------------------- abort


async def test_abort_before_first_run_never_runs(nursery: trio.Nursery) -> None:
    ran: list[bool] = []

    async def body() -> None:
        ran.append(True)  # pragma: no cover
        await trio.lowlevel.checkpoint()  # pragma: no cover

    handle = tc.spawn(nursery, body)
    handle.abort("changed my mind")
    assert await handle.join() == tc.Aborted("changed my mind")
    assert ran == []


async def test_abort_while_running_unwinds_finally(autojump_clock: trio.testing.MockClock) -> None:
    steps: list[str] = []

    async def body() -> int:
        try:
            await trio.sleep(10)
            return 1  # pragma: no cover
        finally:
            steps.append("finally")

    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, body)
        await trio.sleep(1)
        handle.abort("stop")
        assert await handle.join() == tc.Aborted("stop")
    assert steps == ["finally"]
    assert trio.current_time() == 1


async def test_abort_without_reason_is_aborted_none(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, trio.sleep_forever)
    await trio.testing.wait_all_tasks_blocked()
    handle.abort()
    assert await handle.join() == tc.Aborted(None)


async def test_abort_is_idempotent_first_reason_stays(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, trio.sleep_forever)
    handle.abort("first")
    handle.abort("second")
    assert await handle.join() == tc.Aborted("first")


async def test_abort_after_finish_has_no_effect(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, _returns, 3)
    await handle.join()
    handle.abort("too late")
    assert handle.outcome == tc.Completed(3)


async def test_abort_rejects_non_str_reason(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, _returns, 3)
    with pytest.raises(TypeError, match="reason"):
        handle.abort(3)  # type: ignore[arg-type]
    assert await handle.join() == tc.Completed(3)


async def test_abort_during_shielded_cleanup_cleanup_finishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    steps: list[str] = []
    in_cleanup = trio.Event()

    async def body() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.move_on_after(5, shield=True):
                in_cleanup.set()
                await trio.sleep(2)
                steps.append("cleanup done")

    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, body)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel("outer")  # gets the task into its cleanup
        await in_cleanup.wait()
        handle.abort("during cleanup")
    assert steps == ["cleanup done"]
    assert handle.outcome == tc.Aborted("outer")


async def test_abort_while_in_shielded_section_outcome_aborted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    steps: list[str] = []

    async def body() -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(2)
            steps.append("shielded part done")
        await trio.sleep(10)
        steps.append("not reached")  # pragma: no cover

    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, body)
        await trio.sleep(1)
        handle.abort("mid-shield")
        assert await handle.join() == tc.Aborted("mid-shield")
    assert steps == ["shielded part done"]
    assert trio.current_time() == 2


async def test_task_catching_its_cancellation_and_returning_is_completed(
    nursery: trio.Nursery,
) -> None:
    async def stubborn() -> str:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:  # noqa: ASYNC103 - the behaviour under test
            return "returned anyway"  # noqa: ASYNC104 - the behaviour under test

    handle = tc.spawn(nursery, stubborn)
    await trio.testing.wait_all_tasks_blocked()
    handle.abort("stop")
    assert await handle.join() == tc.Completed("returned anyway")


async def test_task_failing_while_aborted_is_failed_error_kept(nursery: trio.Nursery) -> None:
    async def fails_in_cleanup() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise RuntimeError("cleanup broke")

    handle = tc.spawn(nursery, fails_in_cleanup)
    await trio.testing.wait_all_tasks_blocked()
    handle.abort("stop")
    outcome = await handle.join()
    assert isinstance(outcome, tc.Failed)
    assert isinstance(outcome.error, RuntimeError)
    assert isinstance(outcome.error.__context__, trio.Cancelled)
    assert not nursery.cancel_scope.cancel_called


async def test_outside_cancellation_recorded_and_propagates() -> None:
    handles: list[tc.TaskHandle[None]] = []
    async with trio.open_nursery() as nursery:
        handles.append(tc.spawn(nursery, trio.sleep_forever))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel("from outside")
    assert nursery.cancel_scope.cancelled_caught  # the Cancelled reached the nursery's scope
    assert handles[0].outcome == tc.Aborted("from outside")


async def test_outside_cancellation_before_first_run() -> None:
    handles: list[tc.TaskHandle[int]] = []
    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:
            outer.cancel("early outside")
            handles.append(tc.spawn(nursery, _returns, 1, 1))
    assert outer.cancelled_caught
    assert handles[0].outcome == tc.Aborted("early outside")


# ---------------------------------------------------------------- join


async def test_join_cancelled_task_keeps_running(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, _returns, 5, 3)
        with trio.move_on_after(1) as waited:
            await handle.join()
        assert waited.cancelled_caught
        assert not handle.is_finished()
        assert await handle.join() == tc.Completed(5)
    assert trio.current_time() == 3


async def test_join_is_checkpoint_when_finished(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, _returns, 1)
    await handle.join()
    with trio.testing.assert_checkpoints():
        await handle.join()


async def test_join_cancelled_before_call_consumes_nothing(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, _returns, 2)
    await handle.join()
    with trio.CancelScope() as cs:
        cs.cancel()
        await handle.join()
    assert cs.cancelled_caught
    assert await handle.join() == tc.Completed(2)


async def test_join_many_waiters(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, _returns, 9, 1)
    got: list[tc.Outcome[int]] = []

    async def waiter() -> None:
        got.append(await handle.join())

    async with trio.open_nursery() as waiters:
        for _ in range(3):
            waiters.start_soon(waiter)
    assert got == [tc.Completed(9)] * 3


# ---------------------------------------------------------------- tokens


async def test_spawn_with_token_aborts_with_token_reason(nursery: trio.Nursery) -> None:
    token = tc.CancellationToken()
    handle = tc.spawn(nursery, trio.sleep_forever, token=token)
    await trio.testing.wait_all_tasks_blocked()
    token.cancel("token fired")
    assert await handle.join() == tc.Aborted("token fired")
    assert handle.token is token
    assert repr(token) == "<CancellationToken cancelled 'token fired'>"


async def test_spawn_with_cancelled_token_never_runs(nursery: trio.Nursery) -> None:
    token = tc.CancellationToken()
    token.cancel("already")
    ran: list[bool] = []

    async def body() -> None:
        ran.append(True)  # pragma: no cover
        await trio.lowlevel.checkpoint()  # pragma: no cover

    assert await tc.spawn(nursery, body, token=token).join() == tc.Aborted("already")
    assert ran == []


async def test_abort_then_token_first_reason_wins(nursery: trio.Nursery) -> None:
    token = tc.CancellationToken()
    a = tc.spawn(nursery, trio.sleep_forever, token=token.child_token())
    b = tc.spawn(nursery, trio.sleep_forever, token=token)
    await trio.testing.wait_all_tasks_blocked()
    a.abort("abort first")
    token.cancel("token second")
    b.abort("abort second")
    assert await a.join() == tc.Aborted("abort first")
    assert await b.join() == tc.Aborted("token second")


async def test_finished_task_unregisters_from_token(nursery: trio.Nursery) -> None:
    token = tc.CancellationToken()
    await tc.spawn(nursery, _returns, 1, token=token).join()
    assert repr(token) == "<CancellationToken live>"


# ---------------------------------------------------------------- handles, gc, reporting


async def test_abort_handle(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, trio.sleep_forever)
    ah = handle.abort_handle()
    assert not ah.is_finished()
    ah.abort("via abort handle")
    assert await handle.join() == tc.Aborted("via abort handle")
    assert ah.is_finished()
    assert "finished" in repr(ah)


async def test_dropped_handle_never_cancels_task(autojump_clock: trio.testing.MockClock) -> None:
    done: list[str] = []

    async def body() -> None:
        await trio.sleep(1)
        done.append("Task completed")

    async with trio.open_nursery() as nursery:
        tc.spawn(nursery, body)  # handle dropped at once
        gc.collect()
    assert done == ["Task completed"]


async def test_unretrieved_failure_logged_when_handle_discarded(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    handle = tc.spawn(nursery, _fails, name="lost-failure")
    await trio.testing.wait_all_tasks_blocked()
    assert handle.is_finished()
    with caplog.at_level(logging.ERROR, logger="trio_cancel"):
        del handle
        gc.collect()
    assert "'lost-failure' failed and its outcome was never retrieved" in caplog.text
    assert "ValueError: task failed" in caplog.text


async def test_retrieved_failure_not_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    handle = tc.spawn(nursery, _fails)
    await handle.join()
    with caplog.at_level(logging.ERROR, logger="trio_cancel"):
        del handle
        gc.collect()
    assert caplog.text == ""


async def test_spawn_rejects_bad_arguments(nursery: trio.Nursery) -> None:
    with pytest.raises(TypeError, match=r"trio\.Nursery"):
        tc.spawn("nursery", _returns, 1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="async function"):
        tc.spawn(nursery, 3, 1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="CancellationToken"):
        tc.spawn(nursery, _returns, 1, token="t")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="name"):
        tc.spawn(nursery, _returns, 1, name=5)  # type: ignore[call-overload]


async def test_spawn_into_closed_nursery_leaves_token_clean() -> None:
    token = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        tc.spawn(nursery, _returns, 1, token=token)
    assert repr(token) == "<CancellationToken live>"


async def test_handles_not_constructible() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        tc.TaskHandle(_returns, (), "x", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no public constructor"):
        tc.AbortHandle(None)  # type: ignore[arg-type]


async def test_handle_repr_states(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, trio.sleep_forever, name="w")
    assert repr(handle) == "<TaskHandle 'w' pending>"
    await trio.testing.wait_all_tasks_blocked()
    assert repr(handle) == "<TaskHandle 'w' running>"
    handle.abort("x")
    assert repr(handle) == "<TaskHandle 'w' aborting>"
    await handle.join()
    assert repr(handle) == "<TaskHandle 'w' finished Aborted(reason='x')>"


# ---------------------------------------------------------------- outcome values


def test_outcomes_are_frozen_values_usable_in_match() -> None:
    err = ValueError("e")
    assert tc.Completed(1) == tc.Completed(1)
    assert tc.Failed(err) == tc.Failed(err)
    assert tc.Aborted("r") == tc.Aborted("r")
    assert tc.Aborted("r") != tc.Aborted(None)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        tc.Completed(1).value = 2  # type: ignore[misc]

    def describe(outcome: tc.Outcome[int]) -> str:
        match outcome:
            case tc.Completed(value):
                return f"value {value}"
            case tc.Failed(error):
                return f"error {error}"
            case tc.Aborted(reason):
                return f"aborted {reason}"

    assert describe(tc.Completed(3)) == "value 3"
    assert describe(tc.Failed(err)) == "error e"
    assert describe(tc.Aborted("why")) == "aborted why"


# ---------------------------------------------------------------- reliability regressions


async def test_spawn_rejects_sync_function_at_the_call(nursery: trio.Nursery) -> None:
    def compute() -> int:
        return 42

    with pytest.raises(TypeError, match="synchronous"):
        tc.spawn(nursery, compute)  # type: ignore[arg-type, call-arg]
    async with tc.JoinSet() as js:
        with pytest.raises(TypeError, match=r"JoinSet\.spawn\(\)"):
            js.spawn(compute)  # type: ignore[arg-type, call-arg]
        assert len(js) == 0
    async with tc.GracefulShutdown(1.0) as gs:
        with pytest.raises(TypeError, match=r"GracefulShutdown\.spawn\(\)"):
            gs.spawn(compute)  # type: ignore[arg-type, call-arg]
    assert gs.report is not None
    assert len(gs.report) == 0


async def test_aborted_before_start_never_runs_and_warns_nothing(nursery: trio.Nursery) -> None:
    ran: list[int] = []

    async def body() -> None:
        ran.append(1)

    handle = tc.spawn(nursery, body)
    handle.abort("early")
    assert await handle.join() == tc.Aborted("early")
    assert ran == []  # the coroutine was closed unstarted: no "never awaited" warning either


async def test_failed_handle_is_freed_without_the_cycle_collector(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("boom")

    gc.collect()
    gc.disable()
    try:
        handle = tc.spawn(nursery, broken)
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(handle.outcome, tc.Failed)
        handle._retrieved = False  # reading .outcome above retrieved it; pretend nobody did
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="trio_cancel"):
            del handle  # the last reference: freed at once, logged at once
            assert "never retrieved" in caplog.text
    finally:
        gc.enable()


async def test_handle_ids_are_unique_ints(nursery: trio.Nursery) -> None:
    handles = [tc.spawn(nursery, trio.lowlevel.checkpoint) for _ in range(3)]
    ids = [h.id for h in handles]
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == 3


async def test_abort_from_another_thread_changes_nothing(nursery: trio.Nursery) -> None:
    handle = tc.spawn(nursery, trio.sleep_forever)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(RuntimeError, match="Trio thread"):
        await trio.to_thread.run_sync(handle.abort, "from a thread")
    assert not handle.is_finished()
    handle.abort("here")
    assert await handle.join() == tc.Aborted("here")


# ---------------------------------------------------------------- the one rule for `token`


async def test_spawn_passes_its_token_to_a_function_that_takes_one(nursery: trio.Nursery) -> None:
    seen: list[object] = []

    async def keyword_only(*, token: tc.CancellationToken) -> None:
        seen.append(token)

    async def optional(token: tc.CancellationToken | None = None) -> None:
        seen.append(token)

    async def any_keywords(**kwargs: object) -> None:
        seen.append(kwargs.get("token"))

    async def no_token() -> None:
        seen.append("no token")

    t = tc.CancellationToken()
    for fn in (keyword_only, optional, any_keywords, no_token):
        handle = tc.spawn(nursery, fn, token=t)
        assert await handle.join() == tc.Completed(None)
    assert seen == [t, t, None, "no token"]  # **kwargs gets nothing (tests/test_token_rule.py)


async def test_spawn_without_a_token_for_a_function_that_requires_one_fails_at_the_call(
    nursery: trio.Nursery,
) -> None:
    async def worker(*, token: tc.CancellationToken) -> None:
        pass  # pragma: no cover

    with pytest.raises(TypeError, match=r"requires a keyword argument 'token'.*token="):
        tc.spawn(nursery, worker)  # type: ignore[call-arg, arg-type]
    await trio.testing.wait_all_tasks_blocked()
    assert nursery.child_tasks == set()  # nothing was scheduled


async def test_spawn_keeps_a_token_given_positionally(nursery: trio.Nursery) -> None:
    seen: list[object] = []

    async def worker(token: tc.CancellationToken) -> None:
        seen.append(token)

    t, other = tc.CancellationToken(), tc.CancellationToken()
    assert await tc.spawn(nursery, worker, t).join() == tc.Completed(None)
    assert await tc.spawn(nursery, worker, t, token=other).join() == tc.Completed(None)
    assert seen == [t, t]  # the positional one; token= then only binds the scope


async def test_joinset_and_graceful_shutdown_follow_the_same_rule() -> None:
    seen: list[tc.CancellationToken] = []

    async def worker(*, token: tc.CancellationToken) -> None:
        seen.append(token)

    t = tc.CancellationToken()
    async with tc.JoinSet() as js:
        assert await js.spawn(worker, token=t).join() == tc.Completed(None)
        with pytest.raises(TypeError, match=r"JoinSet\.spawn"):
            js.spawn(worker)  # type: ignore[call-arg, arg-type]
    async with tc.GracefulShutdown(grace=1) as gs:
        gs.spawn(worker)
    assert seen[0] is t
    assert seen[1] is not gs.token
    assert seen[1].is_cancelled()  # a child of the shutdown's token, cancelled by the trigger


async def test_spawning_bound_methods_keeps_no_instance_alive(nursery: trio.Nursery) -> None:
    """The token rule reads each function's signature; it caches plain functions only, so a
    server spawning a method of each request object does not keep the requests alive."""

    class Request:
        async def handle(self, *, token: tc.CancellationToken) -> None:
            await trio.lowlevel.checkpoint()

    refs = []
    t = tc.CancellationToken()
    for _ in range(600):
        request = Request()
        refs.append(weakref.ref(request))
        await tc.spawn(nursery, request.handle, token=t).join()
        del request
    gc.collect()
    assert sum(ref() is not None for ref in refs) == 0


# ---------------------------------------------------------------- aborted while inner nursery fails


async def _inner_nursery_whose_child_fails_when_cancelled() -> None:
    """A task body whose own nursery has a child that raises while it is being cancelled."""

    async def child() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("cleanup failed")

    async with trio.open_nursery() as inner:
        inner.start_soon(child)
        await trio.sleep_forever()


async def _sibling(delay: float, log: list[str]) -> str:
    try:
        await trio.sleep(delay)
    except trio.Cancelled:
        log.append("sibling cancelled")
        raise
    log.append("sibling finished")
    return "sibling finished"


def _is_group_of_the_cleanup_error(outcome: tc.Outcome[object] | None) -> bool:
    """``Failed(ExceptionGroup([ValueError("cleanup failed")]))``, as Trio's scope left it."""
    if not isinstance(outcome, tc.Failed) or not isinstance(outcome.error, ExceptionGroup):
        return False
    return pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="cleanup failed")).matches(
        outcome.error
    )


@pytest.mark.parametrize("kind", ["tc.spawn", "JoinSet.spawn", "GracefulShutdown.spawn"])
async def test_abort_while_inner_nursery_fails_records_the_group_and_spares_siblings(
    kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    log: list[str] = []
    handles: list[tc.TaskHandle[Any]] = []

    async def scenario(
        spawn: Callable[..., tc.TaskHandle[Any]],
    ) -> None:
        handles.append(spawn(_inner_nursery_whose_child_fails_when_cancelled))
        handles.append(spawn(_sibling, 10, log))
        await trio.sleep(1)
        handles[0].abort("stop")
        assert _is_group_of_the_cleanup_error(await handles[0].join())
        assert await handles[1].join() == tc.Completed("sibling finished")

    if kind == "tc.spawn":
        async with trio.open_nursery() as nursery:
            await scenario(functools.partial(tc.spawn, nursery))
        assert not nursery.cancel_scope.cancel_called
    elif kind == "JoinSet.spawn":
        async with tc.JoinSet() as js:
            await scenario(js.spawn)
    else:
        async with tc.GracefulShutdown(grace=100) as gs:
            await scenario(gs.spawn)
    assert log == ["sibling finished"]
    assert trio.current_time() == 10
    assert _is_group_of_the_cleanup_error(handles[0].outcome)


async def test_token_cancel_while_inner_nursery_fails_records_the_group(
    nursery: trio.Nursery,
) -> None:
    token = tc.CancellationToken()
    handle = tc.spawn(nursery, _inner_nursery_whose_child_fails_when_cancelled, token=token)
    await trio.testing.wait_all_tasks_blocked()
    token.cancel("token fired")
    assert _is_group_of_the_cleanup_error(await handle.join())
    assert not nursery.cancel_scope.cancel_called


async def test_outside_cancellation_while_inner_nursery_fails_propagates_only_itself() -> None:
    """Trio's rule stays: a cancellation from outside the task's scope is not the task's to
    absorb, so it propagates; the task's own error, which came out beside it in one group, is
    the task's outcome like any other ``Exception`` (it does not reach the nursery)."""
    handles: list[tc.TaskHandle[None]] = []
    gc.collect()
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            handles.append(tc.spawn(nursery, _inner_nursery_whose_child_fails_when_cancelled))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel("from outside")
        assert nursery.cancel_scope.cancelled_caught  # the cancellation reached its scope
        assert _is_group_of_the_cleanup_error(handles[0].outcome)
        ref = weakref.ref(handles.pop())
        assert ref() is None  # freed without the collector
    finally:
        gc.enable()


async def test_keyboard_interrupt_while_aborted_inner_nursery_unwinds_propagates() -> None:
    async def child() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise KeyboardInterrupt

    async def body() -> None:
        async with trio.open_nursery() as inner:
            inner.start_soon(child)
            await trio.sleep_forever()

    handles: list[tc.TaskHandle[None]] = []
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            handles.append(tc.spawn(nursery, body))
            await trio.testing.wait_all_tasks_blocked()
            handles[0].abort("stop")
    assert info.group_contains(KeyboardInterrupt, depth=None)
    outcome = handles[0].outcome
    assert isinstance(outcome, tc.Failed)
    assert isinstance(outcome.error, BaseExceptionGroup)
    assert outcome.error.subgroup(KeyboardInterrupt) is not None


async def test_handle_failed_by_an_inner_group_is_freed_without_the_cycle_collector(
    nursery: trio.Nursery,
) -> None:
    gc.collect()
    gc.disable()
    try:
        handle = tc.spawn(nursery, _inner_nursery_whose_child_fails_when_cancelled)
        await trio.testing.wait_all_tasks_blocked()
        handle.abort("stop")
        assert _is_group_of_the_cleanup_error(await handle.join())
        ref = weakref.ref(handle)
        del handle
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("ending", ["returns", "aborted", "raises"])
async def test_finished_handle_keeps_no_cancel_scope(ending: str) -> None:
    """A kept handle of a finished task holds its outcome, not its task's exited scope (one
    object fewer per handle for memory and for the collector); it still behaves as finished:
    abort() does nothing, repr and is_finished say so."""

    async def body() -> int:
        if ending == "raises":
            raise ValueError("boom")
        await trio.sleep(3600)
        return 1  # pragma: no cover

    async def quick() -> int:
        await trio.lowlevel.checkpoint()
        return 1

    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, quick if ending == "returns" else body)
        scope = weakref.ref(handle._scope)
        await trio.testing.wait_all_tasks_blocked()
        if ending == "aborted":
            handle.abort("stop")
    outcome = await handle.join()
    gc.collect()
    assert scope() is None
    handle.abort("again")  # no effect once finished
    assert handle.is_finished()
    assert "finished" in repr(handle)
    assert (await handle.join()) is outcome
    expected = {"returns": tc.Completed, "aborted": tc.Aborted, "raises": tc.Failed}[ending]
    assert type(outcome) is expected
