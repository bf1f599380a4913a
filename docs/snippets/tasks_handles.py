"""The tasks page's code blocks, run with what the page says about them asserted
(tests/test_docs.py)."""

from __future__ import annotations

import anyio
import trio
import trio.testing

import trio_cancel as tc

PAGE = b"<html>prices</html>"
fetched: list[str] = []


async def fetch(url: str) -> bytes:
    if url.endswith("/broken"):
        raise ConnectionError(url)
    await trio.sleep(0 if url.endswith("/fast") else 3600)
    fetched.append(url)
    return PAGE


async def fetch_one(url: str, user_left: bool) -> object:
    # [docs-spawn]
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, fetch, url, name="fetch")
        if user_left:
            handle.abort("user went away")  # cancels this task only
        match await handle.join():
            case tc.Completed(page):
                return page
            case tc.Failed(error):  # the task raised; siblings were not touched
                return error
            case tc.Aborted(reason):  # "user went away"
                return reason
    # [/docs-spawn]
    return None


async def long_job() -> None:
    await trio.sleep(0.05)
    fetched.append("long_job")


async def work() -> None:
    await trio.sleep(3600)


async def dont(nursery: trio.Nursery) -> tc.TaskHandle[str]:
    # [docs-dont]
    # Dropping the handle does NOT cancel the task (as in tokio): it only loses track of it.
    handle = tc.spawn(nursery, long_job)
    del handle  # long_job keeps running; the nursery still waits for it

    # Catching Cancelled to "ignore" an abort hides the abort from everyone:
    async def job():
        try:
            await work()
        except trio.Cancelled:
            return "ignored"  # the outcome becomes Completed("ignored"), not Aborted
        return "done"
        # [/docs-dont]

    return tc.spawn(nursery, job)


async def handler(stream: trio.SocketStream) -> None:
    async with stream:
        await stream.send_all(b"hello\n")


# [docs-start]
async def serve(
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])  # start() returns now
    await trio.serve_listeners(handler, listeners)
    # [/docs-start]


async def read_greeting(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        return await stream.receive_some()


async def start_and_call() -> bytes:
    # [docs-joinset-start]
    async with tc.JoinSet() as js:
        server, port = await js.start(serve, 0)  # listening: no polling, no sleep
        greeting = await read_greeting(port)
        server.abort("done")
    # [/docs-joinset-start]
    assert server.outcome == tc.Aborted("done")
    return greeting


async def worker(*, token: tc.CancellationToken) -> None:
    await token.wait_cancelled()
    await trio.sleep_forever()  # the token also aborts the task: spawn bound it


async def in_anyio(token: tc.CancellationToken) -> None:
    # [docs-anyio]
    async with anyio.create_task_group() as tg:
        handle = tc.spawn(tg, worker, token=token)
        server, port = await tc.start(tg, serve, 0)
        # [/docs-anyio]
        assert await read_greeting(port) == b"hello\n"
        token.cancel("done")
        server.abort("done")
    assert handle.outcome == tc.Aborted("done")
    assert server.outcome == tc.Aborted("done")


async def main() -> None:
    # One task aborted, one failed, one completed; the sibling of each is untouched.
    async with trio.open_nursery() as nursery:
        sibling = tc.spawn(nursery, fetch, "https://example.com/fast")
        assert await fetch_one("https://example.com/slow", user_left=True) == "user went away"
        error = await fetch_one("https://example.com/broken", user_left=False)
        assert isinstance(error, ConnectionError)
        assert await fetch_one("https://example.com/fast", user_left=False) == PAGE
    assert sibling.outcome == tc.Completed(PAGE)
    print("spawn: aborted, failed and completed outcomes; siblings untouched")

    async with trio.open_nursery() as nursery:
        swallowed = await dont(nursery)
        await trio.testing.wait_all_tasks_blocked()
        swallowed.abort("stop")
    assert "long_job" in fetched  # the dropped handle's task ran to its end
    assert swallowed.outcome == tc.Completed("ignored")  # the abort was hidden
    print("don't: a dropped handle's task ran on; a swallowed abort is Completed")

    assert await start_and_call() == b"hello\n"
    print("JoinSet.start: returned once the server listened")

    await in_anyio(tc.CancellationToken())
    print("anyio task group: spawn and start")


trio.run(main)
