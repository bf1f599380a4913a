"""Tests of JoinSet and current_task_tree."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


async def _after(delay: float, value: int) -> int:
    await trio.sleep(delay)
    return value


async def _fail_after(delay: float) -> None:
    await trio.sleep(delay)
    raise ValueError(f"failed after {delay}")


async def test_join_next_in_finishing_order(autojump_clock: trio.testing.MockClock) -> None:
    async with tc.JoinSet() as js:
        for delay, value in [(3, 30), (1, 10), (2, 20)]:
            js.spawn(_after, delay, value)
        assert len(js) == 3
        got = [await js.join_next() for _ in range(3)]
        assert got == [tc.Completed(10), tc.Completed(20), tc.Completed(30)]
        assert len(js) == 0
        assert await js.join_next() is None


async def test_join_next_on_empty_set_is_none_and_checkpoint() -> None:
    async with tc.JoinSet() as js:
        with trio.testing.assert_checkpoints():
            assert await js.join_next() is None


async def test_join_next_ready_outcome_is_checkpoint(nursery: trio.Nursery) -> None:
    async with tc.JoinSet() as js:
        js.spawn(_after, 0, 1)
        await trio.testing.wait_all_tasks_blocked()
        with trio.testing.assert_checkpoints():
            assert await js.join_next() == tc.Completed(1)


async def test_async_for_yields_every_outcome(autojump_clock: trio.testing.MockClock) -> None:
    async with tc.JoinSet() as js:
        js.spawn(_after, 2, 2)
        js.spawn(_fail_after, 1)
        outcomes = [o async for o in js]
    assert outcomes[1] == tc.Completed(2)
    assert isinstance(outcomes[0], tc.Failed)
    assert str(outcomes[0].error) == "failed after 1"


async def test_join_all_finishing_order_and_empties(autojump_clock: trio.testing.MockClock) -> None:
    async with tc.JoinSet() as js:
        for delay in (2, 1, 3):
            js.spawn(_after, delay, delay)
        assert await js.join_all() == [tc.Completed(1), tc.Completed(2), tc.Completed(3)]
        assert len(js) == 0
        assert await js.join_all() == []


async def test_join_next_cancelled_consumes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with tc.JoinSet() as js:
        js.spawn(_after, 5, 1)
        with trio.move_on_after(1) as waited:
            await js.join_next()
        assert waited.cancelled_caught
        assert len(js) == 1
        await trio.sleep(10)  # the task finishes while nobody waits
        with trio.CancelScope() as cs:
            cs.cancel()
            await js.join_next()  # cancelled before it could take the ready outcome
        assert cs.cancelled_caught
        assert len(js) == 1
        assert await js.join_next() == tc.Completed(1)


async def test_join_all_cancelled_consumes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    async with tc.JoinSet() as js:
        js.spawn(_after, 1, 1)
        js.spawn(_after, 5, 5)
        with trio.move_on_after(2):
            await js.join_all()
        assert len(js) == 2
        assert await js.join_all() == [tc.Completed(1), tc.Completed(5)]


async def test_concurrent_join_next_waiters(autojump_clock: trio.testing.MockClock) -> None:
    results: list[tc.Outcome[object] | None] = []
    async with tc.JoinSet() as js:
        js.spawn(_after, 1, 7)

        async def waiter() -> None:
            results.append(await js.join_next())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            nursery.start_soon(waiter)
    assert sorted(results, key=repr) == [tc.Completed(7), None]


async def test_abort_all_and_shutdown(autojump_clock: trio.testing.MockClock) -> None:
    async with tc.JoinSet() as js:
        for _ in range(3):
            js.spawn(trio.sleep_forever)
        js.spawn(_after, 0, 1)
        await trio.sleep(1)
        await js.shutdown("closing")  # the returned task's outcome is already in
        assert len(js) == 4
        outcomes = await js.join_all()
        assert len(js) == 0
    assert outcomes[0] == tc.Completed(1)
    assert outcomes[1:] == [tc.Aborted("closing")] * 3


async def test_shutdown_cancelled_while_waiting_tasks_still_wind_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow_cleanup() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.move_on_after(10, shield=True):
                await trio.sleep(3)

    async with tc.JoinSet() as js:
        js.spawn(slow_cleanup)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(1):
            await js.shutdown("stop")
        assert len(js) == 1
        assert await js.join_next() == tc.Aborted("stop")
    assert trio.current_time() == 3


async def test_exit_aborts_running_tasks_and_waits(autojump_clock: trio.testing.MockClock) -> None:
    steps: list[str] = []

    async def worker() -> None:
        try:
            await trio.sleep_forever()
        finally:
            steps.append("worker unwound")

    async with tc.JoinSet() as js:
        handle = js.spawn(worker)
        await trio.sleep(1)
    assert steps == ["worker unwound"]
    assert handle.outcome == tc.Aborted(None)


async def test_spawn_outside_async_with_is_runtime_error() -> None:
    js = tc.JoinSet()
    with pytest.raises(RuntimeError, match=r"inside its 'async with' \(this JoinSet is new\)"):
        js.spawn(_after, 0, 1)
    async with js:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        js.spawn(_after, 0, 1)
    with pytest.raises(RuntimeError, match="only once"):
        async with js:
            pass  # pragma: no cover


async def test_entering_is_a_checkpoint_and_cancelled_entry_opens_nothing() -> None:
    js = tc.JoinSet()
    with trio.CancelScope() as cs:
        cs.cancel()
        async with js:
            pytest.fail("the body must not run")  # pragma: no cover
    assert cs.cancelled_caught
    assert "new" in repr(js)
    with pytest.raises(RuntimeError, match="this JoinSet is new"):
        js.spawn(_after, 0, 1)
    async with js:  # a cancelled entry left it new: it can still be used once
        js.spawn(_after, 0, 1)
    with trio.testing.assert_checkpoints():
        async with tc.JoinSet():
            pass


async def test_body_exception_propagates_as_itself() -> None:
    with pytest.raises(KeyError, match="body"):
        async with tc.JoinSet() as js:
            js.spawn(trio.sleep_forever)
            await trio.testing.wait_all_tasks_blocked()
            raise KeyError("body")


async def test_task_exceptions_never_reach_the_nursery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.JoinSet() as js:
        js.spawn(_fail_after, 1)
        js.spawn(_after, 2, 2)
        outcomes = await js.join_all()
    assert isinstance(outcomes[0], tc.Failed)
    assert outcomes[1] == tc.Completed(2)


async def test_outside_cancellation_aborts_tasks_and_propagates() -> None:
    handles: list[tc.TaskHandle[object]] = []
    with trio.CancelScope() as outer:
        async with tc.JoinSet() as js:
            handles.append(js.spawn(trio.sleep_forever))
            await trio.testing.wait_all_tasks_blocked()
            outer.cancel("outside")
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert handles[0].outcome in (tc.Aborted("outside"), tc.Aborted(None))


async def test_task_keyboard_interrupt_propagates_from_exit() -> None:
    async def interrupt() -> None:
        await trio.lowlevel.checkpoint()
        raise KeyboardInterrupt

    handles: list[tc.TaskHandle[object]] = []
    with pytest.RaisesGroup(KeyboardInterrupt):
        async with tc.JoinSet() as js:
            handles.append(js.spawn(interrupt))
            await trio.sleep_forever()  # cancelled by the nursery when the task raises
    outcome = handles[0].outcome
    assert isinstance(outcome, tc.Failed)
    assert isinstance(outcome.error, KeyboardInterrupt)


async def test_task_keyboard_interrupt_with_body_error_both_propagate() -> None:
    async def interrupt_when_aborted() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise KeyboardInterrupt

    with pytest.RaisesGroup(KeyError, KeyboardInterrupt):
        async with tc.JoinSet() as js:
            js.spawn(interrupt_when_aborted)
            await trio.testing.wait_all_tasks_blocked()
            raise KeyError("body")


async def test_body_exception_keeps_its_context() -> None:
    with pytest.raises(KeyError) as info:
        async with tc.JoinSet() as js:
            js.spawn(trio.sleep_forever)
            try:
                raise ValueError("original")
            except ValueError:
                raise KeyError("body") from None
    assert isinstance(info.value.__context__, ValueError)
    assert info.value.__suppress_context__


async def test_body_cancelled_from_outside_unwrapped() -> None:
    with trio.CancelScope() as outer:
        try:
            async with tc.JoinSet() as js:
                js.spawn(trio.sleep_forever)
                await trio.testing.wait_all_tasks_blocked()
                outer.cancel()
                await trio.sleep_forever()
        except trio.Cancelled:
            raise
        except BaseExceptionGroup:  # pragma: no cover
            pytest.fail("a group escaped")
    assert outer.cancelled_caught


async def test_unretrieved_failure_logged_at_exit(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="trio_cancel"):
        async with tc.JoinSet() as js:
            js.spawn(_fail_after, 1, name="forgotten")
            js.spawn(_fail_after, 1, name="collected")
            first = await js.join_next()
            await trio.sleep(2)
    assert isinstance(first, tc.Failed)
    assert caplog.text.count("never retrieved") == 1
    assert "JoinSet closed: task" in caplog.text


async def test_joinset_repr_and_len() -> None:
    js = tc.JoinSet()
    assert repr(js) == "<JoinSet new, 0 running, 0 finished and not joined>"
    async with js:
        js.spawn(trio.sleep_forever)
        assert len(js) == 1
        assert repr(js) == "<JoinSet open, 1 running, 0 finished and not joined>"
    assert repr(js) == "<JoinSet closed, 0 running, 1 finished and not joined>"


async def test_joinset_spawn_with_token(nursery: trio.Nursery) -> None:
    token = tc.CancellationToken()
    async with tc.JoinSet() as js:
        js.spawn(trio.sleep_forever, token=token)
        await trio.testing.wait_all_tasks_blocked()
        token.cancel("token")
        assert await js.join_next() == tc.Aborted("token")


# ---------------------------------------------------------------- current_task_tree


async def test_current_task_tree_shows_tasks_handles_tokens_and_cancel_state() -> None:
    token = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        tc.spawn(nursery, trio.sleep_forever, name="bound", token=token.child_token())
        aborted = tc.spawn(nursery, trio.sleep_forever, name="aborted")
        nursery.start_soon(trio.sleep_forever, name="plain")
        await trio.testing.wait_all_tasks_blocked()
        aborted.abort("stop it")
        tree = tc.current_task_tree(trio.lowlevel.current_task())
        nursery.cancel_scope.cancel("done")
        after = tc.current_task_tree(trio.lowlevel.current_task())
    text = str(tree)
    assert "└─ nursery [open]" in text
    assert "task 'bound' handle: running token: <CancellationToken live, 1 scope>" in text
    assert "task 'aborted' [cancelled] handle: aborting" in text
    assert "task 'plain'" in text
    names = [n.name for n in tree.tasks()]
    assert names[1:] == ["aborted", "bound", "plain"]
    assert "nursery [cancelled ('done')]" in str(after)
    assert all(n.cancelled for n in after.tasks()[1:])


async def test_current_task_tree_whole_run_contains_this_task() -> None:
    me = trio.lowlevel.current_task().name
    assert me in {n.name for n in tc.current_task_tree().tasks()}


def test_current_task_tree_outside_run() -> None:
    with pytest.raises(RuntimeError):
        tc.current_task_tree()


async def test_abort_all_rejects_bad_reason_and_is_noop_when_empty() -> None:
    async with tc.JoinSet() as js:
        js.abort_all("nothing running")  # no task: nothing happens
        handle = js.spawn(trio.sleep_forever)
        with pytest.raises(TypeError, match="reason"):
            js.abort_all(3)  # type: ignore[arg-type]
        assert not handle.is_finished()
        js.abort_all("now")
        assert await js.join_next() == tc.Aborted("now")


async def test_cancelled_before_call_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.JoinSet() as js:
        handle = js.spawn(_after, 1, 1)
        for call in (js.shutdown, js.join_all, js.join_next):
            with trio.CancelScope() as cs:
                cs.cancel()
                await call()
            assert cs.cancelled_caught
        assert not handle.is_finished()  # shutdown() cancelled before the call aborted nothing
        await trio.sleep(2)
        with trio.CancelScope() as cs:
            cs.cancel()
            await js.join_all()
        assert len(js) == 1
        assert await js.join_all() == [tc.Completed(1)]


async def test_merge_cancelled_before_call_keeps_ready_item() -> None:
    send, recv = trio.open_memory_channel[int](1)
    send.send_nowait(7)
    merged = tc.merge(recv)
    with trio.CancelScope() as cs:
        cs.cancel()
        await merged.receive()
    assert cs.cancelled_caught
    assert await merged.receive() == 7


async def test_exception_group_from_body_propagates_as_the_same_object() -> None:
    group = ExceptionGroup("body", [ValueError(1), KeyError(2)])
    with pytest.raises(ExceptionGroup) as info:
        async with tc.JoinSet() as js:
            js.spawn(trio.sleep_forever)
            await trio.testing.wait_all_tasks_blocked()
            raise group
    assert info.value is group


async def test_join_next_with_handle_names_the_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def value(n: int) -> int:
        await trio.sleep(n)
        return n

    async with tc.JoinSet() as js:
        first = js.spawn(value, 1, name="one")
        second = js.spawn(value, 2, name="two")
        with trio.testing.assert_checkpoints():
            got = await js.join_next_with_handle()
        assert got is not None
        assert got[0] is first
        assert got[1] == tc.Completed(1)
        got = await js.join_next_with_handle()
        assert got is not None
        assert (got[0].name, got[0].id, got[1]) == ("two", second.id, tc.Completed(2))
        assert await js.join_next_with_handle() is None


async def test_join_next_with_handle_cancelled_consumes_nothing() -> None:
    async with tc.JoinSet() as js:
        js.spawn(trio.lowlevel.checkpoint)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as cs:
            cs.cancel()
            await js.join_next_with_handle()
        assert len(js) == 1
        got = await js.join_next_with_handle()
        assert got is not None
        assert got[1] == tc.Completed(None)


async def _inner_nursery_whose_child_fails_when_cancelled() -> None:
    async def child() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("cleanup failed")

    async with trio.open_nursery() as inner:
        inner.start_soon(child)
        await trio.sleep_forever()


def _is_failed_with_the_cleanup_group(outcome: tc.Outcome[object] | None) -> bool:
    return (
        isinstance(outcome, tc.Failed)
        and isinstance(outcome.error, ExceptionGroup)
        and pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="cleanup failed")).matches(
            outcome.error
        )
    )


@pytest.mark.parametrize("how", ["abort", "abort_all", "shutdown", "exit"])
async def test_aborted_task_whose_inner_nursery_fails_is_an_outcome_not_a_crash(
    how: str, autojump_clock: trio.testing.MockClock
) -> None:
    handles: list[tc.TaskHandle[Any]] = []
    async with tc.JoinSet() as js:
        handles.append(js.spawn(_inner_nursery_whose_child_fails_when_cancelled))
        handles.append(js.spawn(_after, 5, 5))
        await trio.sleep(1)
        if how == "abort":
            handles[0].abort("stop")
        elif how == "abort_all":
            js.abort_all("stop")
        elif how == "shutdown":
            await js.shutdown("stop")
        if how in ("abort", "abort_all", "shutdown"):
            assert len(await js.join_all()) == 2
            assert _is_failed_with_the_cleanup_group(handles[0].outcome)
            if how == "abort":  # the sibling was left alone and ran to its end
                assert handles[1].outcome == tc.Completed(5)
                assert trio.current_time() == 5
            else:
                assert handles[1].outcome == tc.Aborted("stop")
    # leaving the block raised nothing: the failure is the task's outcome
    assert _is_failed_with_the_cleanup_group(handles[0].outcome)
    if how == "exit":
        assert handles[1].outcome == tc.Aborted(None)
        assert trio.current_time() == 1


async def test_body_error_while_a_task_inner_nursery_fails_propagates_as_itself() -> None:
    """The body's exception cancels the set's nursery (a cancellation from outside the task's
    scope): the task's cleanup error is its outcome, and only the body's error propagates."""
    handles: list[tc.TaskHandle[Any]] = []
    with pytest.raises(KeyError, match="body"):
        async with tc.JoinSet() as js:
            handles.append(js.spawn(_inner_nursery_whose_child_fails_when_cancelled))
            await trio.testing.wait_all_tasks_blocked()
            raise KeyError("body")
    assert _is_failed_with_the_cleanup_group(handles[0].outcome)


async def test_outside_cancellation_while_a_task_inner_nursery_fails() -> None:
    handles: list[tc.TaskHandle[Any]] = []
    with trio.CancelScope() as outer:
        async with tc.JoinSet() as js:
            handles.append(js.spawn(_inner_nursery_whose_child_fails_when_cancelled))
            await trio.testing.wait_all_tasks_blocked()
            outer.cancel("outside")
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert _is_failed_with_the_cleanup_group(handles[0].outcome)


def _random_task(rng: random.Random) -> Callable[[], Awaitable[int | None]]:
    """A task of a random kind: returns, runs long, fails in its ``finally``, or has an inner
    nursery whose children fail (or not) when cancelled."""
    kind = rng.choice(["returns", "runs", "raise_in_finally", "inner_ok", "inner_fail", "two"])
    delay = rng.choice([0, 0, 1, 2, 5])

    async def child(fail: bool) -> None:
        try:
            await trio.sleep_forever()
        finally:
            if fail:
                raise ValueError("child cleanup failed")

    async def task() -> int | None:
        if kind == "returns":
            await trio.sleep(delay)
            return 1
        if kind == "runs":
            await trio.sleep(3 * delay + 1)
            return 2
        if kind == "raise_in_finally":
            try:
                await trio.sleep_forever()
            finally:
                raise ValueError("cleanup failed")
        async with trio.open_nursery() as inner:
            inner.start_soon(child, kind != "inner_ok")
            if kind == "two":
                inner.start_soon(child, True)
            await trio.sleep(delay)
            if kind == "inner_ok":
                inner.cancel_scope.cancel()
                return 3
            await trio.sleep_forever()

    return task


async def _random_schedule(rng: random.Random) -> None:
    handles: list[tc.TaskHandle[int | None]] = []
    body_error = rng.random() < 0.2
    caught: KeyError | None = None
    token = tc.CancellationToken()
    with trio.CancelScope() as outer:
        try:
            async with tc.JoinSet[int | None]() as js:
                for _ in range(rng.randint(1, 6)):
                    bound = token if rng.random() < 0.3 else None
                    handles.append(js.spawn(_random_task(rng), token=bound))
                for _ in range(rng.randint(0, 5)):
                    await trio.sleep(rng.choice([0, 0.5, 1, 3]))
                    action = rng.random()
                    if action < 0.4:
                        rng.choice(handles).abort("one")
                    elif action < 0.5:
                        token.cancel("token")
                    elif action < 0.6:
                        js.abort_all("all")
                    elif action < 0.65:
                        outer.cancel("outside")
                if body_error:
                    raise KeyError("body")
                if rng.random() < 0.5:
                    with trio.move_on_after(10):
                        await js.join_all()
        except KeyError as exc:
            caught = exc
    if body_error and not outer.cancelled_caught:
        assert caught is not None
        assert caught.args == ("body",)
    for handle in handles:
        outcome = handle.outcome
        assert outcome is not None
        if isinstance(outcome, tc.Failed):
            assert isinstance(outcome.error, Exception)


def test_random_schedules_never_let_a_task_error_out_of_the_set(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seeded random aborts, token cancellations, abort_all, outside cancellations and body
    errors, over tasks whose cleanup or inner nursery fails: the block raises only the body's
    own error (or nothing), every task has an outcome, and a Failed one holds an Exception."""
    for seed in range(200):
        clock = trio.testing.MockClock(autojump_threshold=0)
        with caplog.at_level(logging.CRITICAL, logger="trio_cancel"):  # unretrieved failures
            trio.run(_random_schedule, random.Random(seed), clock=clock)


@pytest.mark.parametrize("how", ["body error", "outside cancel"])
async def test_leaving_by_an_exception_keeps_no_failed_handle_in_a_cycle(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The exception that leaves the block has the exit's frames in its traceback: they must
    not keep the set (and so its failed handles) alive until the collector runs."""
    import gc
    import weakref

    class BodyError(Exception):
        pass

    async def fails() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("task failed")

    refs: list[weakref.ref[tc.TaskHandle[None]]] = []
    gc.collect()
    gc.disable()
    try:
        with trio.CancelScope() as outer:
            try:
                async with tc.JoinSet[None]() as js:
                    refs.append(weakref.ref(js.spawn(fails)))
                    await trio.testing.wait_all_tasks_blocked()
                    if how == "body error":
                        raise BodyError
                    outer.cancel()
                    await trio.sleep_forever()
            except BodyError:
                pass
        del js
        assert outer.cancelled_caught == (how == "outside cancel")
        assert refs[0]() is None
    finally:
        gc.enable()
    assert "failed and its outcome was never retrieved" in caplog.text
