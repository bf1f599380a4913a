"""The channels page's snippets, each run against real channels (tests/test_docs.py)."""

from __future__ import annotations

import trio

import trio_cancel as tc

handled: list[object] = []


def handle(item: object) -> None:
    handled.append(item)


def log_errors(errors: object) -> None:
    print(f"logged: {errors!r}")


async def lagging_receiver(recv: tc.BroadcastReceiver[int]) -> int:
    # [docs-lag]
    skipped = 0
    while True:
        try:
            event = await recv.receive()
        except tc.LaggedError as lag:
            skipped += lag.skipped  # values this receiver will never see
            continue
        except trio.EndOfChannel:
            break  # every sender closed and nothing is left
        handle(event)
    # [/docs-lag]
    return skipped


async def late_subscriber(send: tc.WatchSender[bool]) -> bool:
    # [docs-watch]
    # The late-subscriber pitfall: a watch receiver created after the flag was set has
    # already "seen" it, so wait_changed() waits for a change that never comes:
    send.send(True)
    recv = send.subscribe()
    with trio.move_on_after(0.1) as waited:
        await recv.wait_changed()  # would wait forever

    # Do this: check the current value first.
    await recv.wait_for(lambda stopping: stopping)
    # [/docs-watch]
    return waited.cancelled_caught


async def merged(
    chan_a: trio.MemoryReceiveChannel[str], chan_b: trio.MemoryReceiveChannel[str]
) -> None:
    # [docs-merge]
    # select in a loop must handle result.also_completed too, or it loses those items;
    # merge the sources instead:
    async for item in tc.merge(chan_a, chan_b):
        handle(item)
    # [/docs-merge]


async def select_error(
    jobs: trio.MemoryReceiveChannel[str], news: tc.BroadcastReceiver[str]
) -> object:
    # [docs-select-error]
    try:
        name, value = await tc.select(job=jobs.receive, news=news.receive)
    except tc.SelectError as err:
        name, value = err.selected  # the job that was taken is still here
        log_errors(err.exceptions)
    # [/docs-select-error]
    return name, value


async def main() -> None:
    send, recv = tc.open_broadcast_channel[int](2)
    for i in range(5):
        send.send(i)
    await send.aclose()
    skipped = await lagging_receiver(recv)
    print(f"lagging receiver: skipped {skipped}, handled {handled}")

    wsend, _ = tc.open_watch_channel(False)
    print(f"late subscriber: wait_changed() timed out: {await late_subscriber(wsend)}")

    handled.clear()
    a_send, a_recv = trio.open_memory_channel[str](10)
    b_send, b_recv = trio.open_memory_channel[str](10)
    async with a_send, b_send:
        for i in range(3):
            a_send.send_nowait(f"a{i}")
            b_send.send_nowait(f"b{i}")
    await merged(a_recv, b_recv)
    print(f"merge: {len(handled)} of 6 items")

    # A job is ready and the news receiver has lagged: both branches finish at once, one with
    # a value and one with an error.
    jobs_send, jobs = trio.open_memory_channel[str](1)
    jobs_send.send_nowait("job-1")
    news_send, news = tc.open_broadcast_channel[str](1)
    news_send.send("a")
    news_send.send("b")
    try:
        print(f"select: {await select_error(jobs, news)}")
    except tc.LaggedError:
        print("select: the news branch failed first; the job was not taken")
        assert jobs.receive_nowait() == "job-1"


trio.run(main)
