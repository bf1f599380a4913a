"""Measures what one send costs when many receivers wait: broadcast, watch, Notify, trio.Event.

Not a seed example. For each N, N tasks wait on one receiver each (broadcast, watch), on one
``Notify`` (``notify_waiters``) or on one ``trio.Event`` (Trio's own baseline); the script times
the ``send()`` call itself and the time until every waiter has run. Cost per receiver should stay
flat as N grows (O(receivers) per send). Ratios are against ``trio.Event`` at the same N, in the
same run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import trio
import trio.testing

import trio_cancel as tc

Setup = Callable[[int], tuple[list[Callable[[], Awaitable[object]]], Callable[[], object]]]


def broadcast(n: int) -> tuple[list[Callable[[], Awaitable[object]]], Callable[[], object]]:
    send, first = tc.open_broadcast_channel[int](1)
    receivers = [first, *(send.subscribe() for _ in range(n - 1))]
    return [r.receive for r in receivers], lambda: send.send(1)


def watch(n: int) -> tuple[list[Callable[[], Awaitable[object]]], Callable[[], object]]:
    send, first = tc.open_watch_channel(0)
    receivers = [first, *(send.subscribe() for _ in range(n - 1))]
    return [r.wait_changed for r in receivers], lambda: send.send(1)


def notify(n: int) -> tuple[list[Callable[[], Awaitable[object]]], Callable[[], object]]:
    note = tc.Notify()
    return [note.wait] * n, note.notify_waiters


def event(n: int) -> tuple[list[Callable[[], Awaitable[object]]], Callable[[], object]]:
    ev = trio.Event()
    return [ev.wait] * n, ev.set


VARIANTS: dict[str, Setup] = {
    "trio.Event": event,
    "broadcast": broadcast,
    "watch": watch,
    "Notify": notify,
}


async def measure(setup: Setup, n: int) -> tuple[float, float]:
    waits, fire = setup(n)
    async with trio.open_nursery() as nursery:
        for wait in waits:
            nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        fire()
        t_send = time.perf_counter() - t0
    return t_send, time.perf_counter() - t0


async def main(sizes: list[int]) -> None:
    print(
        f"{'receivers':>10} {'variant':<11}{'send()':>10}{'all woken':>11}"
        f"{'ns/receiver':>13}{'ratio':>7}"
    )
    for n in sizes:
        base = None
        for name, setup in VARIANTS.items():
            t_send, t_all = await measure(setup, n)
            base = base or t_all
            print(
                f"{n:>10} {name:<11}{t_send * 1e3:>8.2f}ms{t_all * 1e3:>9.1f}ms"
                f"{t_all / n * 1e9:>13.0f}{t_all / base:>7.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    trio.run(main, parser.parse_args().sizes)
