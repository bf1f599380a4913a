"""serve_until_shutdown with a Hypercorn Config: the ready way to run a server."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any

import trio
from hypercorn.config import Config

from trio_cancel.asgi import serve_until_shutdown


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise RuntimeError("no lifespan support")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def main(bind: str) -> None:
    config = Config()
    config.bind = [bind]
    config.keep_alive_timeout = 75  # above the load balancer's idle timeout
    # certfile/keyfile for TLS, h2 settings, ...: Hypercorn's own
    config.accesslog = "-"
    async with trio.open_nursery() as nursery:
        url = await nursery.start(functools.partial(serve, config))
        pid = os.getpid()
        print(f"serving on {url}: stop with Ctrl+C or kill -TERM {pid}", flush=True)


async def serve(config: Config, task_status: trio.TaskStatus[str]) -> None:
    report = await serve_until_shutdown(
        app, config=config, grace=10.0, timeout=30.0, task_status=task_status
    )
    print(json.dumps(report.to_dict()), file=sys.stderr)  # then the process exits


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8000")
