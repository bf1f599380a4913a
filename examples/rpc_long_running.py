"""E10: a service whose in-flight calls answer "canceled" when the service token fires.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

A tonic gRPC method ``long_running`` takes a child of the service's token and races
``token.cancelled()`` against ``do_work()`` in ``select!``: when the service token is cancelled,
every call still working answers ``Status::cancelled``, and calls that had already finished keep
their results.

Here the service is a real RPC service: ``connectrpc`` (the Connect protocol's Python
implementation, which interoperates with gRPC) on a real Hypercorn server (Trio worker) on
127.0.0.1, called with httpx (a unary Connect call is an HTTP POST; connectrpc's own async
client needs asyncio). The method ``demo.Jobs/LongRunning`` takes a ``StringValue`` with the
seconds of work, races a child of the service token against the work with ``tc.select``, and
raises ``ConnectError(Code.CANCELED)`` when the token wins. Three calls are sent at once (0.05 s,
1 s and 2 s of work); after 0.3 s the service token is cancelled. Shown: the short call
succeeded; the two long ones answer ``canceled``, promptly; a call made afterwards is answered
``canceled`` at once (its child token is born cancelled). First, the deadline: a call whose
client gives it 0.35 s (``Connect-Timeout-Ms: 350``, written by
``trio_cancel.deadlines.format_connect_timeout``) gets ``deadline_exceeded`` from connectrpc
itself, which cut its handler there. The client waits for that answer (under a hang guard, not
under a 0.35 s scope of its own: such a scope would race the server's answer, which arrives a
little after the budget; within a service, ``async_propagate_deadline`` sends what remains of
the caller's deadline less a margin so that the callee's answer comes first).
"""

from __future__ import annotations

import functools
from typing import Any

import httpx
import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.server import ConnectASGIApplication, Endpoint
from hypercorn.config import Config
from hypercorn.trio import serve
from protobuf.wkt.google.protobuf.wrappers_pb import StringValue

import trio_cancel as tc
from trio_cancel.deadlines import format_connect_timeout

LONG_RUNNING = MethodInfo(
    name="LongRunning",
    service_name="demo.Jobs",
    input=StringValue,
    output=StringValue,
    idempotency_level=IdempotencyLevel.UNKNOWN,
    stream_type=StreamType.UNARY,
)


class Jobs:
    def __init__(self) -> None:
        self.token = tc.CancellationToken()

    async def do_work(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return f"worked {seconds:g} s"

    async def long_running(self, request: StringValue, ctx: Any) -> StringValue:  # noqa: ANN401
        token = self.token.child_token()  # this call's own token
        won = await tc.select(
            cancelled=token.wait_cancelled,
            result=functools.partial(self.do_work, float(request.value)),
        )
        if won.name == "cancelled":
            raise ConnectError(Code.CANCELED, f"Request cancelled: {token.reason}")
        return StringValue(value=str(won.value))


class JobsApplication(ConnectASGIApplication[Jobs]):
    """What the Connect code generator writes for a service: its path and its endpoints."""

    @property
    def path(self) -> str:
        return "/demo.Jobs"


def make_app(jobs: Jobs) -> Any:  # noqa: ANN401 - an ASGI app
    return JobsApplication(
        service=jobs,
        endpoints=lambda svc: {
            "/demo.Jobs/LongRunning": Endpoint.unary(LONG_RUNNING, svc.long_running)
        },
    )


async def call(
    client: httpx.AsyncClient, seconds: float, t0: float, budget: float | None = None
) -> None:
    headers = {"content-type": "application/proto"}
    if budget is not None:
        headers["Connect-Timeout-Ms"] = format_connect_timeout(budget)
    response = await client.post(  # a unary Connect call: the message, protobuf-encoded
        "/demo.Jobs/LongRunning",
        content=StringValue(value=str(seconds)).to_binary(),
        headers=headers,
    )
    took = trio.current_time() - t0
    if response.status_code == 200:
        result = StringValue.from_binary(response.content).value
        print(f"  {seconds:>4} s of work -> 200 ok        after {took:.2f} s: {result}")
        return
    error = response.json()  # a Connect error is JSON: {"code": ..., "message": ...}
    code = error["code"]
    print(f"  {seconds:>4} s of work -> {response.status_code} {code:<9} after {took:.2f} s")
    print(f"      {error['message']}")


async def main() -> None:
    jobs = Jobs()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        # Returns once Hypercorn listens (no polling), with its addresses and a handle.
        _server, binds = await tc.start(
            nursery,
            functools.partial(serve, make_app(jobs), config, shutdown_trigger=stop.wait),
            name="hypercorn",
        )
        async with httpx.AsyncClient(base_url=binds[0], timeout=10) as client:
            print("a call given 0.35 s by its client (Connect-Timeout-Ms: 350):")
            t0 = trio.current_time()
            with trio.fail_after(30):  # a hang guard: the server's answer ends the call
                await call(client, 2.0, t0, budget=0.35)
            print("three calls in flight; the service token is cancelled after 0.3 s:")
            t0 = trio.current_time()
            async with trio.open_nursery() as calls:
                for seconds in (0.05, 1.0, 2.0):
                    calls.start_soon(call, client, seconds, t0)
                await trio.sleep(0.3)
                jobs.token.cancel("server shutting down")
            print("a call made after the cancel:")
            await call(client, 0.05, trio.current_time())
        stop.set()


if __name__ == "__main__":
    trio.run(main)
