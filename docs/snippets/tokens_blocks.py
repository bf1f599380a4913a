"""The tokens page's code blocks, run with what the page says about them asserted
(tests/test_docs.py)."""

from __future__ import annotations

import threading

import trio
import trio.testing

import trio_cancel as tc

worked: list[str] = []


async def work() -> None:
    await trio.sleep(3600)
    worked.append("finished")


# [docs-by-hand]
# A set of scopes and an Event, wired by hand: every task must remember to register and
# unregister, a late joiner misses a cancel that already happened, no reason travels,
# and a parent/child relation means writing the whole thing again.
scopes = set()


async def worker():
    with trio.CancelScope() as cs:
        scopes.add(cs)
        try:
            await work()
        finally:
            scopes.discard(cs)
    # [/docs-by-hand]


class WithToken:
    # [docs-with-token]
    async def worker(token: tc.CancellationToken):
        with token.cancel_scope():  # cancelled at once if the token already is
            await work()
        # [/docs-with-token]


# [docs-keyword]
async def call_api(url: str, token: str = "my-api-key"):  # an API key: never touched
    return token


async def forward(**kwargs):  # gets no token= it did not ask for
    return kwargs


async def poll(url, *, token: tc.CancellationToken):  # gets the task's token
    return token
    # [/docs-keyword]


def stop_from_thread(token: tc.CancellationToken, trio_token: trio.lowlevel.TrioToken) -> str:
    try:
        token.cancel("stopped by the worker")
    except RuntimeError as exc:
        refused = str(exc)
    # [docs-from-thread]
    trio.from_thread.run_sync(token.cancel, "stopped by the worker", trio_token=trio_token)
    # [/docs-from-thread]
    return refused


async def check_by_hand() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        for cs in list(scopes):
            cs.cancel()  # "cancel everything": no reason travels with it
    assert not scopes
    # A late joiner misses the cancel that already happened: it runs until its own deadline.
    with trio.move_on_after(0.05) as deadline:
        await worker()
    assert deadline.cancelled_caught
    print("by hand: a late joiner ran on after the cancel")


async def check_with_token() -> None:
    token = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(WithToken.worker, token)
        await trio.testing.wait_all_tasks_blocked()
        token.cancel("stop")
    # A late joiner is cancelled at once: no deadline needed.
    with trio.testing.assert_checkpoints():
        await WithToken.worker(token)
    assert worked == []
    assert token.reason == "stop"
    print("token: a late joiner stopped at once, the reason travels")


async def check_keyword() -> None:
    t = tc.CancellationToken()
    async with tc.JoinSet() as js:
        api = js.spawn(call_api, "https://example.com", token=t)
        fwd = js.spawn(forward, token=t)
        polled = js.spawn(poll, "https://example.com", token=t)
        await js.join_all()
    assert api.outcome == tc.Completed("my-api-key")
    assert fwd.outcome == tc.Completed({})
    assert polled.outcome == tc.Completed(t)

    async def unannotated(token):
        return token

    refused = None
    async with trio.open_nursery() as nursery:
        try:
            tc.spawn(nursery, unannotated, token=t)
        except TypeError as exc:
            refused = str(exc)
    assert refused is not None, "an unannotated required token is a TypeError"
    assert "token: tc.CancellationToken" in refused, refused
    print("token=: only the annotated parameter got the token")


async def check_from_thread() -> None:
    token = tc.CancellationToken()
    with token.cancel_scope() as cs:  # the token is now used inside this run
        refused: list[str] = []
        trio_token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(
            target=lambda: refused.append(stop_from_thread(token, trio_token))
        )
        thread.start()
        await trio.sleep_forever()
    await trio.to_thread.run_sync(thread.join)
    assert cs.cancelled_caught
    assert token.reason == "stopped by the worker"
    assert refused, "cancel() from another thread was not refused"
    print(f"from a thread: refused ({refused[0][:40]}...), then handed to the run")


async def main() -> None:
    await check_by_hand()
    await check_with_token()
    await check_keyword()
    await check_from_thread()


trio.run(main)
