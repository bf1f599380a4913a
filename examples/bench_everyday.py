"""What everyday calls cost: each layer against the Trio (or driver) code a user would write.

Not a seed example: the mass-cancel benchmark (``bench_cancel.py``) measures one shutdown of
many tasks; this one measures the calls a program makes all day. Each row runs, in a fresh
interpreter of its own, the library's call and the code a user would write without the library,
interleaved (A B A B ...) so that a load that changes during the run weighs on both alike; a
row's figures are medians over ``--repeat`` runs of each variant, timed by the wall clock and
by the process's CPU time (``time.process_time``, which a shared machine disturbs less; worker
threads included). The ratio of a row is the median of the per-round ratios.

Rows (the hand-written code each is compared with in brackets):

* ``spawn``: ``tc.spawn`` + the task's end, N short tasks [the floor a user would write for
  a handle: a task that opens a ``trio.CancelScope`` and stores its result or error];
  the ratio to bare ``nursery.start_soon`` is reported too.
* ``joinset``: ``JoinSet.spawn`` + ``join_all`` [the floor, plus a list of results].
* ``start``: ``tc.start`` with ``task_status`` [``nursery.start``].
* ``cancel_scope``: ``with token.cancel_scope():`` [``with trio.CancelScope():``].
* ``child_token``: ``root.child_token()`` created and dropped [a ``trio.CancelScope()``
  created and dropped, for scale; no target].
* ``oneshot``: open, send, receive [a ``trio.open_memory_channel(1)`` pair].
* ``watch``: send + receive [``trio_util.AsyncValue``: set ``.value``, ``wait_value``].
* ``broadcast``: send + receive, one receiver [a memory channel].
* ``select``: ``tc.select`` of two branches, one ready [racing two tasks by hand in a
  nursery, the first to finish cancelling the other].
* ``run_sync``: ``tc.run_sync_interruptible`` [``trio.to_thread.run_sync``].
* ``sqlite``: ``fetchall("SELECT 1")`` [``sqlite3`` through ``trio.to_thread.run_sync``].
* ``postgres``: ``fetchall("SELECT 1")`` [psycopg through ``trio.to_thread.run_sync``]; only
  when ``TRIO_CANCEL_PG_DSN`` names a server.

Also: bytes per handle (the floor, ``tc.spawn``, ``JoinSet``: each variant in its own process,
traced by ``tracemalloc`` once every task has ended and its handle is kept), and the per-task
time of ``JoinSet`` spawn + ``join_all`` at ``--linearity`` sizes (one process each).
``--table FILE.jsonl`` prints the tables of a saved run (the performance page shows one).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from bench_cancel import _progress

import trio_cancel as tc

# --------------------------------------------------------------- the code that is timed


async def _quick() -> int:
    return 1


class _FloorHandle:
    """What a user writes for a handle without the library: a scope and the result."""

    __slots__ = ("error", "result", "scope")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.result: object = None
        self.error: Exception | None = None

    async def run(self, fn: Callable[[], Awaitable[object]]) -> None:
        try:
            with self.scope:
                self.result = await fn()
        except Exception as exc:  # noqa: BLE001 - stored, as a handle stores it
            self.error = exc


async def _start_soon(n: int) -> object:
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(_quick)
    return None


async def _floor(n: int) -> object:
    handles = []
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            handle = _FloorHandle()
            nursery.start_soon(handle.run, _quick)
            handles.append(handle)
    return handles


async def _spawn(n: int) -> object:
    async with trio.open_nursery() as nursery:
        handles = [tc.spawn(nursery, _quick) for _ in range(n)]
    return handles


async def _floor_list(n: int) -> object:
    handles = await _floor(n)
    assert isinstance(handles, list)
    return [h.result for h in handles]


async def _joinset(n: int) -> object:
    async with tc.JoinSet[int]() as js:
        for _ in range(n):
            js.spawn(_quick)
        outcomes = await js.join_all()
    return outcomes


async def _started(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> int:
    task_status.started(1)
    return 1


async def _nursery_start(n: int) -> object:
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            await nursery.start(_started)
    return None


async def _tc_start(n: int) -> object:
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            await tc.start(nursery, _started)
    return None


async def _trio_scope(n: int) -> object:
    for _ in range(n):
        with trio.CancelScope():  # noqa: ASYNC100 - what is timed
            pass
    return None


async def _token_scope(n: int) -> object:
    token = tc.CancellationToken()
    for _ in range(n):
        with token.cancel_scope():
            pass
    return None


async def _scope_only(n: int) -> object:
    for _ in range(n):
        trio.CancelScope()
    return None


async def _child_token(n: int) -> object:
    root = tc.CancellationToken()
    for _ in range(n):
        root.child_token()
    return None


async def _memory_pair(n: int) -> object:
    for i in range(n):
        send, receive = trio.open_memory_channel[int](1)
        send.send_nowait(i)
        await receive.receive()
    return None


async def _oneshot(n: int) -> object:
    for i in range(n):
        send, receive = tc.open_oneshot_channel[int]()
        send.send(i)
        await receive.receive()
    return None


async def _async_value(n: int) -> object:
    from trio_util import AsyncValue

    value = AsyncValue(-1)
    for i in range(n):
        value.value = i
        await value.wait_value(i)
    return None


async def _watch(n: int) -> object:
    send, receive = tc.open_watch_channel(-1)
    for i in range(n):
        send.send(i)
        await receive.receive()
    return None


async def _memory_channel(n: int) -> object:
    send, receive = trio.open_memory_channel[int](16)
    for i in range(n):
        send.send_nowait(i)
        await receive.receive()
    return None


async def _broadcast(n: int) -> object:
    send, receive = tc.open_broadcast_channel[int](16)
    for i in range(n):
        send.send(i)
        await receive.receive()
    return None


async def _ready() -> int:
    await trio.lowlevel.checkpoint()
    return 1


async def _race_by_hand(a: Callable[[], Awaitable[int]], b: Callable[[], Awaitable[int]]) -> int:
    won: list[int] = []

    async def run(fn: Callable[[], Awaitable[int]], scope: trio.CancelScope) -> None:
        value = await fn()
        if not won:
            won.append(value)
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, a, nursery.cancel_scope)
        nursery.start_soon(run, b, nursery.cancel_scope)
    return won[0]


async def _hand_race(n: int) -> object:
    for _ in range(n):
        await _race_by_hand(_ready, trio.sleep_forever)
    return None


async def _select(n: int) -> object:
    for _ in range(n):
        await tc.select(a=_ready, b=trio.sleep_forever)
    return None


def _noop() -> None:
    pass


async def _to_thread(n: int) -> object:
    for _ in range(n):
        await trio.to_thread.run_sync(_noop)
    return None


async def _interruptible(n: int) -> object:
    for _ in range(n):
        await tc.run_sync_interruptible(_noop, interrupt=_noop)
    return None


# The database rows time statements, not connecting: each variant opens its connection once,
# at its warm-up run, and keeps it for the rest of the process (a row's own interpreter). Opening
# it inside every timed run added a connect (for PostgreSQL a new server process, whose caches
# start cold) to one side's time at a time, and that varied more than the statements did.
_CONNECTIONS: dict[str, Any] = {}
_TMP = tempfile.TemporaryDirectory()  # removed as the process ends


def _sqlite_select(raw: sqlite3.Connection) -> list[Any]:
    return raw.execute("SELECT 1").fetchall()


async def _sqlite3_to_thread(n: int) -> object:
    raw = _CONNECTIONS.get("sqlite3")
    if raw is None:
        raw = _CONNECTIONS["sqlite3"] = sqlite3.connect(
            Path(_TMP.name, "sqlite3.db"), check_same_thread=False
        )
    for _ in range(n):
        await trio.to_thread.run_sync(_sqlite_select, raw)
    return None


async def _tc_sqlite(n: int) -> object:
    from trio_cancel import sqlite

    conn = _CONNECTIONS.get("tc.sqlite")
    if conn is None:
        conn = _CONNECTIONS["tc.sqlite"] = await sqlite.connect(Path(_TMP.name, "tc.db"))
    for _ in range(n):
        await conn.fetchall("SELECT 1")
    return None


def _pg_select(raw: Any) -> list[Any]:  # noqa: ANN401 - a psycopg connection
    return raw.execute("SELECT 1").fetchall()  # type: ignore[no-any-return]


async def _psycopg_to_thread(n: int) -> object:
    import psycopg

    raw = _CONNECTIONS.get("psycopg")
    if raw is None:
        raw = _CONNECTIONS["psycopg"] = await trio.to_thread.run_sync(
            lambda: psycopg.connect(os.environ["TRIO_CANCEL_PG_DSN"], autocommit=True)
        )
    for _ in range(n):
        await trio.to_thread.run_sync(_pg_select, raw)
    return None


async def _tc_postgres(n: int) -> object:
    from trio_cancel import postgres

    conn = _CONNECTIONS.get("tc.postgres")
    if conn is None:
        conn = _CONNECTIONS["tc.postgres"] = await postgres.connect(
            os.environ["TRIO_CANCEL_PG_DSN"]
        )
    for _ in range(n):
        await conn.fetchall("SELECT 1")
    return None


Variant = Callable[[int], Awaitable[object]]


# name: (the variants, hand-written first; the target for the last one against the first, or
# None; whether it is a row of calls (--calls) rather than of tasks (--tasks)).
ROWS: dict[str, tuple[dict[str, Variant], float | None, bool]] = {
    "spawn": ({"floor": _floor, "start_soon": _start_soon, "tc.spawn": _spawn}, 1.2, False),
    "joinset": ({"floor+list": _floor_list, "JoinSet": _joinset}, 1.3, False),
    "start": ({"nursery.start": _nursery_start, "tc.start": _tc_start}, 1.3, True),
    "cancel_scope": (
        {"trio.CancelScope()": _trio_scope, "token.cancel_scope()": _token_scope},
        1.2,
        False,
    ),
    "child_token": (
        {"trio.CancelScope()": _scope_only, "child_token()": _child_token},
        None,
        False,
    ),
    "oneshot": ({"memory_channel(1)": _memory_pair, "oneshot": _oneshot}, 1.2, False),
    "watch": ({"AsyncValue": _async_value, "watch": _watch}, 1.2, False),
    "broadcast": ({"memory_channel": _memory_channel, "broadcast": _broadcast}, 1.2, False),
    "select": ({"race by hand": _hand_race, "tc.select": _select}, 1.2, True),
    "run_sync": (
        {"to_thread.run_sync": _to_thread, "run_sync_interruptible": _interruptible},
        1.05,
        True,
    ),
    "sqlite": ({"sqlite3+to_thread": _sqlite3_to_thread, "tc.sqlite": _tc_sqlite}, 1.1, True),
    "postgres": (
        {"psycopg+to_thread": _psycopg_to_thread, "tc.postgres": _tc_postgres},
        1.1,
        True,
    ),
}
# What a handle costs in memory: each variant in its own process.
MEMORY: dict[str, Variant] = {"floor": _floor, "tc.spawn": _spawn, "JoinSet": _joinset}
LINEARITY_TARGET = 1.2


# --------------------------------------------------------------- one row (in a subprocess)


async def _measure(fn: Variant, n: int) -> tuple[float, float]:
    gc.collect()
    cpu0, t0 = time.process_time(), time.perf_counter()
    kept = await fn(n)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    del kept
    return wall, cpu


async def _row_child(row: str, n: int, repeat: int) -> dict[str, Any]:
    variants, _, _ = ROWS[row]
    for fn in variants.values():  # warm up: imports, thread caches, allocator pools
        await fn(max(1, n // 20))
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            runs[name].append(await _measure(fn, n))
    return {"runs": runs}


async def _memory_child(variant: str, n: int) -> dict[str, Any]:
    fn = MEMORY[variant]
    await fn(100)  # warm up
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = await fn(n)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del kept
    return {"bytes_per_handle": used / n}


async def _linearity_child(n: int) -> dict[str, Any]:
    await _joinset(100)
    gc.collect()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await _joinset(n)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0}


def _child(args: argparse.Namespace) -> None:
    kind, _, name = args.child.partition(":")
    if kind == "row":
        result = trio.run(_row_child, name, args.n, args.repeat)
    elif kind == "memory":
        result = trio.run(_memory_child, name, args.n)
    else:
        result = trio.run(_linearity_child, args.n)
    print(json.dumps(result))


def _run_child(child: str, n: int, repeat: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", child, "--n", str(n), "--repeat", str(repeat)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


# --------------------------------------------------------------- the driver


def _row_records(row: str, n: int, runs: dict[str, list[list[float]]]) -> list[dict[str, Any]]:
    """One record per variant: medians, and the paired ratios against the first variant."""
    names = list(runs)
    base = runs[names[0]]
    records = []
    for name in names:
        mine = runs[name]
        wall_ratios = [m[0] / b[0] for m, b in zip(mine, base, strict=True)]
        cpu_ratios = [m[1] / b[1] if b[1] else 0.0 for m, b in zip(mine, base, strict=True)]
        wall = statistics.median(m[0] for m in mine)
        records.append(
            {
                "kind": "row",
                "row": row,
                "variant": name,
                "n": n,
                "repeat": len(mine),
                "wall_s": wall,
                "cpu_s": statistics.median(m[1] for m in mine),
                "per_op_us": wall / n * 1e6,
                "ratio": statistics.median(wall_ratios),
                "cpu_ratio": statistics.median(cpu_ratios),
            }
        )
    return records


def _targets(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per target row, for ``--json``."""
    out = []
    by_row = {(r["row"], r["variant"]): r for r in records if r["kind"] == "row"}
    for row, (variants, target, _) in ROWS.items():
        if target is None:
            continue
        last = by_row.get((row, list(variants)[-1]))
        if last is not None:
            entry = {"row": row, "ratio": round(last["ratio"], 3), "target": target}
            entry["cpu_ratio"] = round(last["cpu_ratio"], 3)
            entry["met"] = last["ratio"] <= target
            out.append(entry)
    lin = sorted((r for r in records if r["kind"] == "linearity"), key=lambda r: r["n"])
    if len(lin) >= 2:
        ratio = lin[-1]["per_task_us"] / lin[0]["per_task_us"]
        name = f"joinset per-task {lin[-1]['n']:,} vs {lin[0]['n']:,}"
        met = ratio <= LINEARITY_TARGET
        out.append({"row": name, "ratio": round(ratio, 3), "target": LINEARITY_TARGET, "met": met})
    return out


def print_tables(records: list[dict[str, Any]]) -> None:
    """The run's tables, from its records (the JSON lines)."""
    rows = [r for r in records if r["kind"] == "row"]
    if rows:
        repeat = max(r["repeat"] for r in rows)
        print(f"Everyday calls (median of {repeat}; ratios against the first line of each row)")
        print(
            f"{'row':<13}{'variant':<24}{'n':>8}{'wall':>10}{'per op':>11}{'CPU':>10}"
            f"{'ratio':>7}{'CPU ratio':>10}{'target':>8}"
        )
    for r in rows:
        variants, target, _ = ROWS[r["row"]]
        last = r["variant"] == list(variants)[-1]
        mark = ""
        if target is not None and last:
            mark = f"{target:>7.2f}{' ' if r['ratio'] <= target else '!'}"
        print(
            f"{r['row']:<13}{r['variant']:<24}{r['n']:>8,}{r['wall_s']:>9.3f}s"
            f"{r['per_op_us']:>9.2f}us{r['cpu_s']:>9.3f}s{r['ratio']:>7.2f}"
            f"{r['cpu_ratio']:>10.2f}{mark}"
        )
    skipped = [r for r in records if r["kind"] == "skipped"]
    for r in skipped:
        print(f"{r['row']:<13}not run: {r['why']}")
    memory = [r for r in records if r["kind"] == "memory"]
    if memory:
        print()
        print("Bytes per handle kept after its task ended (tracemalloc, own process each):")
        for r in memory:
            print(f"  {r['variant']:<12}{r['bytes_per_handle']:>8.0f} bytes  ({r['n']:,} tasks)")
    lin = sorted((r for r in records if r["kind"] == "linearity"), key=lambda r: r["n"])
    if lin:
        print()
        print("JoinSet spawn + join_all, per task (own process each):")
        for r in lin:
            print(
                f"  {r['n']:>10,} tasks {r['wall_s']:>8.3f}s {r['per_task_us']:>7.2f}us/task"
                f"  (CPU {r['cpu_s']:.3f}s)"
            )
    targets = _targets(records)
    if targets:
        print()
        print("Targets (ratio <= target; '!' above marks a miss):")
        for t in targets:
            verdict = "met" if t["met"] else "NOT met"
            print(f"  {t['row']:<36}{t['ratio']:>7.2f} <= {t['target']:<5}{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks or calls per run")
    parser.add_argument(
        "--calls",
        type=int,
        default=5_000,
        help="calls per run for the thread, start and select rows",
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="a subset to run"
    )
    parser.add_argument(
        "--linearity",
        type=int,
        nargs="*",
        default=[100_000],
        help="JoinSet sizes for the per-task linearity check (the issue's: 100000 1000000)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one repeat")
    parser.add_argument("--json", action="store_true", help="print the targets as JSON")
    parser.add_argument(
        "--results",
        metavar="FILE.jsonl",
        default="bench_everyday_results.jsonl",
        help="each result is written here as soon as it is measured",
    )
    parser.add_argument("--table", metavar="FILE.jsonl", help="print the tables of a saved run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if args.table:
        with open(args.table) as f:
            print_tables([json.loads(line) for line in f if line.strip()])
        return
    if args.quick:
        args.tasks, args.calls, args.repeat, args.linearity = 500, 100, 1, [500, 5_000]

    rows = list(args.rows)
    has_pg = bool(os.environ.get("TRIO_CANCEL_PG_DSN"))
    if "postgres" in rows and not has_pg:
        rows.remove("postgres")
    bar = _progress(len(rows) + len(MEMORY) + len(args.linearity))
    records: list[dict[str, Any]] = []
    with open(args.results, "w") as saved:

        def keep(new: list[dict[str, Any]]) -> None:
            for record in new:
                records.append(record)
                saved.write(json.dumps(record) + "\n")
            saved.flush()

        for row in rows:
            bar.set_description(row)
            n = args.calls if ROWS[row][2] else args.tasks
            keep(_row_records(row, n, _run_child(f"row:{row}", n, args.repeat)["runs"]))
            bar.update()
        if "postgres" in args.rows and not has_pg:
            keep([{"kind": "skipped", "row": "postgres", "why": "TRIO_CANCEL_PG_DSN is not set"}])
        for variant in MEMORY:
            bar.set_description(f"memory {variant}")
            found = _run_child(f"memory:{variant}", args.tasks)
            keep([{"kind": "memory", "variant": variant, "n": args.tasks, **found}])
            bar.update()
        for n in args.linearity:
            bar.set_description(f"JoinSet {n:,}")
            found = _run_child("linearity", n)
            keep([{"kind": "linearity", "n": n, "per_task_us": found["wall_s"] / n * 1e6, **found}])
            bar.update()
    bar.close()
    if args.json:
        print(json.dumps({"rows": _targets(records)}, indent=2))
    else:
        print_tables(records)


if __name__ == "__main__":
    main()
