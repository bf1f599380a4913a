"""E10: a service whose in-flight calls answer "cancelled" when the service token fires.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

A tonic gRPC method ``long_running`` takes a child of the service's token and races
``token.cancelled()`` against ``do_work()`` in ``select!``: when the service token is cancelled,
every call still working answers ``Status::cancelled``, and calls that had already finished keep
their results.

Here the request/response transport is HTTP: a real Hypercorn server (Trio worker) on
127.0.0.1, a real httpx client. Each call ``POST /long_running?seconds=N`` races
``child.wait_cancelled`` against the work with ``tc.select``. Three calls are sent at once
(0.05 s, 1 s and 2 s of work); after 0.3 s the service token is cancelled. Shown: the short call
succeeded; the two long ones answer "cancelled" with the token's reason, promptly; a call made
afterwards is answered "cancelled" at once (its child token is born cancelled).
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

Receive = Any
Send = Any


class Service:
    def __init__(self) -> None:
        self.token = tc.CancellationToken()

    async def do_work(self, seconds: float) -> dict[str, Any]:
        await trio.sleep(seconds)
        return {"work_seconds": seconds}

    async def long_running(self, seconds: float) -> tuple[int, dict[str, Any]]:
        token = self.token.child_token()
        won = await tc.select(
            cancelled=token.wait_cancelled,
            result=functools.partial(self.do_work, seconds),
        )
        if won.name == "cancelled":
            return 503, {"status": "cancelled", "message": f"Request cancelled: {token.reason}"}
        return 200, {"status": "ok", "result": won.value}

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if part
        )
        status, payload = await self.long_running(float(query.get("seconds", "0")))
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


async def call(client: httpx.AsyncClient, seconds: float, t0: float) -> None:
    response = await client.post("/long_running", params={"seconds": seconds})
    took = trio.current_time() - t0
    body = response.json()
    print(
        f"  {seconds:>4} s of work -> {response.status_code} {body['status']:<9} after {took:.2f} s"
    )
    if body["status"] == "cancelled":
        print(f"      {body['message']}")


async def main() -> None:
    service = Service()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        asgi_app: Any = service  # an ASGI 3 callable; Hypercorn's own types are stricter
        binds = await nursery.start(
            functools.partial(serve, asgi_app, config, shutdown_trigger=stop.wait)
        )
        async with httpx.AsyncClient(base_url=binds[0], timeout=10) as client:
            print("three calls in flight; the service token is cancelled after 0.3 s:")
            t0 = trio.current_time()
            async with trio.open_nursery() as calls:
                for seconds in (0.05, 1.0, 2.0):
                    calls.start_soon(call, client, seconds, t0)
                await trio.sleep(0.3)
                service.token.cancel("server shutting down")
            print("a call made after the cancel:")
            await call(client, 0.05, trio.current_time())
        stop.set()


if __name__ == "__main__":
    trio.run(main)
