"""A deadline, and a cancellation, that follow one request across three services: A -> B -> C.

Microservice call chains are where a cancelled caller must stop its callee: the source article
on landing in-flight tasks passes a child token to each downstream call; gRPC and Connect send
the caller's remaining time along (``grpc-timeout``, ``Connect-Timeout-Ms``) so that the next
service stops when the caller would stop waiting. Here three real Hypercorn processes on
127.0.0.1, each an ASGI app behind ``trio_cancel.asgi.CancelMiddleware``, each calling the next
with an httpx client whose ``trio_cancel.deadlines.async_propagate_deadline`` hook sends the
remaining budget. C has 2 s of work.

1. The client gives A 0.5 s: each hop receives a smaller budget than the one before (the time
   already spent is subtracted, and each hop keeps back a margin so that its callee gives up
   first; never an absolute time: no clock skew). C's handler is cancelled before 0.5 s with
   the reason "caller deadline", and its 504 travels back up to the client. The margin is
   ``HOP_MARGIN_MS``: 20 ms by default, 100 ms here, so that each callee's answer reaches its
   caller before the caller's own deadline even on a loaded machine (if it does not, the
   caller's middleware answers the same 504 itself: the client gets 504 either way).
2. The client gives no deadline, and goes away after 0.2 s: A notices the disconnect and is
   cancelled, which cancels its call to B, which B notices as a disconnect, and so on to C.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

import trio_cancel as tc
from trio_cancel import deadlines
from trio_cancel.asgi import CancelMiddleware
from trio_cancel.deadlines import async_propagate_deadline

# What each hop keeps back from the budget it sends on (20 ms by default): the time the
# callee's answer has to travel back before the caller's own deadline.
deadlines.HOP_MARGIN_MS = 100


def log_event(path: str, **event: object) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"t": time.time(), **event}) + "\n")


def make_service(
    name: str, next_url: str | None, work: float, log: str, client: httpx.AsyncClient
) -> Any:  # noqa: ANN401 - an ASGI app
    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] != "http":
            raise RuntimeError("no lifespan support")
        budget = dict(scope["headers"]).get(b"connect-timeout-ms")
        log_event(log, svc=name, event="start", budget_ms=budget and int(budget))
        try:
            if next_url is not None:
                response = await client.get(next_url)  # sends what is left of the budget
                if response.status_code != 200:  # the callee's failure is this call's too
                    log_event(log, svc=name, event="passed on", status=response.status_code)
                    await send(
                        {
                            "type": "http.response.start",
                            "status": response.status_code,
                            "headers": [],
                        }
                    )
                    await send({"type": "http.response.body", "body": response.content})
                    return
                body = f"{name} <- {response.text}".encode()
            else:
                await trio.sleep(work)
                body = f"{name} done".encode()
        except trio.Cancelled as exc:
            log_event(log, svc=name, event="cancelled", reason=exc.reason)
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return CancelMiddleware(app, timeout=30.0)


async def serve_one(name: str, next_url: str | None, work: float, log: str) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    hooks: Any = {"request": [async_propagate_deadline]}
    async with (
        httpx.AsyncClient(event_hooks=hooks, timeout=None) as client,
        trio.open_nursery() as nursery,
    ):
        app = make_service(name, next_url, work, log, client)
        _server, binds = await tc.start(nursery, serve, app, config, name=name)
        print(binds[0], flush=True)  # tells the driver where this service listens


def start_service(name: str, next_url: str | None, work: float, log: str) -> tuple[Any, str]:
    args = [sys.executable, __file__, "serve", name, "--work", str(work), "--log", log]
    if next_url is not None:
        args += ["--next", next_url]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def read_log(log: str) -> list[dict[str, Any]]:
    complete = Path(log).read_text().rpartition("\n")[0]  # a line being written is left out
    return [json.loads(line) for line in complete.splitlines()]


async def wait_for_landing(log: str) -> list[dict[str, Any]]:
    """The services' events once each of A, B and C has logged how its handler ended."""
    with trio.fail_after(30):  # a hang guard, not a speed requirement
        while True:
            events = read_log(log)
            ended = {e["svc"] for e in events if e["event"] in ("cancelled", "passed on")}
            if ended >= {"A", "B", "C"}:
                return events
            await trio.sleep(0.02)  # the services write to the file: look again


async def scenario(
    client: httpx.AsyncClient, url: str, log: str, *, budget_ms: int | None, leave_after: float
) -> None:
    Path(log).write_text("")  # noqa: ASYNC240 - an empty file, once per scenario
    headers = {} if budget_ms is None else {"Connect-Timeout-Ms": str(budget_ms)}
    t0 = time.time()
    with trio.move_on_after(leave_after):  # how long the client is willing to wait
        response = await client.get(url + "/work", headers=headers)
        print(f"  the client got {response.status_code} {response.text}")
    events = await wait_for_landing(log)
    budgets = [f"{e['svc']} {e['budget_ms']} ms" for e in events if e["event"] == "start"]
    if budget_ms is not None:
        print("  budgets received: " + " > ".join(budgets))
        received = [e["budget_ms"] for e in events if e["event"] == "start"]
        shrinking = all(a > b for a, b in itertools.pairwise(received))
        print(f"  each hop saw a smaller budget than the one before: {shrinking}")
    # In time order; scenario 2's three cancellations happen within a millisecond: by name.
    for e in sorted(events, key=lambda e: e["svc"] if budget_ms is None else f"{e['t']:.6f}"):
        if e["event"] == "cancelled":
            print(f"  {e['svc']}: handler cancelled at {e['t'] - t0:.2f} s: {e['reason']}")
        elif e["event"] == "passed on":
            print(f"  {e['svc']}: passed its callee's {e['status']} on at {e['t'] - t0:.2f} s")


async def drive() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "events.jsonl")
        c, c_url = start_service("C", None, 2.0, log)
        b, b_url = start_service("B", c_url + "/work", 0, log)
        a, a_url = start_service("A", b_url + "/work", 0, log)
        try:
            async with httpx.AsyncClient(timeout=None) as client:
                print("1. the client gives A a 0.5 s budget; C has 2 s of work:")
                await scenario(client, a_url, log, budget_ms=500, leave_after=5)
                print("2. no deadline; the client goes away after 0.2 s:")
                await scenario(client, a_url, log, budget_ms=None, leave_after=0.2)
        finally:
            for proc in (a, b, c):
                proc.terminate()
            for proc in (a, b, c):
                proc.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    serve_parser = sub.add_parser("serve", help="run one service (used by the driver)")
    serve_parser.add_argument("name")
    serve_parser.add_argument("--next")
    serve_parser.add_argument("--work", type=float, default=0.0)
    serve_parser.add_argument("--log", required=True)
    args = parser.parse_args()
    if args.mode == "serve":
        trio.run(serve_one, args.name, args.next, args.work, args.log)
    else:
        trio.run(drive)
