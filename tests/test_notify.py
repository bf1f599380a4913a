"""Tests of Notify (tokio Notify)."""

from __future__ import annotations

import trio
import trio.testing

import trio_cancel as tc


async def test_notify_one_wakes_first_in_first_out(nursery: trio.Nursery) -> None:
    notify = tc.Notify()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await notify.wait()
        woken.append(i)

    for i in range(3):
        nursery.start_soon(waiter, i)
        await trio.testing.wait_all_tasks_blocked()
    notify.notify_one()
    await trio.testing.wait_all_tasks_blocked()
    assert woken == [0]
    notify.notify_one()
    await trio.testing.wait_all_tasks_blocked()
    notify.notify_one()
    await trio.testing.wait_all_tasks_blocked()
    assert woken == [0, 1, 2]


async def test_notify_one_stores_at_most_one_permit() -> None:
    notify = tc.Notify()
    notify.notify_one()
    notify.notify_one()
    assert repr(notify) == "<Notify permit stored, 0 waiting>"
    with trio.testing.assert_checkpoints():
        await notify.wait()
    with trio.move_on_after(0.01) as scope:
        await notify.wait()  # only one permit was stored
    assert scope.cancelled_caught


async def test_notify_waiters_wakes_all_current_stores_nothing(nursery: trio.Nursery) -> None:
    notify = tc.Notify()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await notify.wait()
        woken.append(i)

    for i in range(4):
        nursery.start_soon(waiter, i)
    await trio.testing.wait_all_tasks_blocked()
    notify.notify_waiters()
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(woken) == [0, 1, 2, 3]
    with trio.move_on_after(0.01) as scope:
        await notify.wait()
    assert scope.cancelled_caught


async def test_wait_cancelled_with_permit_keeps_permit() -> None:
    notify = tc.Notify()
    notify.notify_one()
    with trio.CancelScope() as cs:
        cs.cancel()
        await notify.wait()
    assert cs.cancelled_caught
    await notify.wait()  # the permit is still there


async def test_wait_cancelled_while_waiting_does_not_swallow_notify_one(
    nursery: trio.Nursery,
) -> None:
    notify = tc.Notify()
    woken: list[str] = []

    async def cancelled_waiter(scope_box: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as cs:
            scope_box.append(cs)
            await notify.wait()
        woken.append("cancelled waiter")

    async def patient_waiter() -> None:
        await notify.wait()
        woken.append("patient waiter")

    box: list[trio.CancelScope] = []
    nursery.start_soon(cancelled_waiter, box)
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(patient_waiter)
    await trio.testing.wait_all_tasks_blocked()
    box[0].cancel()
    notify.notify_one()  # the cancelled waiter left the queue: the patient one gets it
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(woken) == ["cancelled waiter", "patient waiter"]


def test_notify_created_and_notified_outside_run() -> None:
    notify = tc.Notify()
    notify.notify_one()
    trio.run(notify.wait)
