"""What the tasks page shows of ``current_task_tree()``: a snapshot taken the moment a nursery
is cancelled, before its tasks have run again (tests/test_docs.py checks that the lines in
tasks_tree.out are printed, and are in the recorded tasks_tree.txt that the page shows)."""

from __future__ import annotations

import trio
import trio.testing

import trio_cancel as tc


async def worker(*, token: tc.CancellationToken) -> None:
    await trio.sleep_forever()


async def uploader() -> None:
    await trio.sleep_forever()


async def main() -> None:
    token = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        tc.spawn(nursery, worker, token=token, name="worker-1")
        tc.spawn(nursery, uploader, name="uploader")
        await trio.testing.wait_all_tasks_blocked()
        token.cancel("shutting down")  # aborts worker-1, whose scope is bound to the token
        nursery.cancel_scope.cancel("shutting down")  # and everything else
        tree = tc.current_task_tree(trio.lowlevel.current_task())  # before any task runs
    print(tree)
    text = str(tree)
    assert "nursery [cancelled ('shutting down')]" in text
    assert "'worker-1' [cancelled] handle: aborting token: <CancellationToken cancelled" in text
    assert "'uploader' [cancelled] handle: running" in text


trio.run(main)
