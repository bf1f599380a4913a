"""E06: an HTTP request timeout as middleware; the slow handler is cancelled, the client gets 408.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

An axum ``timeout_middleware`` wraps each request in a 30 s ``timeout`` and answers
``REQUEST_TIMEOUT`` (408) when it expires, dropping the handler's future. Here:
``trio_cancel.asgi.CancelMiddleware(app, timeout=..., timeout_status=408)``, which runs each
request under a token of its own and cancels the handler when the time is up (its
``trio.Cancelled`` carries the reason "request timeout"; its ``finally`` runs). The client gets
408 with ``{"code": "deadline_exceeded"}``, as the article's layer answers.

The library's default ``timeout_status`` is 504, not 408: RFC 9110 gives 408 to a server that
gave up waiting for the *client* to finish sending its request, while a handler that ran out
of time is the server's side failing, which proxies and gateways report as 504. Pass
``timeout_status=408`` when clients expect the axum layer's answer, as here. A real Hypercorn
server (Trio worker) on 127.0.0.1 and a real httpx client. The limit is 0.2 s instead of 30 s
so that the demo is quick.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

import trio_cancel as tc
from trio_cancel.asgi import CancelMiddleware

Scope = dict[str, Any]
Receive = Any
Send = Any

events: list[str] = []


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    start = trio.current_time()
    seconds = 1.0 if path == "/slow" else 0.01
    try:
        await trio.sleep(seconds)  # the database, another service...
    except trio.Cancelled as exc:
        took = trio.current_time() - start
        events.append(f"{path}: handler cancelled after {took:.1f} s ({exc.reason})")
        raise
    events.append(f"{path}: handler finished")
    body = json.dumps({"path": path, "took": seconds}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def main() -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    stop = trio.Event()
    # 408 as the axum layer answers; the library's default is 504 (see above).
    middleware = CancelMiddleware(app, timeout=0.2, timeout_status=408)
    async with trio.open_nursery() as nursery:
        # Returns once Hypercorn listens (no polling), with its addresses and a handle.
        _server, binds = await tc.start(
            nursery,
            functools.partial(serve, middleware, config, shutdown_trigger=stop.wait),
            name="hypercorn",
        )
        base = binds[0]
        async with httpx.AsyncClient(base_url=base) as client:
            for path in ("/fast", "/slow"):
                response = await client.get(path)
                print(f"GET {path} -> {response.status_code} {response.text}")
        stop.set()
    for event in events:
        print(event)


if __name__ == "__main__":
    trio.run(main)
