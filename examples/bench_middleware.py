"""What CancelMiddleware costs: requests per second on a small endpoint, with and without it.

A real Hypercorn server (Trio worker) in this process on 127.0.0.1, and ``wrk`` (Debian's
HTTP load generator) in another process: for each variant, one warm-up run, then ``--runs``
timed runs of ``--seconds`` each, alternating the variants so that the machine's drift hits both
alike. Prints the median requests per second of each and their ratio (the project's budget:
the middleware costs at most 15 %). Without ``wrk`` on the PATH, it says how to install it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from trio_cancel.asgi import CancelMiddleware


async def hello(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
    if scope["type"] != "http":
        raise RuntimeError("no lifespan support")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def measure(app: Any, seconds: float) -> float:  # noqa: ANN401
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        command = ["wrk", "-t1", "-c32", f"-d{max(1, round(seconds))}s", binds[0] + "/"]
        result = await trio.run_process(command, capture_stdout=True)
        stop.set()
    match = re.search(rb"Requests/sec:\s+([\d.]+)", result.stdout)
    assert match is not None, result.stdout
    return float(match[1])


async def main(seconds: float, runs: int) -> None:
    variants = {"plain": hello, "CancelMiddleware": CancelMiddleware(hello, timeout=30.0)}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for app in variants.values():
        await measure(app, 1.0)  # warm-up
    for _ in range(runs):
        for name, app in variants.items():
            results[name].append(await measure(app, seconds))
    plain = statistics.median(results["plain"])
    wrapped = statistics.median(results["CancelMiddleware"])
    print(f"plain app:         {plain:8.0f} requests/s (median of {runs})")
    print(f"with middleware:   {wrapped:8.0f} requests/s (median of {runs})")
    print(f"ratio: {wrapped / plain:.2f} ({(1 - wrapped / plain) * 100:.0f} % fewer requests/s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: sudo apt-get install -y wrk (Debian, Ubuntu) "
            "or brew install wrk (macOS)"
        )
        raise SystemExit(0)
    trio.run(main, args.seconds, args.runs)
