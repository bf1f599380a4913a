"""start(): Trio's ``nursery.start()`` with a handle, for tc.start, JoinSet and GracefulShutdown."""

from __future__ import annotations

import gc
import math
import random
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    StartFn = Callable[..., Awaitable[tuple[tc.TaskHandle[object], object]]]


async def serve(port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> str:
    """A server: ready at once, then serves until cancelled (or told to stop)."""
    await trio.sleep(1)  # binding the socket
    task_status.started(port)
    await trio.sleep_forever()


async def ready_then_return(
    value: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> str:
    task_status.started("ready")
    await trio.sleep(1)
    return value


async def fail_before_started(*, task_status: trio.TaskStatus[None]) -> None:
    await trio.sleep(1)
    raise ValueError("cannot bind")


async def fail_after_started(*, task_status: trio.TaskStatus[None]) -> None:
    task_status.started()
    await trio.sleep(1)
    raise ValueError("crashed while serving")


async def never_started(*, task_status: trio.TaskStatus[None]) -> str:
    await trio.sleep(1)
    return "forgot to call started()"


# ---------------------------------------------------------------- tc.start


async def test_start_returns_the_handle_and_the_started_value(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    handle, value = await tc.start(nursery, ready_then_return, "done", name="server")
    assert value == "ready"
    assert trio.current_time() == 0
    assert handle.name == "server"
    assert not handle.is_finished()
    assert await handle.join() == tc.Completed("done")  # recorded as for spawn


async def test_start_waits_for_started_and_the_task_then_lives_in_the_nursery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        handle, port = await tc.start(nursery, serve, 8080)
        assert port == 8080
        assert trio.current_time() == 1
        assert len(nursery.child_tasks) == 1  # moved from under the call into the nursery
        handle.abort("stop")
    assert handle.outcome == tc.Aborted("stop")


async def test_start_an_error_before_started_propagates_bare_and_no_task_is_left(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(ValueError, match="cannot bind") as info:
        await tc.start(nursery, fail_before_started)
    # Bare, as nursery.start() raises it (older Trio versions, 0.31 among them, leave the group it
    # unwrapped as the error's __context__; 0.35 leaves none).
    context = info.value.__context__
    assert context is None or (
        isinstance(context, BaseExceptionGroup) and context.exceptions == (info.value,)
    )
    assert nursery.child_tasks == set()


async def test_start_an_error_after_started_is_a_failed_outcome(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        handle, _ = await tc.start(nursery, fail_after_started)
        sibling = tc.spawn(nursery, trio.sleep, 5)
    outcome = handle.outcome
    assert isinstance(outcome, tc.Failed)
    assert str(outcome.error) == "crashed while serving"
    assert sibling.outcome == tc.Completed(None)  # the nursery was not cancelled


async def test_start_a_task_that_returns_without_started_is_a_runtime_error(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(RuntimeError, match="'never_started' returned without calling"):
        await tc.start(nursery, never_started)


async def test_start_cancelled_before_the_call_starts_nothing(nursery: trio.Nursery) -> None:
    ran: list[str] = []

    async def record(*, task_status: trio.TaskStatus[None]) -> None:
        ran.append("ran")  # pragma: no cover

    with trio.CancelScope() as cs:
        cs.cancel()
        await tc.start(nursery, record)
    assert cs.cancelled_caught
    await trio.testing.wait_all_tasks_blocked()
    assert ran == []
    assert nursery.child_tasks == set()


async def test_start_cancelled_while_waiting_cancels_the_task(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    unwound: list[str] = []

    async def slow_to_start(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            await trio.sleep(10)
            task_status.started()  # pragma: no cover
        finally:
            unwound.append("unwound")

    with trio.move_on_after(1) as cs:
        await tc.start(nursery, slow_to_start)
    assert cs.cancelled_caught
    assert unwound == ["unwound"]
    assert nursery.child_tasks == set()


async def test_start_cancelled_by_a_scope_outside_the_library(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as outer:
        target: list[trio.Nursery] = []

        async def caller() -> None:
            async with trio.open_nursery() as n:
                target.append(n)
                await tc.start(n, serve, 1)

        outer.start_soon(caller)
        await trio.sleep(0.5)
        outer.cancel_scope.cancel("outside")
    assert outer.cancel_scope.cancelled_caught


async def test_start_a_token_that_fires_before_started_raises_operation_cancelled(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    token = tc.CancellationToken()
    token.cancel_after(0.5, "deploy aborted")
    with pytest.raises(tc.OperationCancelledError) as info:
        await tc.start(nursery, serve, 1, token=token)
    assert info.value.reason == "deploy aborted"
    assert nursery.child_tasks == set()


async def test_start_an_already_cancelled_token_never_runs_the_function(
    nursery: trio.Nursery,
) -> None:
    ran: list[str] = []

    async def record(*, task_status: trio.TaskStatus[None]) -> None:
        ran.append("ran")  # pragma: no cover

    token = tc.CancellationToken()
    token.cancel(cause=TimeoutError("too late"))
    with pytest.raises(tc.OperationCancelledError) as info:
        await tc.start(nursery, record, token=token)
    assert isinstance(info.value.cause, TimeoutError)
    assert info.value.reason == "too late"
    assert ran == []


async def test_start_a_task_that_sees_its_token_and_returns_raises_operation_cancelled(
    nursery: trio.Nursery,
) -> None:
    async def cooperative(
        *, token: tc.CancellationToken, task_status: trio.TaskStatus[None]
    ) -> None:
        with tc.CancellationToken().cancel_scope():  # a scope of its own, not the handle's
            pass
        await token.wait_cancelled()

    token = tc.CancellationToken()

    async def fire() -> None:
        await trio.testing.wait_all_tasks_blocked()
        token.cancel("stop")

    nursery.start_soon(fire)
    with pytest.raises(tc.OperationCancelledError, match="stop"):
        await tc.start(nursery, cooperative, token=token)


async def test_start_passes_the_token_and_the_token_fires_after_started(
    nursery: trio.Nursery,
) -> None:
    seen: list[tc.CancellationToken] = []

    async def worker(*, token: tc.CancellationToken, task_status: trio.TaskStatus[int]) -> None:
        seen.append(token)
        task_status.started(7)
        await trio.sleep_forever()

    token = tc.CancellationToken()
    handle, value = await tc.start(nursery, worker, token=token)
    assert (value, seen) == (7, [token])
    token.cancel("later")
    assert await handle.join() == tc.Aborted("later")


async def test_start_started_twice_is_a_failed_outcome(nursery: trio.Nursery) -> None:
    async def twice(*, task_status: trio.TaskStatus[int]) -> None:
        task_status.started(1)
        task_status.started(2)

    handle, value = await tc.start(nursery, twice)
    assert value == 1
    outcome = await handle.join()
    assert isinstance(outcome, tc.Failed)
    assert isinstance(outcome.error, RuntimeError)


async def test_start_bad_input_fails_at_the_call(nursery: trio.Nursery) -> None:
    async def no_status() -> None:
        pass  # pragma: no cover

    def sync(*, task_status: trio.TaskStatus[None]) -> None:
        pass

    with pytest.raises(TypeError, match="task_status"):
        await tc.start(nursery, no_status)
    with pytest.raises(TypeError, match="async function"):
        await tc.start(nursery, sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"start\(\) needs a trio.Nursery"):
        await tc.start(object(), serve, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="name must be a str"):
        await tc.start(nursery, serve, 1, name=3)  # type: ignore[arg-type]
    assert nursery.child_tasks == set()


async def test_start_into_a_closed_nursery_leaves_no_coroutine_unawaited() -> None:
    async with trio.open_nursery() as closed:
        pass
    token = tc.CancellationToken()
    with pytest.raises(RuntimeError, match="closed"):
        await tc.start(closed, serve, 1, token=token)
    gc.collect()  # an unawaited coroutine would warn here (filterwarnings = error)
    assert repr(token) == "<CancellationToken live>"  # its scope was unregistered


async def test_start_is_a_checkpoint(nursery: trio.Nursery) -> None:
    async def at_once(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()

    with trio.testing.assert_checkpoints():
        await tc.start(nursery, at_once)


async def test_start_a_keyboard_interrupt_before_started_propagates(
    nursery: trio.Nursery,
) -> None:
    async def interrupted(*, task_status: trio.TaskStatus[None]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await tc.start(nursery, interrupted)


async def test_start_aborting_the_handle_after_started(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    handle, _ = await tc.start(nursery, serve, 1)
    handle.abort_handle().abort("done")
    assert await handle.join() == tc.Aborted("done")


# ---------------------------------------------------------------- JoinSet.start


async def test_joinset_start_joins_the_set_only_once_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.JoinSet() as js:
        handle, value = await js.start(ready_then_return, "served")
        assert value == "ready"
        assert len(js) == 1
        found = await js.join_next_with_handle()
        assert found == (handle, tc.Completed("served"))
        assert len(js) == 0


async def test_joinset_start_failures_before_started_never_join_the_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    token = tc.CancellationToken()
    async with tc.JoinSet() as js:
        with pytest.raises(ValueError, match="cannot bind"):
            await js.start(fail_before_started)
        with pytest.raises(RuntimeError, match="returned without calling"):
            await js.start(never_started)
        token.cancel_after(0.5, "token")
        with pytest.raises(tc.OperationCancelledError, match="token"):
            await js.start(serve, 1, token=token)
        with trio.move_on_after(0.5):
            await js.start(serve, 1)
        assert len(js) == 0
        assert await js.join_next() is None


async def test_joinset_abort_all_reaches_a_task_that_has_not_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[BaseException] = []
    async with tc.JoinSet() as js, trio.open_nursery() as callers:

        async def caller() -> None:
            try:
                await js.start(serve, 1)
            except tc.OperationCancelledError as exc:
                errors.append(exc)

        callers.start_soon(caller)
        await trio.sleep(0.5)  # the task is binding its socket
        js.abort_all("closing")
    assert [str(e) for e in errors] == ["closing"]
    assert len(js) == 0


async def test_joinset_exit_aborts_a_start_in_another_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[BaseException] = []
    async with trio.open_nursery() as callers, tc.JoinSet() as js:

        async def caller() -> None:
            try:
                await js.start(serve, 1)
            except tc.OperationCancelledError as exc:
                errors.append(exc)

        callers.start_soon(caller)
        await trio.sleep(0.5)
    assert len(errors) == 1
    assert trio.current_time() == 0.5  # the exit did not wait for the task to bind


async def test_joinset_start_outside_the_block_is_a_runtime_error() -> None:
    js = tc.JoinSet()
    with pytest.raises(RuntimeError, match=r"JoinSet\.start\(\) works only inside"):
        await js.start(serve, 1)


# ---------------------------------------------------------------- GracefulShutdown.start


async def test_graceful_shutdown_start_tracks_the_task_once_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def server(*, token: tc.CancellationToken, task_status: trio.TaskStatus[str]) -> str:
        task_status.started("listening")
        await token.wait_cancelled()
        return "drained"

    async with tc.GracefulShutdown(grace=5) as gs:
        handle, value = await gs.start(server, name="http")
        assert value == "listening"
    assert handle.outcome == tc.Completed("drained")
    assert gs.report is not None
    assert [(t.name, t.forced) for t in gs.report] == [("http", False)]


async def test_graceful_shutdown_start_trigger_before_started_is_not_in_the_report(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def server(*, token: tc.CancellationToken, task_status: trio.TaskStatus[str]) -> None:
        await token.wait_cancelled()  # told to stop before it was ready

    async with tc.GracefulShutdown(grace=5) as gs:
        gs.trigger("deploy")
        with pytest.raises(tc.OperationCancelledError, match="deploy"):
            await gs.start(server)
    assert gs.report is not None
    assert len(gs.report) == 0


async def test_graceful_shutdown_phase_two_aborts_a_task_that_has_not_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[BaseException] = []
    async with trio.open_nursery() as callers:
        async with tc.GracefulShutdown(grace=2) as gs:

            async def slow(*, task_status: trio.TaskStatus[None]) -> None:
                await trio.sleep(10)  # takes no token: only phase 2 stops it
                task_status.started()  # pragma: no cover

            async def caller() -> None:
                try:
                    await gs.start(slow)
                except tc.OperationCancelledError as exc:
                    errors.append(exc)

            callers.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            gs.trigger("stop")
            with pytest.raises(tc.OperationCancelledError, match="grace period"):
                await gs.start(slow)
        assert trio.current_time() == pytest.approx(2)
    assert [str(e) for e in errors] == ["stop: forced after the grace period"]
    assert gs.report is not None
    assert len(gs.report) == 0


async def test_graceful_shutdown_start_after_phase_two_is_aborted_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=0) as gs:
        gs.spawn(trio.sleep_forever)
        gs.force()
        with pytest.raises(tc.OperationCancelledError, match="force"):
            await gs.start(serve, 1)


async def test_graceful_shutdown_start_cancelled_while_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tc.GracefulShutdown(grace=math.inf) as gs:
        with trio.move_on_after(0.5) as cs:
            await gs.start(serve, 1)
        assert cs.cancelled_caught
    assert gs.report is not None
    assert len(gs.report) == 0


# ---------------------------------------------------------------- adversarial


@pytest.mark.parametrize("seed", range(40))
async def test_joinset_start_under_random_cancellation_schedules(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Random times for started(), for cancelling the start() call, for the token and for
    abort_all: a start either returns a handle that is in the set, or raises (Cancelled
    absorbed by its scope, or OperationCancelledError) and leaves nothing in the set."""
    rng = random.Random(seed)
    started_ok: list[tc.TaskHandle[object]] = []
    refused: list[str] = []
    token = tc.CancellationToken()
    token.cancel_after(rng.choice([0.5, 1.5, 2.5, 100]), "token")

    async def task(ready_at: float, *, task_status: trio.TaskStatus[float]) -> float:
        await trio.sleep(ready_at)
        task_status.started(ready_at)
        await trio.sleep(rng.choice([0.1, 1, 10]))
        return ready_at

    async with tc.JoinSet() as js, trio.open_nursery() as callers:

        async def caller(i: int) -> None:
            bound = token if rng.random() < 0.5 else None
            with trio.move_on_after(rng.choice([0.2, 1.2, 2.2, 100])) as cs:
                try:
                    handle, value = await js.start(task, rng.choice([0, 1, 2]), token=bound)
                except tc.OperationCancelledError as exc:
                    refused.append(f"{i}: {exc}")
                    return
                started_ok.append(handle)
                assert value in (0, 1, 2)
            if cs.cancelled_caught:
                refused.append(f"{i}: cancelled")

        for i in range(6):
            callers.start_soon(caller, i)
        if rng.random() < 0.3:
            await trio.sleep(rng.choice([0.5, 1.5]))
            js.abort_all("abort_all")
        await trio.sleep(3)
        joined = await js.join_all()
    assert len(started_ok) + len(refused) == 6
    assert len(joined) == len(started_ok)  # exactly the started ones joined the set
    assert len(js) == 0
    assert all(h.is_finished() for h in started_ok)


async def test_start_of_a_failing_task_leaves_the_handle_collectable(
    nursery: trio.Nursery,
) -> None:
    """A start() whose task fails before started() leaves nothing behind that the collector
    cannot free (Trio's own nursery.start() keeps the error in a cycle until a collection)."""
    import weakref

    refs: list[weakref.ref[BaseException]] = []

    class BoomError(ValueError):
        pass

    async def fail(*, task_status: trio.TaskStatus[None]) -> None:
        error = BoomError("boom")
        refs.append(weakref.ref(error))
        raise error

    for _ in range(3):
        with pytest.raises(ValueError, match="boom"):
            await tc.start(nursery, fail)
    gc.collect()
    assert all(ref() is None for ref in refs)


async def test_started_task_that_failed_holds_no_reference_cycle(nursery: trio.Nursery) -> None:
    """As for spawn: the handle of a started task whose error it stores is freed as soon as its
    last reference goes, although the function's frames (in the error's traceback) hold its
    task_status."""
    import weakref

    async def fail_later(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.lowlevel.checkpoint()
        raise ValueError("after started")

    gc.collect()
    gc.disable()
    try:
        handle, _ = await tc.start(nursery, fail_later)
        outcome = await handle.join()
        assert isinstance(outcome, tc.Failed)
        ref = weakref.ref(handle)
        del handle, outcome
        await trio.testing.wait_all_tasks_blocked()
        assert ref() is None
    finally:
        gc.enable()


async def test_started_task_status_holds_nothing_once_the_task_ended() -> None:
    """The function's frames (in a stored error's traceback) keep its task_status: once the
    task has ended, the status must not lead back to the handle, neither directly nor
    through its owner's callbacks (a JoinSet that still holds the handle)."""
    import weakref

    seen: list[object] = []

    async def fail_later(*, task_status: trio.TaskStatus[None]) -> None:
        seen.append(task_status)
        task_status.started()
        await trio.lowlevel.checkpoint()
        raise ValueError("after started")

    gc.collect()
    gc.disable()
    try:
        async with tc.JoinSet() as js:
            handle, _ = await js.start(fail_later)
            assert isinstance(await handle.join(), tc.Failed)
            ref = weakref.ref(js)
            del handle, js
        status = seen.pop()
        held = [r for r in gc.get_referents(status) if r is not type(status)]
        assert all(r is None or isinstance(r, str | bool) for r in held), held
        del status
        await trio.testing.wait_all_tasks_blocked()
        assert ref() is None
    finally:
        gc.enable()


async def test_graceful_shutdown_exit_waits_for_a_pending_start_and_forces_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A start() still waiting for started() when the block exits counts as a running task:
    the landing waits for it and phase 2 aborts it after the grace period (it never joins the
    report)."""
    errors: list[str] = []

    async def slow(*, task_status: trio.TaskStatus[None]) -> None:
        await trio.sleep(10)  # takes no token: only phase 2 stops it
        task_status.started()  # pragma: no cover

    with trio.fail_after(30):
        async with trio.open_nursery() as callers:
            async with tc.GracefulShutdown(grace=2) as gs:

                async def caller() -> None:
                    try:
                        await gs.start(slow)
                    except tc.OperationCancelledError as exc:
                        errors.append(str(exc))

                callers.start_soon(caller)
                await trio.testing.wait_all_tasks_blocked()
            assert trio.current_time() == pytest.approx(2)
    assert errors == ["shutdown: forced after the grace period"]
    assert gs.report is not None
    assert len(gs.report) == 0


async def test_joinset_and_graceful_shutdown_start_cancelled_before_the_call() -> None:
    ran: list[str] = []

    async def record(*, task_status: trio.TaskStatus[None]) -> None:
        ran.append("ran")  # pragma: no cover

    async with tc.JoinSet() as js:
        with trio.CancelScope() as cs:
            cs.cancel()
            await js.start(record)
        assert cs.cancelled_caught
        assert len(js) == 0
    async with tc.GracefulShutdown(grace=1) as gs:
        with trio.CancelScope() as cs:
            cs.cancel()
            await gs.start(record)
        assert cs.cancelled_caught
    assert ran == []
    assert gs.report is not None
    assert len(gs.report) == 0


# ------------------------------------------- aborted before started(), the abort not landed


async def fires_then_started(
    token: tc.CancellationToken, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    token.cancel("fired")  # the token fires ...
    task_status.started("v")  # ... and started() follows in the same step
    await trio.sleep_forever()


async def test_start_raises_when_the_token_fired_just_before_started(
    nursery: trio.Nursery,
) -> None:
    token = tc.CancellationToken()
    with pytest.raises(tc.OperationCancelledError) as info:
        await tc.start(nursery, fires_then_started, token=token)
    assert info.value.reason == "fired"


async def test_joinset_start_raises_and_the_task_never_joins_when_its_token_fired() -> None:
    async with tc.JoinSet() as js:
        with pytest.raises(tc.OperationCancelledError):
            await js.start(fires_then_started, token=tc.CancellationToken())
        assert len(js) == 0
        assert await js.join_next() is None


async def test_joinset_abort_all_during_a_shielded_setup_makes_start_raise(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """abort_all() while the function cannot be cancelled (a shielded setup), then it calls
    started(): the abort has not landed yet, and start() must not hand the task back."""
    after: list[str] = []

    async def shielded_setup(*, task_status: trio.TaskStatus[str]) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(5)
        task_status.started("listening")
        after.append("started returned")
        await trio.sleep_forever()

    async with tc.JoinSet() as js, trio.open_nursery() as aborter:

        async def abort_soon() -> None:
            await trio.sleep(1)
            js.abort_all()

        aborter.start_soon(abort_soon)
        with pytest.raises(tc.OperationCancelledError):
            await js.start(shielded_setup)
        assert len(js) == 0
    assert after == ["started returned"]  # the abort landed at its next checkpoint
