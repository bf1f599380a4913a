"""Tests of CancellationToken, one group per contract line of API.md (Tokens, Precise points)."""

from __future__ import annotations

import functools
import gc
import logging
import math
import random
import signal
import sys
import tracemalloc
import weakref
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import trio_cancel as tc
from trio_cancel import _collector, _token as _token_module, _trio_internals

if TYPE_CHECKING:
    from collections.abc import Iterator

# ---------------------------------------------------------------- cancel / state


def test_cancel_sets_state_and_reason() -> None:
    token = tc.CancellationToken()
    assert not token.is_cancelled()
    assert token.reason is None
    assert token.cause is None
    token.cancel("shutdown")
    assert token.is_cancelled()
    assert token.reason == "shutdown"


def test_cancel_is_idempotent_first_reason_wins() -> None:
    token = tc.CancellationToken()
    token.cancel("first", cause=KeyError("k"))
    token.cancel("second", cause="other")
    assert token.reason == "first"
    assert isinstance(token.cause, KeyError)


def test_cancel_without_reason_reason_stays_none() -> None:
    token = tc.CancellationToken()
    token.cancel()
    assert token.is_cancelled()
    assert token.reason is None


def test_cancel_cause_only_gives_str_reason() -> None:
    cause = TimeoutError("peer silent for 30 s")
    token = tc.CancellationToken()
    child = token.child_token()
    token.cancel(cause=cause)
    assert token.reason == "peer silent for 30 s"
    assert child.cause is cause
    assert child.reason == "peer silent for 30 s"


def test_cancel_rejects_non_str_reason() -> None:
    token = tc.CancellationToken()
    with pytest.raises(TypeError, match="reason must be a str"):
        token.cancel(42)  # type: ignore[arg-type]
    assert not token.is_cancelled()


def test_cancel_outside_trio_run_then_bind_inside() -> None:
    token = tc.CancellationToken()
    token.cancel("before run")

    async def main() -> bool:
        with token.cancel_scope() as cs:
            await trio.sleep_forever()
        return cs.cancelled_caught

    assert trio.run(main) is True


def test_repr_shows_state() -> None:
    token = tc.CancellationToken()
    kids = [token.child_token() for _ in range(3)]
    assert repr(token) == "<CancellationToken live, 3 children>"
    token.cancel("shutdown")
    assert repr(token) == "<CancellationToken cancelled 'shutdown'>"
    assert all(k.is_cancelled() for k in kids)


# ---------------------------------------------------------------- children


def test_child_token_cancelled_with_parent() -> None:
    root = tc.CancellationToken()
    child = root.child_token()
    grandchild = child.child_token()
    root.cancel("root went")
    assert child.is_cancelled()
    assert grandchild.is_cancelled()
    assert grandchild.reason == "root went"


def test_child_token_cancel_leaves_parent_and_siblings() -> None:
    root = tc.CancellationToken()
    a, b = root.child_token(), root.child_token()
    a_kid = a.child_token()
    a.cancel("only a")
    assert a_kid.is_cancelled()
    assert not root.is_cancelled()
    assert not b.is_cancelled()
    root.cancel("later")
    assert a.reason == "only a"
    assert b.reason == "later"


def test_child_token_of_cancelled_born_cancelled() -> None:
    root = tc.CancellationToken()
    root.cancel("gone", cause=ValueError("x"))
    child = root.child_token()
    assert child.is_cancelled()
    assert child.reason == "gone"
    assert isinstance(child.cause, ValueError)


def test_cancel_deep_chain_has_no_recursion() -> None:
    root = tc.CancellationToken()
    node = root
    chain = []
    for _ in range(100_000):
        node = node.child_token()
        chain.append(node)
    assert sys.getrecursionlimit() < 100_000
    root.cancel("deep")
    assert chain[-1].reason == "deep"
    assert all(n.is_cancelled() for n in chain[::997])


def test_cancel_deep_chain_with_callback_at_bottom() -> None:
    root = tc.CancellationToken()
    node = root
    for _ in range(100_000):
        node = node.child_token()
    ran: list[str | None] = []
    bottom = weakref.ref(node)

    def record() -> None:
        tok = bottom()
        assert tok is not None
        ran.append(tok.reason)

    node.on_cancel(record)
    del node  # only the pin keeps the chain alive now
    gc.collect()
    root.cancel("deep")
    assert ran == ["deep"]


def test_child_token_parent_holds_children_weakly() -> None:
    root = tc.CancellationToken()
    child = root.child_token()
    ref = weakref.ref(child)
    del child
    gc.collect()
    assert ref() is None
    assert repr(root) == "<CancellationToken live>"


def test_child_token_million_short_lived_children_flat_memory() -> None:
    root = tc.CancellationToken()
    for _ in range(1000):  # warm up allocator pools
        root.child_token()
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(100_000):
            child = root.child_token()
            child.child_token()
        del child
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 100,000 retained children would take well over 10 MB; a flat root retains ~nothing.
    assert after - base < 200_000


def test_short_lived_children_beside_long_lived_ones_stay_flat_and_linked() -> None:
    # The pattern that would make a naive "purge dead children when the list is full" rule
    # quadratic: many live children, and one short-lived child dying between each creation.
    root = tc.CancellationToken()
    kept = [root.child_token() for _ in range(1000)]
    for _ in range(50_000):
        root.child_token()
    assert root._children is not None
    assert len(root._children) <= 2 * len(kept) + 8  # dead references are purged as it grows
    linked = tc.CancellationToken.any(root, tc.CancellationToken())
    root.cancel("bulk")
    assert all(child.reason == "bulk" for child in kept)
    assert linked.reason == "bulk"


def test_cancel_visits_siblings_in_creation_order() -> None:
    root = tc.CancellationToken()
    ran: list[int] = []
    children = [root.child_token() for _ in range(50)]
    for i, child in enumerate(children):
        child.child_token().on_cancel(functools.partial(ran.append, i))
    root.cancel()
    assert ran == list(range(50))


def test_child_with_callback_is_pinned_until_it_runs() -> None:
    root = tc.CancellationToken()
    ran: list[str] = []
    root.child_token().child_token().on_cancel(lambda: ran.append("grandchild"))
    gc.collect()
    root.cancel()
    assert ran == ["grandchild"]


def test_child_with_unregistered_callback_is_released() -> None:
    root = tc.CancellationToken()
    child = root.child_token()
    reg = child.on_cancel(lambda: None)
    ref = weakref.ref(child)
    del child
    gc.collect()
    assert ref() is not None  # pinned by the callback (the registration holds it too)
    assert reg.unregister() is True
    del reg
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------- any()


def test_any_cancelled_by_any_input_with_its_reason() -> None:
    a, b = tc.CancellationToken(), tc.CancellationToken()
    linked = tc.CancellationToken.any(a, b)
    assert not linked.is_cancelled()
    b.cancel("b fired", cause=3)
    assert linked.reason == "b fired"
    assert linked.cause == 3
    assert not a.is_cancelled()
    a.cancel("a fired")
    assert linked.reason == "b fired"


def test_any_with_already_cancelled_input_born_cancelled() -> None:
    a, b = tc.CancellationToken(), tc.CancellationToken()
    b.cancel("early")
    linked = tc.CancellationToken.any(a, b)
    assert linked.is_cancelled()
    assert linked.reason == "early"


def test_any_no_inputs_only_own_cancel() -> None:
    linked = tc.CancellationToken.any()
    assert not linked.is_cancelled()
    linked.cancel("own")
    assert linked.reason == "own"


def test_any_cancel_linked_leaves_inputs() -> None:
    a = tc.CancellationToken()
    linked = tc.CancellationToken.any(a, a)
    kid = linked.child_token()
    linked.cancel("linked")
    assert kid.is_cancelled()
    assert not a.is_cancelled()


def test_any_rejects_non_tokens() -> None:
    with pytest.raises(TypeError, match="argument 1 is str"):
        tc.CancellationToken.any(tc.CancellationToken(), "nope")  # type: ignore[arg-type]


def test_any_linked_callback_unpinned_from_live_input() -> None:
    a, b = tc.CancellationToken(), tc.CancellationToken()
    linked = tc.CancellationToken.any(a, b)
    ran: list[str | None] = []
    linked.on_cancel(lambda: ran.append("x"))
    ref = weakref.ref(linked)
    del linked
    gc.collect()
    assert ref() is not None
    a.cancel("a")
    assert ran == ["x"]
    gc.collect()
    assert ref() is None  # b no longer pins it
    b.cancel("b")
    assert ran == ["x"]


# ---------------------------------------------------------------- on_cancel


def test_on_cancel_order_own_in_registration_order_then_descendants() -> None:
    root = tc.CancellationToken()
    child = root.child_token()
    grandchild = child.child_token()
    calls: list[str] = []
    grandchild.on_cancel(lambda: calls.append("grandchild"))
    child.on_cancel(lambda: calls.append("child-1"))
    root.on_cancel(lambda: calls.append("root-1"))
    child.on_cancel(lambda: calls.append("child-2"))
    root.on_cancel(lambda: calls.append("root-2"))
    root.cancel()
    assert calls[:2] == ["root-1", "root-2"]
    assert calls.index("child-1") < calls.index("child-2") < calls.index("grandchild")


async def test_on_cancel_runs_after_state_scopes_and_waiters() -> None:
    root = tc.CancellationToken()
    leaf = root.child_token().child_token()
    seen: dict[str, bool] = {}
    with leaf.cancel_scope() as cs:

        def callback() -> None:
            seen["leaf cancelled"] = leaf.is_cancelled()
            seen["scope cancelled"] = cs.cancel_called

        root.on_cancel(callback)
        root.cancel()
        await trio.lowlevel.checkpoint()
    assert seen == {"leaf cancelled": True, "scope cancelled": True}


def test_on_cancel_callback_errors_grouped_nothing_skipped() -> None:
    root = tc.CancellationToken()
    child = root.child_token()
    calls: list[str] = []

    def boom() -> None:
        calls.append("boom")
        raise ValueError("callback failed")

    root.on_cancel(boom)
    root.on_cancel(lambda: calls.append("second"))
    child.on_cancel(lambda: calls.append("child"))
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="callback failed")):
        root.cancel("x")
    assert calls == ["boom", "second", "child"]
    assert child.is_cancelled()


def test_on_cancel_several_errors_all_in_group() -> None:
    root = tc.CancellationToken()
    root.on_cancel(lambda: 1 / 0)
    root.child_token().on_cancel(lambda: [][1])
    with pytest.RaisesGroup(ZeroDivisionError, IndexError):
        root.cancel()


def test_on_cancel_on_cancelled_token_runs_now_error_bare() -> None:
    token = tc.CancellationToken()
    token.cancel()
    ran: list[int] = []
    reg = token.on_cancel(lambda: ran.append(1))
    assert ran == [1]
    assert reg.unregister() is False
    with pytest.raises(ZeroDivisionError):
        token.on_cancel(lambda: 1 / 0)


def test_registration_unregister_true_then_false() -> None:
    token = tc.CancellationToken()
    ran: list[int] = []
    reg = token.on_cancel(lambda: ran.append(1))
    assert reg.unregister() is True
    assert reg.unregister() is False
    token.cancel()
    assert ran == []


def test_registration_unregister_after_run_false() -> None:
    token = tc.CancellationToken()
    reg = token.on_cancel(lambda: None)
    token.cancel()
    assert reg.unregister() is False


def test_registration_context_manager_unregisters() -> None:
    token = tc.CancellationToken()
    ran: list[int] = []
    with token.on_cancel(lambda: ran.append(1)) as reg:
        assert isinstance(reg, tc.Registration)
    token.cancel()
    assert ran == []


def test_on_cancel_rejects_non_callable() -> None:
    with pytest.raises(TypeError, match="needs a callable"):
        tc.CancellationToken().on_cancel("no")  # type: ignore[arg-type]


def test_on_cancel_callback_may_cancel_other_tokens() -> None:
    a, b = tc.CancellationToken(), tc.CancellationToken()
    a.on_cancel(lambda: b.cancel("chained"))
    a.cancel()
    assert b.reason == "chained"


def test_classes_have_no_public_constructor() -> None:
    token = tc.CancellationToken()
    with pytest.raises(TypeError, match="no public constructor"):
        tc.Registration(token, print)
    with pytest.raises(TypeError, match="no public constructor"):
        tc.DropGuard(token, None)


# ---------------------------------------------------------------- wait_cancelled


async def test_wait_cancelled_returns_at_once_with_checkpoint() -> None:
    token = tc.CancellationToken()
    token.cancel()
    with trio.testing.assert_checkpoints():
        await token.wait_cancelled()


async def test_wait_cancelled_wakes_every_waiter(nursery: trio.Nursery) -> None:
    token = tc.CancellationToken()
    child = token.child_token()
    woken: list[int] = []

    async def waiter(i: int, tok: tc.CancellationToken) -> None:
        await tok.wait_cancelled()
        woken.append(i)

    for i in range(5):
        nursery.start_soon(waiter, i, child if i % 2 else token)
    await trio.testing.wait_all_tasks_blocked()
    assert woken == []
    token.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(woken) == [0, 1, 2, 3, 4]


async def test_wait_cancelled_is_cancellable_and_binds_nothing() -> None:
    token = tc.CancellationToken()
    with trio.move_on_after(1) as outer:
        await token.wait_cancelled()
    assert outer.cancelled_caught
    assert not token.is_cancelled()


async def test_wait_cancelled_cancelled_before_call() -> None:
    token = tc.CancellationToken()
    with trio.CancelScope() as cs:
        cs.cancel()
        await token.wait_cancelled()
        pytest.fail("not reached")  # pragma: no cover
    assert cs.cancelled_caught


async def test_wait_cancelled_in_autojump_time(autojump_clock: trio.testing.MockClock) -> None:
    token = tc.CancellationToken()
    token.cancel_after(2.5)
    start = trio.current_time()
    await token.wait_cancelled()
    assert trio.current_time() - start == 2.5


# ---------------------------------------------------------------- cancel_scope


async def test_cancel_scope_absorbs_token_cancellation_with_reason() -> None:
    token = tc.CancellationToken()
    seen: list[trio.Cancelled] = []
    with token.cancel_scope() as cs:
        token.cancel("stop now")
        try:
            await trio.sleep_forever()
        except trio.Cancelled as exc:
            seen.append(exc)
            raise
    assert cs.cancelled_caught
    assert seen[0].reason == "stop now"
    assert seen[0].source == "explicit"


async def test_cancel_scope_binds_cancel_scope_object() -> None:
    token = tc.CancellationToken()
    with token.cancel_scope() as cs:
        assert isinstance(cs, trio.CancelScope)
        assert not cs.cancel_called
    assert not cs.cancelled_caught


async def test_cancel_scope_already_cancelled_cancels_at_first_checkpoint() -> None:
    token = tc.CancellationToken()
    token.cancel("early")
    reached: list[str] = []
    with token.cancel_scope() as cs:
        reached.append("before checkpoint")
        await trio.lowlevel.checkpoint()
        reached.append("after checkpoint")  # pragma: no cover
    assert reached == ["before checkpoint"]
    assert cs.cancelled_caught


async def test_cancel_scope_cancelled_from_another_task(nursery: trio.Nursery) -> None:
    token = tc.CancellationToken()

    async def canceller() -> None:
        await trio.sleep(1)
        token.cancel("from elsewhere")

    nursery.start_soon(canceller)
    with token.cancel_scope() as cs:
        await trio.sleep_forever()
    assert cs.cancelled_caught


async def test_cancel_scope_outside_cancellation_propagates() -> None:
    token = tc.CancellationToken()
    with trio.CancelScope() as outer:
        with token.cancel_scope() as inner:
            outer.cancel("outer")
            await trio.sleep_forever()
        pytest.fail("outer cancellation was absorbed")  # pragma: no cover
    assert outer.cancelled_caught
    assert not inner.cancelled_caught
    assert not token.is_cancelled()


async def test_cancel_scope_enter_exit_are_not_checkpoints() -> None:
    token = tc.CancellationToken()
    with trio.testing.assert_no_checkpoints(), token.cancel_scope():
        pass


async def test_cancel_scope_unregistered_on_exit() -> None:
    token = tc.CancellationToken()
    with token.cancel_scope():
        assert "1 scope" in repr(token)
    assert repr(token) == "<CancellationToken live>"
    with pytest.raises(ValueError, match="in body"), token.cancel_scope():
        raise ValueError("in body")
    assert repr(token) == "<CancellationToken live>"


async def test_cancel_scope_reentry_rejected() -> None:
    bound = tc.CancellationToken().cancel_scope()
    with bound:
        pass
    with pytest.raises(RuntimeError, match="already entered"), bound:
        pass  # pragma: no cover


async def test_cancel_scope_nested_parent_and_child() -> None:
    parent = tc.CancellationToken()
    child = parent.child_token()
    with parent.cancel_scope() as outer:
        with child.cancel_scope() as inner:
            child.cancel("child only")
            await trio.sleep_forever()
        assert inner.cancelled_caught
        assert not outer.cancel_called
        with child.cancel_scope() as late:  # child already cancelled
            await trio.lowlevel.checkpoint()
        assert late.cancelled_caught
        parent.cancel("parent")
        await trio.sleep_forever()
    assert outer.cancelled_caught


async def test_cancel_scope_child_scope_cancelled_by_parent_token() -> None:
    parent = tc.CancellationToken()
    child = parent.child_token()
    with parent.cancel_scope() as outer:
        with child.cancel_scope() as inner:
            parent.cancel("parent")
            await trio.sleep_forever()
        pytest.fail("outer scope also cancelled: must stop here")  # pragma: no cover
    # Both scopes are cancelled; as in Trio, the outermost cancelled scope catches.
    assert inner.cancel_called
    assert not inner.cancelled_caught
    assert outer.cancelled_caught


async def test_cancel_scope_token_fires_during_shielded_cleanup(
    autojump_clock: trio.testing.MockClock,
) -> None:
    token = tc.CancellationToken()
    cleaned: list[str] = []
    with token.cancel_scope() as cs:
        with trio.CancelScope(shield=True):
            token.cancel("during cleanup")
            await trio.sleep(1)
            cleaned.append("cleanup finished")
        await trio.lowlevel.checkpoint()
        pytest.fail("not reached")  # pragma: no cover
    assert cleaned == ["cleanup finished"]
    assert cs.cancelled_caught


# ---------------------------------------------------------------- fail_scope


async def test_fail_scope_raises_operation_cancelled() -> None:
    token = tc.CancellationToken()

    async def body() -> None:
        with token.fail_scope():
            token.cancel("too late", cause=KeyError("job"))
            await trio.sleep_forever()

    with pytest.raises(tc.OperationCancelledError) as info:
        await body()
    assert info.value.reason == "too late"
    assert isinstance(info.value.cause, KeyError)


async def test_fail_scope_body_finishing_before_checkpoint_raises_nothing() -> None:
    token = tc.CancellationToken()
    with token.fail_scope() as cs:
        token.cancel("fired")
    assert cs.cancel_called
    assert not cs.cancelled_caught


async def test_fail_scope_outside_cancellation_is_not_converted() -> None:
    token = tc.CancellationToken()
    with trio.CancelScope() as outer, token.fail_scope():
        outer.cancel()
        await trio.sleep_forever()
    assert outer.cancelled_caught


async def test_fail_scope_scope_cancelled_by_hand_still_fails() -> None:
    token = tc.CancellationToken()

    async def body() -> None:
        with token.fail_scope() as cs:
            cs.cancel()
            await trio.lowlevel.checkpoint()

    with pytest.raises(tc.OperationCancelledError) as info:
        await body()
    assert info.value.reason is None
    assert not token.is_cancelled()


async def test_fail_scope_body_exception_propagates_unchanged() -> None:
    token = tc.CancellationToken()
    with pytest.raises(KeyError), token.fail_scope():
        raise KeyError("body")


async def test_fail_scope_already_cancelled_token() -> None:
    token = tc.CancellationToken()
    token.cancel("early")
    with pytest.raises(tc.OperationCancelledError, match="early"), token.fail_scope():
        await trio.lowlevel.checkpoint()


# ---------------------------------------------------------------- run_until_cancelled


async def test_run_until_cancelled_returns_value() -> None:
    async def work(x: int, y: int) -> int:
        await trio.lowlevel.checkpoint()
        return x + y

    assert await tc.CancellationToken().run_until_cancelled(work, 2, 3) == 5


async def test_run_until_cancelled_token_fires_returns_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    token = tc.CancellationToken()
    token.cancel_after(1)
    steps: list[str] = []

    async def work() -> str:
        steps.append("started")
        await trio.sleep(10)
        steps.append("finished")  # pragma: no cover
        return "value"  # pragma: no cover

    assert await token.run_until_cancelled(work) is None
    assert steps == ["started"]
    assert trio.current_time() == 1


async def test_run_until_cancelled_already_cancelled_never_starts() -> None:
    token = tc.CancellationToken()
    token.cancel()
    started: list[bool] = []

    async def work() -> int:
        started.append(True)  # pragma: no cover
        return 1  # pragma: no cover

    with trio.testing.assert_checkpoints():
        assert await token.run_until_cancelled(work) is None
    assert started == []


async def test_run_until_cancelled_value_after_fire_before_checkpoint_kept() -> None:
    token = tc.CancellationToken()

    async def work() -> str:
        token.cancel("fired while finishing")
        return "kept"

    assert await token.run_until_cancelled(work) == "kept"


async def test_run_until_cancelled_is_a_checkpoint_without_inner_checkpoint() -> None:
    async def quick() -> int:
        return 7

    with trio.testing.assert_checkpoints():
        assert await tc.CancellationToken().run_until_cancelled(quick) == 7


async def test_run_until_cancelled_outside_cancellation_propagates() -> None:
    token = tc.CancellationToken()
    with trio.CancelScope() as outer:
        outer.cancel()
        await token.run_until_cancelled(trio.sleep_forever)
        pytest.fail("not reached")  # pragma: no cover
    assert outer.cancelled_caught
    with trio.move_on_after(0.01) as outer2:
        await token.run_until_cancelled(trio.sleep_forever)
    assert outer2.cancelled_caught


async def test_run_until_cancelled_exception_propagates() -> None:
    async def fails() -> None:
        await trio.lowlevel.checkpoint()
        raise KeyError("inner")

    with pytest.raises(KeyError, match="inner"):
        await tc.CancellationToken().run_until_cancelled(fails)


# ---------------------------------------------------------------- drop_guard


def test_drop_guard_cancels_on_normal_exit() -> None:
    token = tc.CancellationToken()
    with token.drop_guard("block done") as guard:
        assert isinstance(guard, tc.DropGuard)
        assert guard.token is token
        assert not token.is_cancelled()
    assert token.reason == "block done"


def test_drop_guard_cancels_on_exception() -> None:
    token = tc.CancellationToken()
    with pytest.raises(KeyError), token.drop_guard():
        raise KeyError("body")
    assert token.is_cancelled()


def test_drop_guard_disarm_returns_token_keeps_live() -> None:
    token = tc.CancellationToken()
    with token.drop_guard() as guard:
        assert guard.disarm() is token
    assert not token.is_cancelled()
    assert "disarmed" in repr(guard)


def test_drop_guard_rejects_bad_reason() -> None:
    with pytest.raises(TypeError, match="reason"):
        tc.CancellationToken().drop_guard(b"x")  # type: ignore[arg-type]


def test_drop_guard_callback_error_and_body_error_both_propagate() -> None:
    token = tc.CancellationToken()
    token.on_cancel(lambda: 1 / 0)
    with (
        pytest.RaisesGroup(KeyError, pytest.RaisesGroup(ZeroDivisionError)),
        token.drop_guard(),
    ):
        raise KeyError("body")


def test_drop_guard_callback_error_alone_propagates_group() -> None:
    token = tc.CancellationToken()
    token.on_cancel(lambda: 1 / 0)
    with pytest.RaisesGroup(ZeroDivisionError), token.drop_guard():
        pass


async def test_drop_guard_async_with_cancelled_from_outside() -> None:
    token = tc.CancellationToken()
    with trio.CancelScope() as outer:
        async with token.drop_guard("outer cancel"):
            outer.cancel()
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert token.reason == "outer cancel"


async def test_drop_guard_async_with_cancelled_before_entering() -> None:
    token = tc.CancellationToken()
    body: list[bool] = []
    with trio.CancelScope() as outer:
        outer.cancel()
        async with token.drop_guard():
            body.append(True)  # pragma: no cover
    assert body == []
    assert token.is_cancelled()


async def test_drop_guard_async_with_normal_exit() -> None:
    token = tc.CancellationToken()
    async with token.drop_guard() as guard:
        await trio.lowlevel.checkpoint()
    assert guard.token.is_cancelled()


# ---------------------------------------------------------------- cancel_after


def test_cancel_after_outside_run_is_runtime_error() -> None:
    with pytest.raises(RuntimeError, match=r"inside trio\.run"):
        tc.CancellationToken().cancel_after(1)


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan])
async def test_cancel_after_rejects_bad_delay(bad: float) -> None:
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        tc.CancellationToken().cancel_after(bad)


async def test_cancel_after_rejects_non_number() -> None:
    with pytest.raises(TypeError, match="seconds must be a number"):
        tc.CancellationToken().cancel_after("1")  # type: ignore[arg-type]


async def test_cancel_after_fires_on_virtual_clock(autojump_clock: trio.testing.MockClock) -> None:
    token = tc.CancellationToken()
    child = token.child_token()
    token.cancel_after(3, "deadline")
    with child.cancel_scope() as cs:
        await trio.sleep(100)
    assert cs.cancelled_caught
    assert trio.current_time() == 3
    assert child.reason == "deadline"


async def test_cancel_after_later_call_replaces(autojump_clock: trio.testing.MockClock) -> None:
    token = tc.CancellationToken()
    token.cancel_after(5, "first")
    token.cancel_after(2, "second")
    await token.wait_cancelled()
    assert trio.current_time() == 2
    assert token.reason == "second"

    token2 = tc.CancellationToken()
    token2.cancel_after(1, "short")
    token2.cancel_after(7, "long")
    await token2.wait_cancelled()
    assert trio.current_time() == 2 + 7
    assert token2.reason == "long"


async def test_cancel_after_zero_cancels_promptly(autojump_clock: trio.testing.MockClock) -> None:
    token = tc.CancellationToken()
    token.cancel_after(0, "now")
    assert not token.is_cancelled()  # not inside the call
    await trio.testing.wait_all_tasks_blocked()
    assert token.reason == "now"
    assert trio.current_time() == 0


async def test_cancel_after_on_cancelled_token_is_noop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    token = tc.CancellationToken()
    token.cancel("first")
    token.cancel_after(1, "timer")
    await trio.sleep(2)
    assert token.reason == "first"


async def test_cancel_after_cancelled_early_drops_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    token = tc.CancellationToken()
    token.cancel_after(1, "timer")
    token.cancel("manual")
    await trio.sleep(2)
    assert token.reason == "manual"


async def test_cancel_after_many_tokens_fire_in_deadline_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[int, float]] = []
    tokens = [tc.CancellationToken() for _ in range(5)]
    for i, tok in enumerate(tokens):
        tok.on_cancel(functools.partial(lambda i: fired.append((i, trio.current_time())), i))
    for i, delay in enumerate([4, 1, 3, 1, 2]):
        tokens[i].cancel_after(delay)
    await trio.sleep(10)
    assert [i for i, _ in fired] == [1, 3, 4, 2, 0]
    assert [t for _, t in fired] == [1, 1, 2, 3, 4]


def test_cancel_after_pending_timer_does_not_keep_run_alive() -> None:
    token = tc.CancellationToken()

    async def main() -> None:
        token.cancel_after(3600, "never")
        await trio.lowlevel.checkpoint()

    trio.run(main)  # returns at once: the timer task is a system task
    assert not token.is_cancelled()


async def test_cancel_after_callback_error_is_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    token = tc.CancellationToken()
    token.on_cancel(lambda: 1 / 0)
    token.cancel_after(1)
    with caplog.at_level(logging.ERROR, logger="trio_cancel"):
        await trio.sleep(2)
    assert token.is_cancelled()
    assert "on_cancel callback raised" in caplog.text
    assert "ZeroDivisionError" in caplog.text


# ---------------------------------------------------------------- threads, run boundaries


async def test_cancel_from_worker_thread_via_from_thread() -> None:
    token = tc.CancellationToken()

    def in_thread() -> None:
        trio.from_thread.run_sync(token.cancel, "from a thread")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, in_thread)
        with token.cancel_scope() as cs:
            await trio.sleep_forever()
    assert cs.cancelled_caught
    assert token.reason == "from a thread"


def test_cancel_after_trio_run_ended() -> None:
    token = tc.CancellationToken()
    child = token.child_token()

    async def main() -> None:
        child.cancel_after(10)
        with child.cancel_scope():
            await trio.lowlevel.checkpoint()
        await token.run_until_cancelled(trio.lowlevel.checkpoint)

    trio.run(main)
    token.cancel("after the run")  # plain data again: no scope, no timer, no error
    assert child.reason == "after the run"


def test_token_reusable_across_runs() -> None:
    token = tc.CancellationToken()

    async def main() -> bool:
        with token.cancel_scope() as cs:
            token.cancel_after(1, "second run timer")
            await trio.sleep_forever()
        return cs.cancelled_caught

    clock = trio.testing.MockClock(autojump_threshold=0)
    assert trio.run(main, clock=clock) is True
    assert token.reason == "second run timer"


async def test_cancelled_carries_reason_and_cancelling_task() -> None:
    token = tc.CancellationToken()
    seen: list[trio.Cancelled] = []
    with token.cancel_scope():
        token.cancel("why")
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            seen.append(exc)
            raise
    assert seen[0].reason == "why"
    assert seen[0].source == "explicit"
    assert seen[0].source_task == repr(trio.lowlevel.current_task())


async def test_cancel_bound_scope_that_has_a_deadline(autojump_clock: trio.abc.Clock) -> None:
    # A scope with a registered deadline takes Trio's own path (its deadline is unregistered);
    # the token's reason wins over the deadline that never came.
    token = tc.CancellationToken()
    seen: list[trio.Cancelled] = []
    start = trio.current_time()
    with token.cancel_scope() as cs:
        cs.deadline = start + 100
        token.cancel("before the deadline")
        try:
            await trio.sleep(1)
        except trio.Cancelled as exc:
            seen.append(exc)
            raise
    assert cs.cancelled_caught
    assert seen[0].reason == "before the deadline"
    assert trio.current_time() == start
    await trio.sleep(200)  # the old deadline firing now would find nothing to cancel


async def test_cancel_reaches_shielded_and_nested_bound_scopes_alike(nursery: trio.Nursery) -> None:
    token = tc.CancellationToken()
    caught: list[str] = []

    async def body(name: str, shield: bool) -> None:
        with token.cancel_scope() as outer:
            with trio.CancelScope(shield=shield), token.child_token().cancel_scope() as inner:
                await trio.sleep_forever()
            caught.append(f"{name}: inner={inner.cancelled_caught}")
            await trio.sleep_forever()
        caught.append(f"{name}: outer={outer.cancelled_caught}")

    nursery.start_soon(body, "plain", False)
    nursery.start_soon(body, "shielded", True)
    await trio.testing.wait_all_tasks_blocked()
    token.cancel("all")
    await trio.testing.wait_all_tasks_blocked()
    # Trio's rule: an inner scope catches only what its parent cannot see. Unshielded, the
    # outer scope is cancelled too, so the Cancelled goes past the inner block to the outer.
    assert sorted(caught) == [
        "plain: outer=True",
        "shielded: inner=True",
        "shielded: outer=True",
    ]


async def test_many_scopes_and_waiters_on_one_token(nursery: trio.Nursery) -> None:
    token = tc.CancellationToken()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await token.wait_cancelled()
        woken.append(i)

    for i in range(3):
        nursery.start_soon(waiter, i)
    await trio.testing.wait_all_tasks_blocked()
    with token.cancel_scope() as a, token.cancel_scope() as b, token.cancel_scope() as c:
        assert repr(token) == "<CancellationToken live, 3 scopes>"
        with trio.move_on_after(0.01):
            await token.wait_cancelled()  # a waiter that leaves again
        token.cancel("all")
        await trio.lowlevel.checkpoint()
    assert all(cs.cancel_called for cs in (a, b, c))
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(woken) == [0, 1, 2]


async def test_mass_cancel_runs_keyboard_interrupt_protected(nursery: trio.Nursery) -> None:
    # As CancelScope.cancel() is: a Ctrl-C cannot land between marking a scope cancelled and
    # delivering that to its task. Seen from an abort function, which cancel() reaches.
    token = tc.CancellationToken()
    protected: list[bool] = []

    async def parked() -> None:
        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            protected.append(trio.lowlevel.currently_ki_protected())
            return trio.lowlevel.Abort.SUCCEEDED

        with token.cancel_scope():
            await trio.lowlevel.wait_task_rescheduled(abort)

    nursery.start_soon(parked)
    await trio.testing.wait_all_tasks_blocked()
    token.cancel("ctrl-c proof")
    assert protected == [True]


# ---------------------------------------------------------------- reliability regressions


@pytest.fixture
def python_sigint_handler() -> Iterator[None]:
    """Python's own SIGINT handler, as in a terminal: a background job starts with SIGINT
    ignored, and then neither Python nor Trio turns a SIGINT into KeyboardInterrupt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_sigint_handler")
def test_cancel_keyboard_interrupt_lands_after_the_whole_tree() -> None:
    """A Ctrl+C during cancel() never leaves a half-cancelled tree: it is delivered after."""
    seen: list[object] = []

    async def main() -> None:
        root = tc.CancellationToken()
        first = root.child_token()
        later = [root.child_token() for _ in range(1000)]
        first.on_cancel(lambda: signal.raise_signal(signal.SIGINT))
        later[-1].on_cancel(lambda: seen.append("last callback"))
        with pytest.raises(KeyboardInterrupt):
            root.cancel("stop")  # the SIGINT arrives in the first callback
            seen.append(sum(t.is_cancelled() for t in later))
            await trio.lowlevel.checkpoint()  # ...and is raised here, at the next checkpoint

    trio.run(main)
    assert seen == ["last callback", 1000]


def test_bool_of_token_raises() -> None:
    token = tc.CancellationToken()
    with pytest.raises(TypeError, match="is_cancelled"):
        bool(token)
    with pytest.raises(TypeError):
        if token:
            pass


def _ki_protected(fn: object) -> bool:
    ki = getattr(getattr(trio, "_core", None), "_ki", None)
    table = getattr(ki, "_CODE_KI_PROTECTION_STATUS_WMAP", None)
    if table is None:  # pragma: no cover - another Trio marks protection differently
        pytest.skip("this Trio does not keep KI protection in a code table")
    try:
        return bool(table[fn.__code__])  # type: ignore[attr-defined]
    except KeyError:
        return False


@pytest.mark.parametrize(
    "method",
    [
        tc.CancellationToken.cancel,
        tc.CancellationToken.child_token,
        tc.CancellationToken.on_cancel,
        tc.CancellationToken.cancel_after,
        tc.Registration.unregister,
        tc.TaskHandle.abort,
        tc.JoinSet.abort_all,
        tc.OneshotSender.send,
        tc.OneshotSender.close,
        tc.BroadcastSender.send,
        tc.WatchSender.send,
        tc.WatchSender.send_replace,
        tc.WatchSender.send_modify,
        tc.Notify.notify_one,
        tc.Notify.notify_waiters,
        tc.GracefulShutdown.trigger,
        tc.GracefulShutdown.force,
    ],
    ids=lambda m: m.__qualname__,
)
def test_state_changing_sync_calls_are_ki_protected(method: object) -> None:
    assert _ki_protected(method)


async def test_cancel_from_another_thread_changes_nothing_and_retry_does_it_all() -> None:
    token = tc.CancellationToken()
    ran: list[str] = []
    token.on_cancel(lambda: ran.append("callback"))
    trio_token = trio.lowlevel.current_trio_token()
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            token.cancel("from thread")
        except RuntimeError as exc:
            errors.append(exc)
        assert not token.is_cancelled()
        trio.from_thread.run_sync(token.cancel, "retried", trio_token=trio_token)

    with token.cancel_scope() as cs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, in_thread)
            await trio.sleep_forever()
    assert cs.cancelled_caught
    assert len(errors) == 1
    assert "Trio thread" in str(errors[0])
    assert token.reason == "retried"
    assert ran == ["callback"]


def test_cancel_outside_trio_run_with_nothing_bound_still_works() -> None:
    token = tc.CancellationToken()
    child = token.child_token()
    ran: list[int] = []
    child.on_cancel(lambda: ran.append(1))
    token.cancel("plain data")
    assert child.reason == "plain data"
    assert ran == [1]


def test_cancel_after_callback_system_exit_propagates_out_of_run() -> None:
    async def main() -> None:
        token = tc.CancellationToken()
        token.on_cancel(lambda: sys.exit(3))
        token.cancel_after(0.01)
        await trio.sleep(1)

    with pytest.raises(SystemExit) as info:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert info.value.code == 3


def test_cancel_after_callback_keyboard_interrupt_propagates_out_of_run() -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    async def main() -> None:
        token = tc.CancellationToken()
        token.on_cancel(interrupt)
        token.cancel_after(0.01)
        await trio.sleep(1)

    with pytest.raises(KeyboardInterrupt):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_cancel_after_rearmed_keeps_flat_memory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    token = tc.CancellationToken()
    token.cancel_after(30)
    await trio.lowlevel.checkpoint()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200_000):  # an idle timeout re-armed on every message
            token.cancel_after(30)
            if i % 10_000 == 0:
                await trio.lowlevel.checkpoint()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, grown  # was ~30 MB: every replaced timer stayed in the heap
    token.cancel()


async def test_cancel_after_cancelled_early_releases_timer_and_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):  # request tokens with a 1 h timeout, done in a moment
            request = tc.CancellationToken()
            request.cancel_after(3600)
            request.cancel("request finished")
        del request
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, grown  # was ~2.6 MB kept for an hour


async def test_fired_timer_keeps_no_token_alive(autojump_clock: trio.testing.MockClock) -> None:
    token = tc.CancellationToken()
    token.cancel_after(1)
    ref = weakref.ref(token)
    await trio.sleep(2)
    assert token.is_cancelled()
    del token
    gc.collect()
    assert ref() is None


def test_unregister_from_another_callback_on_the_same_token() -> None:
    token = tc.CancellationToken()
    ran: list[str] = []
    second: list[tc.Registration] = []

    def first() -> None:
        ran.append("first")
        second.append(registration)

    token.on_cancel(first)
    registration = token.on_cancel(lambda: ran.append("second"))
    results: list[bool] = []
    token.on_cancel(lambda: results.append(second[0].unregister()))  # runs after 'second'
    token2 = tc.CancellationToken()
    reg_b = token2.on_cancel(lambda: ran.append("never"))
    token2.on_cancel(lambda: ran.append("b-first"))
    token.cancel()
    assert ran == ["first", "second"]
    assert results == [False]  # it had already run

    # the case of the report: the earlier callback unregisters a later one on the same token
    calls: list[str] = []
    token3 = tc.CancellationToken()
    holder: list[tc.Registration] = []
    token3.on_cancel(lambda: calls.append(f"unregister={holder[0].unregister()}"))
    holder.append(token3.on_cancel(lambda: calls.append("later ran")))
    token3.cancel()
    assert calls == ["unregister=True"]
    assert holder[0].unregister() is False
    del reg_b


def test_cancel_after_huge_delay_is_value_error() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="too large"):
            tc.CancellationToken().cancel_after(10**400)

    trio.run(main)


def test_on_cancel_rejects_async_function() -> None:
    async def stop() -> None:
        pass

    token = tc.CancellationToken()
    with pytest.raises(TypeError, match="async function"):
        token.on_cancel(stop)
    with pytest.raises(TypeError, match="async function"):
        token.on_cancel(functools.partial(stop))
    token.cancel()  # nothing was registered: no coroutine is left never awaited


# ---------------------------------------------------------------- the collector, large cancels


def _big_tree(n: int = 2000) -> tuple[tc.CancellationToken, list[tc.CancellationToken]]:
    root = tc.CancellationToken()
    return root, [root.child_token() for _ in range(n)]


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*saved)


@pytest.fixture
def no_disable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library never disables or enables the collector."""

    def refuse() -> None:
        raise AssertionError("gc.disable()/gc.enable() called")

    monkeypatch.setattr(gc, "disable", refuse)
    monkeypatch.setattr(gc, "enable", refuse)


def _record_set_threshold(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    real = gc.set_threshold

    def record(*args: int) -> None:
        calls.append(args)
        real(*args)

    monkeypatch.setattr(gc, "set_threshold", record)
    return calls


@pytest.mark.usefixtures("thresholds", "no_disable")
async def test_large_cancel_pauses_the_collector_by_thresholds_and_restores_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, children = _big_tree()
    seen_in_callback: list[tuple[int, int, int]] = []
    children[-1].on_cancel(lambda: seen_in_callback.append(gc.get_threshold()))
    calls = _record_set_threshold(monkeypatch)
    root.cancel("big")
    paused = (_collector.DEFERRED, 10, _collector.DEFERRED)
    assert calls == [paused, (700, 10, 10)]
    assert seen_in_callback == [(700, 10, 10)]  # callbacks (user code) run as the program set
    small_root, _ = _big_tree(10)
    calls.clear()
    small_root.cancel()
    assert calls == []  # a small cancel leaves the collector alone


@pytest.mark.usefixtures("thresholds", "no_disable")
def test_large_cancel_outside_a_run_leaves_the_collector_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _record_set_threshold(monkeypatch)
    root, _ = _big_tree()
    root.cancel("plain data")
    assert calls == []  # only the Trio thread's bounded section may pause it


@pytest.mark.usefixtures("thresholds")
async def test_large_cancel_leaves_a_disabled_collector_disabled() -> None:
    root, _ = _big_tree()
    gc.disable()
    try:
        root.cancel("big")
        assert not gc.isenabled()
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.enable()


@pytest.mark.usefixtures("thresholds", "no_disable")
async def test_large_cancel_restores_the_collector_when_a_callback_raises() -> None:
    root, children = _big_tree()

    def boom() -> None:
        raise ValueError("callback")

    children[0].on_cancel(boom)
    with pytest.raises(ExceptionGroup):
        root.cancel("big")
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.usefixtures("thresholds")
@pytest.mark.parametrize("change", ["set_threshold", "disable"])
async def test_large_cancel_keeps_what_the_program_changed_during_the_pause(
    change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread that changes the collector while cancel() pauses it keeps its change
    (simulated at the one point where the pause is sure to be on: cancelling the scopes)."""
    real = _trio_internals.cancel_scopes

    def meddling(scopes: list[trio.CancelScope], reason: str | None) -> tuple[object, ...]:
        assert gc.get_threshold()[0] == _collector.DEFERRED  # the pause is on
        if change == "set_threshold":
            gc.set_threshold(500, 5, 5)
        else:
            gc.disable()
        return real(scopes, reason)  # the reasons it created (trio_cancel.otel records them)

    monkeypatch.setattr(_token_module, "cancel_scopes", meddling)
    root, children = _big_tree()
    try:
        with children[0].cancel_scope():
            root.cancel("big")
        if change == "set_threshold":
            assert gc.get_threshold() == (500, 5, 5)
            assert gc.isenabled()
        else:
            assert not gc.isenabled()
            assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.enable()


@pytest.mark.usefixtures("thresholds")
async def test_large_cancel_from_another_thread_restores_the_collector() -> None:
    root, children = _big_tree()
    with children[0].cancel_scope():
        with pytest.raises(RuntimeError, match="Trio thread"):
            await trio.to_thread.run_sync(root.cancel, "from a thread")
        assert gc.get_threshold() == (700, 10, 10)
        assert gc.isenabled()
        assert not root.is_cancelled()  # nothing changed: the retry does it all
        root.cancel("from the Trio thread")
        await trio.lowlevel.checkpoint()


def test_the_pause_is_keyboard_interrupt_protected() -> None:
    assert _ki_protected(_collector.pause_collector)
    assert _ki_protected(_collector.resume_collector)


# ---------------------------------------------------------------- foreign threads, decided


async def test_foreign_cancel_of_a_tree_used_in_the_run_is_refused_with_nothing_registered() -> (
    None
):
    """The decision does not depend on what is registered at that moment: a scope that was
    bound and has left still makes the tree the run's."""
    root = tc.CancellationToken()
    child = root.child_token()
    with child.cancel_scope():
        await trio.lowlevel.checkpoint()
    assert "scope" not in repr(child)  # nothing registered any more
    with pytest.raises(RuntimeError, match="Trio thread"):
        await trio.to_thread.run_sync(root.cancel, "from a thread")
    with pytest.raises(RuntimeError, match="Trio thread"):
        await trio.to_thread.run_sync(child.cancel, "from a thread")
    assert not root.is_cancelled()
    assert not child.is_cancelled()
    await trio.to_thread.run_sync(lambda: trio.from_thread.run_sync(root.cancel, "retried"))
    assert child.reason == "retried"


@pytest.mark.parametrize("use", ["wait_cancelled", "cancel_after", "on_cancel", "any"])
async def test_foreign_cancel_refused_for_every_kind_of_use(use: str) -> None:
    root = tc.CancellationToken()
    grandchild = root.child_token().child_token()
    if use == "wait_cancelled":
        with trio.CancelScope() as cs:
            cs.cancel()
            await grandchild.wait_cancelled()  # parked, then cancelled at once
    elif use == "cancel_after":
        grandchild.cancel_after(3600)
    elif use == "on_cancel":
        grandchild.on_cancel(lambda: None)
    else:
        other = tc.CancellationToken()
        with tc.CancellationToken.any(other, grandchild).cancel_scope():
            await trio.lowlevel.checkpoint()
        with pytest.raises(RuntimeError, match="Trio thread"):
            await trio.to_thread.run_sync(other.cancel)
    with pytest.raises(RuntimeError, match="Trio thread"):
        await trio.to_thread.run_sync(root.cancel)
    assert not grandchild.is_cancelled()
    root.cancel("from the Trio thread")
    assert grandchild.reason == "from the Trio thread"


async def test_foreign_cancel_never_marks_then_unmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before anything changes: no token of the tree is ever seen cancelled (the old
    mark-then-undo let the Trio thread see transient marks, and children created meanwhile
    were born cancelled for good)."""
    root, children = _big_tree(50)
    seen: list[bool] = []
    real_live = _token_module._live

    def spy(refs: list[weakref.ref[tc.CancellationToken]] | None) -> list[tc.CancellationToken]:
        seen.append(root.is_cancelled())
        return real_live(refs)

    monkeypatch.setattr(_token_module, "_live", spy)
    with children[-1].cancel_scope(), pytest.raises(RuntimeError):
        await trio.to_thread.run_sync(root.cancel, "from a thread")
    assert True not in seen
    assert not root.child_token().is_cancelled()
    assert not any(child.is_cancelled() for child in children)


def test_foreign_cancel_of_a_tree_never_used_in_a_run_is_allowed() -> None:
    import threading

    root = tc.CancellationToken()
    child = root.child_token()
    ran: list[str] = []
    child.on_cancel(lambda: ran.append(threading.current_thread().name))

    async def main() -> None:
        other = tc.CancellationToken()  # a run is live, but this tree was never used in it
        with other.cancel_scope():
            await trio.to_thread.run_sync(root.cancel, "from a thread")

    trio.run(main)
    assert child.reason == "from a thread"
    assert len(ran) == 1
    assert ran[0] != threading.current_thread().name


def test_foreign_cancel_after_the_run_ended_is_allowed() -> None:
    import threading

    root = tc.CancellationToken()

    async def main() -> None:
        with root.child_token().cancel_scope():
            await trio.lowlevel.checkpoint()
        root.child_token().on_cancel(lambda: None)

    trio.run(main)
    thread = threading.Thread(target=root.cancel, args=("after the run",))
    thread.start()
    thread.join()
    assert root.reason == "after the run"


def test_cancel_from_the_thread_of_another_live_run_is_refused() -> None:
    import threading

    root = tc.CancellationToken()
    errors: list[BaseException] = []
    used = threading.Event()
    done = threading.Event()

    async def first() -> None:
        with root.cancel_scope():
            used.set()
            await trio.to_thread.run_sync(done.wait)

    async def second() -> None:
        await trio.to_thread.run_sync(used.wait)
        try:
            root.cancel("from another run")
        except RuntimeError as exc:
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=trio.run, args=(first,))
    thread.start()
    trio.run(second)
    thread.join()
    assert len(errors) == 1
    assert not root.is_cancelled()


# ---------------------------------------------------------------- Ctrl+C in bound scopes


@pytest.mark.parametrize("kind", ["cancel_scope", "fail_scope"])
def test_ctrl_c_between_registering_and_entering_a_bound_scope(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tc.CancellationToken()
    real = tc.CancellationToken._add_scope
    reached: list[str] = []

    def register_then_ctrl_c(self: tc.CancellationToken, cs: trio.CancelScope) -> None:
        real(self, cs)
        signal.raise_signal(signal.SIGINT)  # lands here unless the enter is protected

    monkeypatch.setattr(tc.CancellationToken, "_add_scope", register_then_ctrl_c)

    async def main() -> None:
        with getattr(token, kind)():
            reached.append("body")
            await trio.lowlevel.checkpoint()  # a protected enter delivers it here
            reached.append("after the checkpoint")

    with pytest.raises(KeyboardInterrupt):
        trio.run(main)
    assert reached == ["body"]
    assert token._scopes is None  # the scope that was registered was also left


@pytest.mark.parametrize("kind", ["cancel_scope", "fail_scope"])
def test_ctrl_c_between_unregistering_and_leaving_a_bound_scope(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tc.CancellationToken()
    real = tc.CancellationToken._discard_scope
    reached: list[str] = []

    def unregister_then_ctrl_c(self: tc.CancellationToken, cs: trio.CancelScope) -> None:
        real(self, cs)
        signal.raise_signal(signal.SIGINT)  # lands here unless the exit is protected

    monkeypatch.setattr(tc.CancellationToken, "_discard_scope", unregister_then_ctrl_c)

    async def main() -> None:
        with getattr(token, kind)():
            pass
        reached.append("after the block")  # the scope was left: Trio's stack is intact
        await trio.lowlevel.checkpoint()

    with pytest.raises(KeyboardInterrupt):
        trio.run(main)
    assert reached == ["after the block"]
    assert token._scopes is None


def test_bound_scope_enter_and_exit_are_ki_protected() -> None:
    bound = type(tc.CancellationToken().cancel_scope())
    failing = type(tc.CancellationToken().fail_scope())
    for method in (bound.__enter__, bound.__exit__, failing.__exit__):
        assert _ki_protected(method)


# ---------------------------------------------------------------- raising callbacks, no cycle


def test_raising_callback_keeps_no_cancelled_token_alive_without_the_collector() -> None:
    def boom() -> None:
        raise ValueError("boom")

    gc.disable()
    try:
        root = tc.CancellationToken()
        kids = [root.child_token() for _ in range(3)]
        grandchild = kids[1].child_token()
        kids[0].on_cancel(boom)
        grandchild.on_cancel(boom)
        refs = [weakref.ref(token) for token in (*kids, grandchild)]
        with pytest.raises(ExceptionGroup) as info:
            root.cancel("x")
        assert len(info.value.exceptions) == 2
        del kids, grandchild
        # Even while the group and its tracebacks are held, nothing of the subtree is.
        assert [ref() for ref in refs] == [None, None, None, None]
    finally:
        gc.enable()


def test_a_cancel_from_another_thread_never_misses_a_child_being_created() -> None:
    """A tree no run uses may be cancelled from any thread while this thread makes children
    of it (and drops some, so that the list of children is compacted meanwhile): no child
    stays live under the cancelled root (invariant 4)."""
    import sys
    import threading
    import time

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for seed in range(60):
            rnd = random.Random(seed)
            root = tc.CancellationToken()
            kept = [root.child_token() for _ in range(rnd.randrange(0, 300))]
            done = threading.Event()
            delay = rnd.random() * 0.001

            def canceller(
                root: tc.CancellationToken = root,
                delay: float = delay,
                done: threading.Event = done,
            ) -> None:
                time.sleep(delay)
                root.cancel("from another thread")
                done.set()

            thread = threading.Thread(target=canceller)
            thread.start()
            made = 0
            while not done.is_set() and made < 200_000:
                child = root.child_token()
                made += 1
                if rnd.random() < 0.5:
                    kept.append(child)
            thread.join()
            assert root.is_cancelled()
            live = [k for k in kept if not k.is_cancelled()]
            assert not live, f"seed {seed}: {len(live)} live children under a cancelled root"
            assert all(k.reason == "from another thread" for k in kept)
    finally:
        sys.setswitchinterval(old)
