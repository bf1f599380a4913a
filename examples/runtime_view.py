"""E23: the runtime's view: "if the task should be cancelled, drop it, else poll it".

Source: the essay "Perspectives on Async Cancellation".

The article describes an executor's loop: take the next ready task; if it should be cancelled,
drop it, otherwise poll it; repeat. Cancellation starts in the runtime, which is synchronous
code that sees tasks but not inside them.

Trio version: Trio's runner never drops a task. It steps every ready task; a task whose scope was
cancelled is woken with ``trio.Cancelled`` thrown in at the checkpoint where it waits, and then
unwinds through its own ``finally`` blocks. A ``trio.abc.Instrument`` sees each step. This one
logs, per step of the watched tasks, whether the task is resumed normally (a "poll") or woken to
receive its ``Cancelled``. (``trio.sleep`` wakes through a deadline on its own internal scope,
which it absorbs; that is shown as a poll.) What the instrument reads is Trio's private
``Task._next_send``, the value the runner is about to send in: fine for a demonstration, not
for production code.
"""

from __future__ import annotations

import outcome
import trio

import trio_cancel as tc


class CancelView(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def _watched(self, task: trio.lowlevel.Task) -> bool:
        return task.name.startswith("worker-")

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if not self._watched(task):
            return
        self.steps[task.name] = self.steps.get(task.name, 0) + 1
        sent = getattr(task, "_next_send", None)
        if isinstance(sent, outcome.Error) and isinstance(sent.error, trio.Cancelled):
            exc = sent.error
            if exc.source == "deadline":
                # trio.sleep() is itself a scope with a deadline: its wake-up is a Cancelled
                # that the sleep absorbs. To the task it is an ordinary poll.
                print(f"runner: step {task.name}: poll (its sleep's deadline passed)")
            else:
                print(
                    f"runner: step {task.name}: woken to receive Cancelled("
                    f"reason={exc.reason!r}, source={exc.source!r}) instead of a poll"
                )
        else:
            print(f"runner: step {task.name}: poll")

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if self._watched(task):
            print(f"runner: {task.name} exited after {self.steps.get(task.name, 0)} steps")


async def worker(n: int, token: tc.CancellationToken) -> None:
    with token.cancel_scope():
        try:
            for _ in range(3):
                await trio.sleep(0.1)
            print(f"worker-{n}: finished its three ticks")
        finally:
            print(f"worker-{n}: unwinding (finally)")


async def main() -> None:
    root = tc.CancellationToken()
    tokens = [root.child_token() for _ in range(2)]
    view = CancelView()
    trio.lowlevel.add_instrument(view)
    try:
        async with trio.open_nursery() as nursery:
            for n, token in enumerate(tokens, start=1):
                nursery.start_soon(worker, n, token, name=f"worker-{n}")
            await trio.sleep(0.15)
            print("main: cancelling worker-2's token")
            tokens[1].cancel("worker 2 not needed")
    finally:
        trio.lowlevel.remove_instrument(view)


if __name__ == "__main__":
    trio.run(main)
