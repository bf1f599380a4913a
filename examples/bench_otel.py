"""What trio_cancel.otel costs: the mass-cancel and middleware benchmarks, with and without it.

Three modes, each in fresh processes, interleaved run by run (the order rotates from one round
to the next) so that the machine's drift hits all alike (medians of ``--runs``):

* ``off``: ``trio_cancel.otel`` is never imported (the library records nothing);
* ``instrumented``: ``import trio_cancel.otel`` and ``instrument()``, no SDK configured (the
  OpenTelemetry API's no-op provider): the budget is 3 % at most;
* ``sdk``: as ``instrumented``, with the SDK's tracer provider (a simple processor into an
  in-memory exporter) and meter provider (an in-memory reader): every task then has a span.

Measured: ``bench_cancel.py``'s ``token-scope`` and ``joinset`` variants at ``--tasks`` tasks
(the time from the cancel to the last join), and ``bench_middleware.py``'s requests per second
through ``CancelMiddleware`` (needs ``wrk``; skipped without it, or with ``--no-http``).

On a shared machine the clock swings by more than the budget from one run to the next.
``--callgrind`` also counts the instructions of the same window (cancel to last join) in each
mode, under ``valgrind --tool=callgrind`` (one run each: the count does not depend on the
machine's load; needs valgrind, its ``callgrind.h`` and a C compiler, and takes minutes).

``--results FILE.jsonl`` keeps every figure as it is measured; ``--table FILE.jsonl`` prints the
tables of a saved run (the observability page shows one).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

HERE = Path(__file__).resolve().parent
MODES = ("off", "instrumented", "sdk")

_SETUP = {
    "off": "",
    "instrumented": "import trio_cancel.otel as o; o.instrument()\n",
    "sdk": (
        "import trio_cancel.otel as o\n"
        "from opentelemetry import metrics, trace\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import InMemoryMetricReader\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import "
        "InMemorySpanExporter\n"
        "p = TracerProvider(); p.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))\n"
        "trace.set_tracer_provider(p)\n"
        "metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))\n"
        "o.instrument()\n"
    ),
}

_CANCEL = (
    "import runpy, sys\n"
    "sys.argv = ['bench_cancel.py', '--child', {variant!r}, '--tasks', '{tasks}']\n"
    "runpy.run_path({path!r}, run_name='__main__')\n"
)

_HTTP = (
    "import sys, trio\n"
    "sys.path.insert(0, {here!r})\n"
    "import bench_middleware as bm\n"
    "from trio_cancel.asgi import CancelMiddleware\n"
    "app = CancelMiddleware(bm.hello, timeout=30.0)\n"
    "print(trio.run(bm.measure, app, {seconds}))\n"
)


def _run(mode: str, body: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _SETUP[mode] + body],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def cancel_seconds(mode: str, variant: str, tasks: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds from the cancel to the last join."""
    body = _CANCEL.format(variant=variant, tasks=tasks, path=str(HERE / "bench_cancel.py"))
    figures = json.loads(_run(mode, body))
    return float(figures["cancel_s"]), float(figures["cpu_s"])


def requests_per_second(mode: str, seconds: float) -> float:
    return float(_run(mode, _HTTP.format(here=str(HERE), seconds=seconds)))


# ------------------------------------------------------------- instruction counts (callgrind)

_TOGGLE_C = """#include <valgrind/callgrind.h>
void bench_window_open(void) { CALLGRIND_ZERO_STATS; CALLGRIND_TOGGLE_COLLECT; }
void bench_window_close(void) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS; }
"""

# bench_cancel.py reads time.process_time() exactly twice in a run: at the cancel and after
# the last join. The window is collected between the two.
_WINDOW = (
    "import ctypes, json, sys, time, trio\n"
    "sys.path.insert(0, {here!r})\n"
    "import bench_cancel as bc\n"
    "lib = ctypes.CDLL({lib!r})\n"
    "class Clock:\n"
    "    calls = 0\n"
    "    def __getattr__(self, name):\n"
    "        return getattr(time, name)\n"
    "    def process_time(self):\n"
    "        Clock.calls += 1\n"
    "        (lib.bench_window_open if Clock.calls == 1 else lib.bench_window_close)()\n"
    "        return time.process_time()\n"
    "bc.time = Clock()\n"
    "print(json.dumps(trio.run(bc._trio_run, {variant!r}, {tasks}, 'default', False)))\n"
)


def _callgrind_tools() -> str:
    """The C compiler to build the window's toggles with (valgrind and its header are needed)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    header = Path("/usr/include/valgrind/callgrind.h")
    if compiler is None or shutil.which("valgrind") is None or not header.exists():
        raise SystemExit(
            "--callgrind needs valgrind and a C compiler: apt-get install valgrind gcc"
        )
    return compiler


def _toggle_library(workdir: Path) -> Path:
    source, lib = workdir / "toggle.c", workdir / "libtoggle.so"
    source.write_text(_TOGGLE_C)
    subprocess.run(
        [_callgrind_tools(), "-shared", "-fPIC", "-O1", "-o", str(lib), str(source)], check=True
    )
    return lib


def _instructions(mode: str, variant: str, tasks: int, lib: Path, workdir: Path) -> int:
    out = workdir / f"callgrind.{mode}.{variant}"
    body = _WINDOW.format(here=str(HERE), lib=str(lib), variant=variant, tasks=tasks)
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            f"--callgrind-out-file={out}.%p",
            sys.executable,
            "-c",
            _SETUP[mode] + body,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{mode} {variant}: exit status {done.returncode}\n{tail}")
    counts = [
        int(line.split()[1])
        for dump in workdir.glob(f"callgrind.{mode}.{variant}.*")
        for line in dump.read_text().splitlines()
        if line.startswith("summary:")
    ]
    return max(counts)


def callgrind(variants: list[str], tasks: int, keep: Callable[[dict[str, Any]], None]) -> None:
    jobs = [(mode, variant) for variant in variants for mode in MODES]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        lib = _toggle_library(workdir)
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            futures = {
                pool.submit(_instructions, mode, variant, tasks, lib, workdir): (mode, variant)
                for mode, variant in jobs
            }
            failed: list[str] = []
            for future in concurrent.futures.as_completed(futures):
                mode, variant = futures[future]
                try:
                    value = future.result()
                except RuntimeError as exc:  # the others' figures are kept
                    failed.append(str(exc))
                    continue
                keep(
                    {
                        "kind": "instructions",
                        "variant": variant,
                        "tasks": tasks,
                        "mode": mode,
                        "value": value,
                    }
                )
    if failed:
        raise SystemExit("--callgrind: a run failed:\n" + "\n\n".join(failed))


# ------------------------------------------------------------------------------ the tables


def _line(mode: str, value: float, base: float, unit: str, higher_is_better: bool) -> str:
    change = (value / base - 1) * 100
    worse = -change if higher_is_better else change
    return f"  {mode:<13} {value:10.4g} {unit}   {worse:+6.1f} % cost"


def print_tables(records: list[dict[str, Any]]) -> None:
    """The tables of a run's records (medians of the runs of each mode)."""
    groups: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    for record in records:
        key = (record["kind"], record.get("variant", ""), record.get("tasks", 0))
        groups.setdefault(key, {}).setdefault(record["mode"], []).append(record["value"])
    for (kind, variant, tasks), by_mode in groups.items():
        runs = len(by_mode.get("off", ()))
        if kind == "instructions":
            title = f"bench_cancel.py {variant}, {tasks:,} tasks: instructions, cancel to last join"
            unit, higher = "instr", False
        elif kind == "rps":
            title = f"bench_middleware.py CancelMiddleware, requests per second (median of {runs})"
            unit, higher = "req/s", True
        else:
            what = "CPU time" if kind == "cpu" else "elapsed"
            title = (
                f"bench_cancel.py {variant}, {tasks:,} tasks: cancel to last join, {what} "
                f"(median of {runs})"
            )
            unit, higher = ("s CPU" if kind == "cpu" else "s"), False
        print(title)
        base = statistics.median(by_mode["off"]) if "off" in by_mode else None
        for mode in MODES:
            if mode not in by_mode:
                continue
            value = statistics.median(by_mode[mode])
            if base is None:  # a run cut short before its "off" figure
                print(f"  {mode:<13} {value:10.4g} {unit}   (no 'off' figure to compare with)")
            else:
                print(_line(mode, value, base, unit, higher))


def _rounds(runs: int) -> Iterator[tuple[str, ...]]:
    """The modes of each round, the order rotated from one round to the next."""
    for i in range(runs):
        k = i % len(MODES)
        yield MODES[k:] + MODES[:k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per HTTP run")
    parser.add_argument("--no-http", action="store_true", help="skip the middleware benchmark")
    parser.add_argument(
        "--variants", nargs="+", default=["token-scope", "joinset"], help="bench_cancel variants"
    )
    parser.add_argument(
        "--callgrind", action="store_true", help="also count instructions (valgrind, minutes)"
    )
    parser.add_argument(
        "--results",
        metavar="FILE.jsonl",
        help="write each figure here as soon as it is measured",
    )
    parser.add_argument("--table", metavar="FILE.jsonl", help="print the tables of a saved run")
    args = parser.parse_args()
    if args.table:
        with open(args.table) as f:
            print_tables([json.loads(line) for line in f if line.strip()])
        return

    if args.callgrind:
        _callgrind_tools()  # before the timed runs, not after them
    records: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        saved = None if args.results is None else stack.enter_context(open(args.results, "w"))

        def keep(record: dict[str, Any]) -> None:
            records.append(record)
            if saved is not None:
                saved.write(json.dumps(record) + "\n")
                saved.flush()

        for variant in args.variants:
            for modes in _rounds(args.runs):
                for mode in modes:
                    wall_s, cpu_s = cancel_seconds(mode, variant, args.tasks)
                    common = {"variant": variant, "tasks": args.tasks, "mode": mode}
                    keep({"kind": "wall", **common, "value": wall_s})
                    keep({"kind": "cpu", **common, "value": cpu_s})
            print_tables([r for r in records if r.get("variant") == variant])
        if args.callgrind:
            callgrind(args.variants, args.tasks, keep)
            print_tables([r for r in records if r["kind"] == "instructions"])
        if args.no_http:
            return
        if shutil.which("wrk") is None:
            print("bench_middleware.py: skipped (wrk is not installed: apt-get install wrk)")
            return
        for modes in _rounds(args.runs):
            for mode in modes:
                keep(
                    {"kind": "rps", "mode": mode, "value": requests_per_second(mode, args.seconds)}
                )
        print_tables([r for r in records if r["kind"] == "rps"])


if __name__ == "__main__":
    main()
