"""Quick measurement: what task handles and token-bound scopes cost against plain Trio.

Not a seed example: a sanity check of the building blocks before the full benchmark
(``bench_cancel.py``, which reproduces the seed's criterion table). Each variant runs in a fresh
subprocess, so peak memory is its own:

* ``nursery``: N tasks in ``trio.sleep_forever()`` started with ``nursery.start_soon``;
  cancelled with ``nursery.cancel_scope.cancel()``.
* ``token``: N tasks, each inside ``with root.child_token().cancel_scope():``; ``root.cancel()``.
* ``spawn``: N tasks started with ``tc.spawn`` (a handle each); ``handle.abort()`` on every one.
* ``spawn+token``: N tasks started with ``tc.spawn(..., token=root.child_token())``;
  ``root.cancel()``.

Reported: the time to start the N tasks, the time from the first cancel call until the nursery
has joined every task, the time spent inside the cancel calls, and the peak resident memory per
task above the start. Figures are medians over ``--repeat`` runs; ratios are against
``nursery`` in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import trio
import trio.testing

import trio_cancel as tc

VARIANTS = ("nursery", "token", "spawn", "spawn+token")


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


async def _sleeper() -> None:
    await trio.sleep_forever()


async def _token_bound(token: tc.CancellationToken) -> None:
    with token.cancel_scope():
        await trio.sleep_forever()


async def _run_one(variant: str, n: int) -> dict[str, float]:
    base_kib = _rss_kib()
    root = tc.CancellationToken()
    handles: list[tc.TaskHandle[None]] = []
    async with trio.open_nursery() as nursery:
        t_start = time.perf_counter()
        if variant == "nursery":
            for _ in range(n):
                nursery.start_soon(_sleeper)
        elif variant == "token":
            for _ in range(n):
                nursery.start_soon(_token_bound, root.child_token())
        elif variant == "spawn":
            handles = [tc.spawn(nursery, _sleeper) for _ in range(n)]
        else:
            handles = [tc.spawn(nursery, _sleeper, token=root.child_token()) for _ in range(n)]
        t_spawn = time.perf_counter() - t_start
        await trio.testing.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        if variant == "nursery":
            nursery.cancel_scope.cancel()
        elif variant == "spawn":
            for handle in handles:
                handle.abort("benchmark")
        else:
            root.cancel("benchmark")
        t_call = time.perf_counter() - t0
    t_all = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert all(h.outcome == tc.Aborted("benchmark") for h in handles)
    return {
        "spawn_s": t_spawn,
        "cancel_s": t_all,
        "call_s": t_call,
        "bytes_per_task": (peak_kib - base_kib) * 1024 / n,
    }


def _child(variant: str, n: int) -> None:
    print(json.dumps(trio.run(_run_one, variant, n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.tasks)
        return
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    runs = args.repeat * len(VARIANTS)
    done = 0
    for _ in range(args.repeat):
        for variant in VARIANTS:
            done += 1
            # Progress on stderr (the table on stdout stays clean): each run takes a while.
            print(
                f"[{done}/{runs}] {variant}: {args.tasks} tasks in a fresh process...",
                file=sys.stderr,
                flush=True,
            )
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, "--tasks", str(args.tasks)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[variant].append(json.loads(out))
    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in results.items()}
    base = med["nursery"]
    print(f"{args.tasks} tasks, median of {args.repeat} runs, each in a fresh process")
    print(
        f"{'variant':<13}{'start':>9}{'cancel+join':>13}{'in cancel':>11}{'bytes/task':>12}"
        f"{'start x':>9}{'cancel x':>10}{'bytes x':>9}"
    )
    for v in VARIANTS:
        m = med[v]
        print(
            f"{v:<13}{m['spawn_s']:>8.3f}s{m['cancel_s']:>12.3f}s{m['call_s']:>10.3f}s"
            f"{m['bytes_per_task']:>12.0f}{m['spawn_s'] / base['spawn_s']:>9.2f}"
            f"{m['cancel_s'] / base['cancel_s']:>10.2f}"
            f"{m['bytes_per_task'] / base['bytes_per_task']:>9.2f}"
        )


if __name__ == "__main__":
    main()
