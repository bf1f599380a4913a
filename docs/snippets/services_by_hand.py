"""A server wired by hand: Hypercorn's Trio worker, the middleware and a GracefulShutdown.

Ctrl+C or SIGTERM triggers the shutdown (a second signal forces it); the report prints once
every request has landed, then Hypercorn stops and the process exits.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

import trio_cancel as tc
from trio_cancel.asgi import CancelMiddleware


async def handler(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise RuntimeError("no lifespan support")
    await trio.sleep(0.1)  # some work
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})


async def main(bind: str) -> None:
    config = Config()
    config.bind = [bind]
    # Hypercorn's shutdown_trigger: set once every request has landed
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        async with tc.GracefulShutdown(grace=10.0) as gs:
            gs.install_signal_handlers()
            app = CancelMiddleware(handler, timeout=30.0, shutdown=gs)
            urls = await nursery.start(
                functools.partial(serve, app, config, shutdown_trigger=stop.wait)
            )
            stop_with = f"Ctrl+C or kill -TERM {os.getpid()}"
            print(f"serving on {urls[0]}: stop with {stop_with}", flush=True)
            await gs.token.wait_cancelled()  # the first signal
            # Every request in flight has landed (or was forced):
            report = await gs.wait()
        # Hypercorn stops listening and returns: the nursery, and the process, end.
        stop.set()
    print(report, flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8000")
