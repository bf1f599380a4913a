"""E21: a hand-written state machine A -> B -> C and where it can be cancelled.

Source: the essay "Perspectives on Async Cancellation".

The Rust code implements ``Future`` by hand: each ``poll`` moves A -> B -> C and returns
``Pending`` until C. There is no ``.await`` in it, so the only way to cancel it is to stop
polling it (drop it); the future itself has no say.

Trio version: the low-level counterpart of a hand-written future is a task parked in
``trio.lowlevel.wait_task_rescheduled(abort_fn)``; a driver task plays the executor and wakes
it with ``trio.lowlevel.reschedule`` (the "poll"). When a cancel scope around it is cancelled,
Trio asks ``abort_fn`` whether cancellation may land now: ``Abort.SUCCEEDED`` lets the
``Cancelled`` in, ``Abort.FAILED`` refuses, and the cancellation waits for the next checkpoint.
Here state A is a cancellation point and state B is not.
"""

from __future__ import annotations

from typing import Literal

import trio

State = Literal["A", "B", "C"]
NEXT: dict[State, State] = {"A": "B", "B": "C"}


class StateMachine:
    def __init__(self, name: str, cancellable_in: set[State]) -> None:
        self.name = name
        self.state: State = "A"
        self.cancellable_in = cancellable_in
        self.task: trio.lowlevel.Task | None = None
        self.parked = False

    def _abort(self, raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        if self.state in self.cancellable_in:
            print(f"  [{self.name}] cancel requested in state {self.state}: accepted")
            self.parked = False
            return trio.lowlevel.Abort.SUCCEEDED
        print(f"  [{self.name}] cancel requested in state {self.state}: refused here")
        return trio.lowlevel.Abort.FAILED

    async def run(self) -> None:
        self.task = trio.lowlevel.current_task()
        while self.state != "C":
            self.parked = True
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        print(f"  [{self.name}] reached C")

    def poll(self) -> None:
        """The executor's poll: advance one state and wake the parked task."""
        if not self.parked or self.task is None:
            return
        self.state = NEXT[self.state]
        print(f"  [{self.name}] -> {self.state}")
        self.parked = False
        trio.lowlevel.reschedule(self.task)


async def drive(machine: StateMachine, cancel_in: State | None) -> None:
    async def target(scope_box: list[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            await machine.run()
            print(f"  [{machine.name}] run() returned; next checkpoint...")
            await trio.lowlevel.checkpoint()
            print(f"  [{machine.name}] finished without being cancelled")
        if scope.cancelled_caught:
            print(f"  [{machine.name}] cancelled (state {machine.state})")

    box: list[trio.CancelScope] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(target, box)
        while machine.state != "C":
            await trio.sleep(0.05)
            if machine.state == cancel_in and not box[0].cancel_called:
                box[0].cancel()
                await trio.sleep(0.05)
            if not machine.parked:
                break
            machine.poll()


async def main() -> None:
    print("1. nobody cancels: A -> B -> C")
    await drive(StateMachine("m1", cancellable_in={"A"}), cancel_in=None)
    print("2. cancel while in A (a cancellation point)")
    await drive(StateMachine("m2", cancellable_in={"A"}), cancel_in="A")
    print("3. cancel while in B (not a cancellation point): it lands after C")
    await drive(StateMachine("m3", cancellable_in={"A"}), cancel_in="B")


if __name__ == "__main__":
    trio.run(main)
