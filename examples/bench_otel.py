"""What trio_cancel.otel costs: the mass-cancel and middleware benchmarks, with and without it.

Three modes, each in fresh processes, interleaved run by run so that the machine's drift hits
all alike (medians of ``--runs``):

* ``off``: ``trio_cancel.otel`` is never imported (the library records nothing);
* ``instrumented``: ``import trio_cancel.otel`` and ``instrument()``, no SDK configured (the
  OpenTelemetry API's no-op provider): the budget is 3 % at most;
* ``sdk``: as ``instrumented``, with the SDK's tracer provider (a simple processor into an
  in-memory exporter) and meter provider (an in-memory reader): every task then has a span.

Measured: ``bench_cancel.py``'s ``token-scope`` and ``joinset`` variants at ``--tasks`` tasks
(the time from the cancel to the last join), and ``bench_middleware.py``'s requests per second
through ``CancelMiddleware`` (needs ``wrk``; skipped without it, or with ``--no-http``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

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


def _table(title: str, unit: str, results: dict[str, list[float]], higher_is_better: bool) -> None:
    base = statistics.median(results["off"])
    print(title)
    for mode in MODES:
        med = statistics.median(results[mode])
        change = (med / base - 1) * 100
        worse = -change if higher_is_better else change
        print(f"  {mode:<13} {med:10.4g} {unit}   {worse:+6.1f} % cost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per HTTP run")
    parser.add_argument("--no-http", action="store_true", help="skip the middleware benchmark")
    parser.add_argument(
        "--variants", nargs="+", default=["token-scope", "joinset"], help="bench_cancel variants"
    )
    args = parser.parse_args()

    for variant in args.variants:
        wall: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.runs):
            for mode in MODES:
                wall_s, cpu_s = cancel_seconds(mode, variant, args.tasks)
                wall[mode].append(wall_s)
                cpu[mode].append(cpu_s)
        title = f"bench_cancel.py {variant}, {args.tasks:,} tasks: cancel to last join"
        _table(f"{title} (median of {args.runs})", "s", wall, higher_is_better=False)
        _table(f"{title}, CPU time (median of {args.runs})", "s CPU", cpu, higher_is_better=False)
    if args.no_http:
        return
    if shutil.which("wrk") is None:
        print("bench_middleware.py: skipped (wrk is not installed: apt-get install wrk)")
        return
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.runs):
        for mode in MODES:
            results[mode].append(requests_per_second(mode, args.seconds))
    _table(
        f"bench_middleware.py CancelMiddleware, requests per second (median of {args.runs})",
        "req/s",
        results,
        higher_is_better=True,
    )


if __name__ == "__main__":
    main()
