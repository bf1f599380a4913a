"""An HTTP server that shuts down gracefully on SIGTERM and says who landed.

``trio_cancel.asgi.serve_until_shutdown`` runs an ASGI app on Hypercorn's Trio worker under a
``GracefulShutdown``: on SIGTERM (or Ctrl+C) the listener closes (new connections are
refused), requests in flight get ``--grace`` seconds to finish, the rest are aborted and
answered 503; a second signal forces that at once. The landing report goes to stderr as JSON
(and as a table) and the process exits 0.

Under an orchestrator (Kubernetes), ``--drain-delay 5 --readiness-path /ready``: SIGTERM first
starts a drain, where ``/ready`` answers 503 while every other request is served normally;
the shutdown above begins 5 s later (at once on Ctrl+C or a second SIGTERM). The report says
when each phase began.

The app: ``/sleep/SECONDS`` answers after that many seconds.

``--measure N`` starts the server as a subprocess, opens N slow requests (10 s each) on raw
sockets, sends SIGTERM when all are in flight, and reports the time from the signal to the
process's exit and how many requests landed or were forced.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import trio

import trio_cancel as tc
from trio_cancel.asgi import serve_until_shutdown


async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
    if scope["type"] != "http":
        raise RuntimeError("no lifespan support")
    path = scope["path"]
    seconds = float(path.rsplit("/", 1)[-1]) if path.startswith("/sleep/") else 0.0
    await trio.sleep(seconds)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": f"slept {seconds:g} s".encode()})


async def serve(grace: float, drain_delay: float, readiness_path: str | None) -> None:
    async with trio.open_nursery() as nursery:
        # Returns once the server listens, with its URL (and the server task's handle).
        _server, url = await tc.start(
            nursery, run, grace, drain_delay, readiness_path, name="http server"
        )
        print(url, flush=True)
        print(
            f"stop with Ctrl+C, or kill -TERM {os.getpid()} (a second signal forces the shutdown)",
            flush=True,
        )


async def run(
    grace: float,
    drain_delay: float,
    readiness_path: str | None,
    *,
    task_status: trio.TaskStatus[str],
) -> None:
    report = await serve_until_shutdown(
        app,
        bind="127.0.0.1:0",
        grace=grace,
        drain_delay=drain_delay,
        readiness_path=readiness_path,
        task_status=task_status,
    )
    print(report, file=sys.stderr, flush=True)
    print(json.dumps(report.to_dict()), file=sys.stderr, flush=True)


async def open_slow_request(port: int, seconds: float) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET /sleep/{seconds:g} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return stream


async def measure(n: int, grace: float) -> None:
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, read from a thread below
        [sys.executable, __file__, "--grace", str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
    streams = [await open_slow_request(port, 10) for _ in range(n)]
    await trio.sleep(0.5)  # every request is in flight
    sent = time.perf_counter()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = await trio.to_thread.run_sync(proc.communicate)
    exited = time.perf_counter() - sent
    for stream in streams:
        await stream.aclose()
    report = json.loads(err.strip().splitlines()[-1])
    print(
        f"{n} in-flight requests, SIGTERM, {grace:g} s grace: exit code {proc.returncode} "
        f"after {exited:.2f} s; {report['landed']} landed, {report['forced']} forced"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grace", type=float, default=2.0)
    parser.add_argument("--drain-delay", type=float, default=0.0, help="seconds to drain first")
    parser.add_argument("--readiness-path", help="a path answering 503 from SIGTERM on")
    parser.add_argument("--measure", type=int, metavar="N", help="drive N slow requests")
    args = parser.parse_args()
    if args.measure:
        trio.run(measure, args.measure, args.grace)
    else:
        trio.run(serve, args.grace, args.drain_delay, args.readiness_path)
