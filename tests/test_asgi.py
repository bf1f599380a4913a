"""Tests of trio_cancel.asgi against a real Hypercorn server (Trio worker) on 127.0.0.1, with a
real httpx client and raw sockets for what a well-behaved client does not do."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

import trio_cancel as tc
from trio_cancel.asgi import CancelMiddleware, DeadlineHeaderError, parse_deadline_headers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from starlette.requests import Request


@attrs.define
class Recorder:
    """What the handlers saw: one entry per handler end, ``(path, how, reason, at)``."""

    events: list[tuple[str, str, str | None, float]] = attrs.Factory(list)
    started: dict[str, trio.Event] = attrs.Factory(dict)
    ended: trio.Event = attrs.Factory(trio.Event)

    def end(self, path: str, how: str, reason: str | None) -> None:
        self.events.append((path, how, reason, time.perf_counter()))
        self.ended.set()

    def started_event(self, path: str) -> trio.Event:
        return self.started.setdefault(path, trio.Event())

    def reasons(self, path: str) -> list[str | None]:
        return [reason for p, how, reason, _ in self.events if p == path and how == "cancelled"]


def make_app(rec: Recorder) -> Any:  # noqa: ANN401 - an ASGI app
    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        rec.started_event(path).set()
        seconds = float(path.rsplit("/", 1)[-1]) if path.startswith("/sleep/") else 0.0
        if path == "/boom":
            raise RuntimeError("handler bug")
        try:
            if path == "/stream":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                # Then wait under no scope of its own: a scope with a deadline (trio.sleep)
                # that expires in the same scheduling round as the token's cancellation would
                # raise its own Cancelled (reason None) past itself, as Trio delivers the
                # innermost cancelled scope's reason (the token's reason stays exact).
                await trio.sleep_forever()
            await trio.sleep(seconds)
        except trio.Cancelled as exc:
            rec.end(path, "cancelled", exc.reason)
            raise
        rec.end(path, "finished", None)
        ext = scope.get("extensions", {}).get("trio_cancel")
        body = json.dumps({"path": path, "has_token": ext is not None}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:  # noqa: ANN401
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        try:
            yield binds[0]
        finally:
            stop.set()


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


# ---------------------------------------------------------------- timeouts


async def test_slow_handler_is_cancelled_with_a_reason_and_the_client_gets_504() -> None:
    rec = Recorder()
    async with (
        running(CancelMiddleware(make_app(rec), timeout=0.2)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        fast = await client.get("/sleep/0.01")
        slow = await client.get("/sleep/5")
    assert fast.status_code == 200
    assert fast.json() == {"path": "/sleep/0.01", "has_token": True}
    assert slow.status_code == 504
    assert slow.json()["code"] == "deadline_exceeded"
    assert rec.reasons("/sleep/5") == ["request timeout"]


async def test_408_when_the_request_body_had_not_arrived() -> None:
    rec = Recorder()
    async with running(CancelMiddleware(make_app(rec), timeout=0.2)) as base:
        stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
        async with stream:
            await stream.send_all(
                b"POST /sleep/5 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part"
            )
            data = b""
            with trio.fail_after(5):
                while b"\r\n\r\n" not in data:
                    data += await stream.receive_some()
    assert data.startswith(b"HTTP/1.1 408")


async def test_a_response_already_started_is_not_started_twice() -> None:
    rec = Recorder()
    async with (
        running(CancelMiddleware(make_app(rec), timeout=0.2)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/stream")  # 200 started, then cut: the connection closes
    assert rec.reasons("/stream") == ["request timeout"]


# ---------------------------------------------------------------- client disconnect


async def _request_and_leave(base: str, path: str, rec: Recorder) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await rec.started_event(path).wait()
    left = time.perf_counter()
    await stream.aclose()
    return left


async def test_client_disconnect_cancels_the_handler() -> None:
    rec = Recorder()
    async with running(CancelMiddleware(make_app(rec))) as base:
        left = await _request_and_leave(base, "/sleep/5", rec)
        with trio.fail_after(2):  # far below the handler's 5 s: it was cut, not finished
            await rec.ended.wait()
    path, how, reason, at = rec.events[0]
    assert (path, how, reason) == ("/sleep/5", "cancelled", "client disconnected")
    assert at >= left  # cancelled after the client left (the latency is bench_middleware's)


async def test_bare_hypercorn_runs_the_handler_to_the_end_after_the_client_left() -> None:
    """Why the middleware exists: without it the handler never learns the client is gone."""
    rec = Recorder()
    async with running(make_app(rec)) as base:
        await _request_and_leave(base, "/sleep/0.5", rec)
        with trio.fail_after(3):
            await rec.ended.wait()
    assert rec.events[0][:2] == ("/sleep/0.5", "finished")


async def test_every_request_message_reaches_the_app() -> None:
    received: list[bytes] = []

    async def echo(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] != "http":
            raise RuntimeError("no lifespan support")  # Hypercorn then goes on without it
        while True:
            message = await receive()
            received.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(received)})

    async with running(CancelMiddleware(echo)) as base, httpx.AsyncClient(base_url=base) as client:

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"chunk{i};".encode()

        response = await client.post("/echo", content=chunks())
    assert response.text == "".join(f"chunk{i};" for i in range(5))


# ---------------------------------------------------------------- per-request tokens


async def test_cancelling_one_requests_token_never_touches_another() -> None:
    tokens: dict[str, tc.CancellationToken] = {}
    rec = Recorder()
    inner = make_app(rec)

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] == "http":
            tokens[scope["path"]] = scope["extensions"]["trio_cancel"]["token"]
        await inner(scope, receive, send)

    mw = CancelMiddleware(app)
    async with (
        running(mw) as base,
        httpx.AsyncClient(base_url=base) as client,
        trio.open_nursery() as nursery,
    ):
        results: dict[str, int] = {}

        async def get(path: str) -> None:
            results[path] = (await client.get(path)).status_code

        nursery.start_soon(get, "/sleep/0.3")
        nursery.start_soon(get, "/sleep/0.31")
        await rec.started_event("/sleep/0.3").wait()
        await rec.started_event("/sleep/0.31").wait()
        tokens["/sleep/0.3"].cancel("operator cancelled it")
    assert rec.reasons("/sleep/0.3") == ["operator cancelled it"]
    assert results == {"/sleep/0.3": 503, "/sleep/0.31": 200}


# ---------------------------------------------------------------- shutdown


async def test_shutdown_lands_what_it_can_and_answers_503_for_the_rest() -> None:
    rec = Recorder()
    statuses: dict[str, tuple[int, str | None]] = {}
    async with tc.GracefulShutdown(grace=0.3) as gs:
        mw = CancelMiddleware(make_app(rec), shutdown=gs)
        async with running(mw) as base, httpx.AsyncClient(base_url=base) as client:

            async def get(path: str) -> None:
                response = await client.get(path)
                statuses[path] = (response.status_code, response.headers.get("retry-after"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(get, "/sleep/0.1")
                nursery.start_soon(get, "/sleep/5")
                await rec.started_event("/sleep/0.1").wait()
                await rec.started_event("/sleep/5").wait()
                gs.trigger("deploy")
                await get("/sleep/0.01")  # arrives after the trigger
            report = await gs.wait()
    assert statuses["/sleep/0.1"] == (200, None)  # finished within the grace period
    assert statuses["/sleep/5"] == (503, "5")
    assert statuses["/sleep/0.01"] == (503, "5")  # refused at once, never run
    assert "/sleep/0.01" not in rec.started
    rows = {landing.name: landing for landing in report}
    assert set(rows) == {"GET /sleep/0.1", "GET /sleep/5"}
    assert not rows["GET /sleep/0.1"].forced
    assert rows["GET /sleep/5"].forced
    assert isinstance(rows["GET /sleep/5"].outcome, tc.Aborted)


# ---------------------------------------------------------------- deadlines between services


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"connect-timeout-ms", b"300")], 0.3),
        ([(b"Connect-Timeout-Ms", b"0")], 0.0),
        ([(b"grpc-timeout", b"2S")], 2.0),
        ([(b"grpc-timeout", b"1M")], 60.0),
        ([(b"grpc-timeout", b"250m")], 0.25),
        ([(b"grpc-timeout", b"99999999u")], 99.999999),
        ([(b"grpc-timeout", b"1H")], 3600.0),
        ([(b"connect-timeout-ms", b"500"), (b"grpc-timeout", b"100m")], 0.1),
    ],
)
def test_deadline_headers_parse(headers: list[tuple[bytes, bytes]], expected: float | None) -> None:
    budget = parse_deadline_headers(headers)
    if expected is None:
        assert budget is None
    else:
        assert budget == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"connect-timeout-ms", b"abc"),
        (b"connect-timeout-ms", b""),
        (b"connect-timeout-ms", b"-5"),
        (b"connect-timeout-ms", b"1.5"),
        (b"connect-timeout-ms", b" 300"),
        (b"connect-timeout-ms", b"12345678901"),
        (b"grpc-timeout", b"5x"),
        (b"grpc-timeout", b"S"),
        (b"grpc-timeout", b"123456789S"),
        (b"grpc-timeout", b"5s"),
    ],
)
async def test_malformed_deadline_header_is_400(name: bytes, value: bytes) -> None:
    with pytest.raises(DeadlineHeaderError):
        parse_deadline_headers([(name, value)])
    if value != value.strip():
        return  # HTTP itself strips a header value's surrounding whitespace (h11 does)
    rec = Recorder()
    async with running(CancelMiddleware(make_app(rec))) as base:
        stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
        async with stream:
            request = b"GET /sleep/0 HTTP/1.1\r\nHost: x\r\n" + name + b": " + value + b"\r\n\r\n"
            await stream.send_all(request)
            data = b""
            with trio.fail_after(5):
                while b"}" not in data:
                    data += await stream.receive_some()
    assert data.startswith(b"HTTP/1.1 400")
    assert b'"invalid_argument"' in data
    assert rec.started == {}


async def test_caller_deadline_bounds_the_handler_and_zero_never_runs_it() -> None:
    rec = Recorder()
    mw = CancelMiddleware(make_app(rec), timeout=10, max_timeout=2.0)
    async with running(mw) as base, httpx.AsyncClient(base_url=base) as client:
        start = time.perf_counter()
        cut = await client.get("/sleep/5", headers={"Connect-Timeout-Ms": "300"})
        elapsed = time.perf_counter() - start
        clamped = await client.get("/sleep/5", headers={"grpc-timeout": "1H"})  # clamped to 2 s
        zero = await client.get("/sleep/0.01", headers={"Connect-Timeout-Ms": "0"})
    assert cut.status_code == 504
    assert 0.28 < elapsed < 2.0  # the caller's 300 ms, not the 2 s clamp nor the 5 s sleep
    assert clamped.status_code == 504
    assert zero.status_code == 504
    assert "/sleep/0.01" not in rec.started  # 0: answered without running the handler
    assert rec.reasons("/sleep/5") == ["caller deadline", "caller deadline"]


# ---------------------------------------------------------------- everything else


async def test_lifespan_passes_through_and_an_app_error_is_500() -> None:
    rec = Recorder()
    async with (
        running(CancelMiddleware(make_app(rec), timeout=1)) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        response = await client.get("/boom")
    assert response.status_code == 500


def test_bad_configuration_fails_at_construction() -> None:
    app = make_app(Recorder())
    for timeout in (0, -1, math.nan, math.inf, -math.inf, 10**400, -(10**400)):
        with pytest.raises(ValueError, match="timeout"):
            CancelMiddleware(app, timeout=timeout)
        with pytest.raises(ValueError, match="max_timeout"):
            CancelMiddleware(app, max_timeout=timeout)
        with pytest.raises(ValueError, match="retry_after"):
            CancelMiddleware(app, retry_after=timeout)
    for wrong in ("5", True, None):
        with pytest.raises(TypeError, match="retry_after"):
            CancelMiddleware(app, retry_after=wrong)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout"):
        CancelMiddleware(app, timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="400 to 599"):
        CancelMiddleware(app, timeout_status=200)
    with pytest.raises(ValueError, match="400 to 599"):
        CancelMiddleware(app, shutdown_status=600)
    with pytest.raises(TypeError, match="ASGI app"):
        CancelMiddleware(None)


# ---------------------------------------------------------------- the client side


async def test_client_hook_sends_the_remaining_deadline_or_nothing() -> None:
    from trio_cancel.deadlines import async_propagate_deadline, propagate_deadline

    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] != "http":
            raise RuntimeError("no lifespan support")
        headers = dict(scope["headers"])
        value = headers.get(b"connect-timeout-ms")
        seen.append(None if value is None else value.decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    hooks: Any = {"request": [async_propagate_deadline]}
    async with running(app) as base, httpx.AsyncClient(base_url=base, event_hooks=hooks) as client:
        await client.get("/none")
        with trio.move_on_after(0.5):
            await client.get("/half-second")
        with trio.CancelScope(deadline=trio.current_time()) as cs:
            with pytest.raises(trio.TooSlowError):
                await client.get("/no-time-left")  # the hook refuses: never sent
            await trio.lowlevel.checkpoint()
        assert cs.cancelled_caught
        propagate_deadline(httpx.Request("GET", base))  # no deadline here: no header, no error
    assert seen[0] is None
    assert seen[1] is not None
    assert 400 < int(seen[1]) <= 480  # what remained, less the hop margin
    assert len(seen) == 2


# ---------------------------------------------------------------- Starlette, streaming


async def test_starlette_is_disconnected_becomes_true_after_the_client_left() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    seen: list[bool] = []
    polling = trio.Event()
    done = trio.Event()

    async def poll(request: Request) -> PlainTextResponse:
        token: tc.CancellationToken = request.scope["extensions"]["trio_cancel"]["token"]
        with trio.CancelScope(shield=True):  # keep going although the middleware cancels
            await request.body()  # the request's one message: nothing else is queued
            seen.append(await request.is_disconnected())  # the client is still there
            polling.set()
            await token.wait_cancelled()  # the middleware noticed the client leave
            seen.append(await request.is_disconnected())  # the very next poll says so
            seen.append(await request.is_disconnected())  # and it stays so
        done.set()
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/poll", poll)])
    async with running(CancelMiddleware(app)) as base:
        stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
        await stream.send_all(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        await polling.wait()
        await stream.aclose()
        with trio.fail_after(5):
            await done.wait()
    assert seen == [False, True, True]


async def test_a_streaming_handler_is_cancelled_when_the_client_leaves() -> None:
    rec = Recorder()
    async with running(CancelMiddleware(make_app(rec))) as base:
        stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
        await stream.send_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await stream.receive_some()  # the response has started streaming
        left = time.perf_counter()
        await stream.aclose()
        with trio.fail_after(3):
            await rec.ended.wait()
    path, how, reason, at = rec.events[0]
    assert (path, how, reason) == ("/stream", "cancelled", "client disconnected")
    assert at >= left


async def test_websocket_and_lifespan_scopes_pass_through_untouched() -> None:
    calls: list[tuple[str, object, object]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        calls.append((scope["type"], receive, send))
        await trio.lowlevel.checkpoint()

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("not called")  # pragma: no cover

    mw = CancelMiddleware(app, timeout=1)
    for kind in ("websocket", "lifespan"):
        scope: dict[str, Any] = {"type": kind}
        await mw(scope, receive, send)
        assert "extensions" not in scope  # no token, no timeout: passed on as it came
    assert calls == [("websocket", receive, send), ("lifespan", receive, send)]


# ---------------------------------------------------------------- after the response completed


@pytest.mark.parametrize("then", ["client stays", "client leaves", "token cancelled"])
async def test_a_background_task_runs_after_the_response_completed(then: str) -> None:
    """Hypercorn answers receive() with http.disconnect once the response is complete: that is
    not the client leaving, and neither it nor the request's timeout cancels the app then.
    Only the middleware's token does."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from trio_cancel.deadlines import remaining_ms

    ran: list[tuple[str, object]] = []
    started = trio.Event()
    done = trio.Event()

    async def later() -> None:
        started.set()
        try:
            await trio.sleep(0.4)  # past the request's timeout (0.2 s)
            ran.append(("finished", remaining_ms()))  # no request deadline any more
        except trio.Cancelled as exc:
            ran.append(("cancelled", exc.reason))
            raise
        finally:
            done.set()

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(later))

    mw = CancelMiddleware(Starlette(routes=[Route("/", endpoint)]), timeout=0.2)
    async with running(mw) as base:
        stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        with trio.fail_after(5):
            while not data.endswith(b"ok"):
                data += await stream.receive_some()
            await started.wait()
        if then == "client leaves":
            await stream.aclose()
        elif then == "token cancelled":
            mw.token.cancel("operator cancelled it")
        with trio.fail_after(5):
            await done.wait()
        await stream.aclose()
    assert data.startswith(b"HTTP/1.1 200")
    if then == "token cancelled":
        assert ran == [("cancelled", "operator cancelled it")]
    else:
        assert ran == [("finished", None)]


# ---------------------------------------------------------------- backpressure on uploads


@attrs.define
class Flow:
    """Counts the body messages the middleware pulled from the server and the app took."""

    pulled: int = 0
    taken: int = 0
    more: bool = True  # whether more body may follow the last message pulled
    # When the middleware pulled another message: how many it held unread, and whether more
    # body could follow the last one it held.
    held_at_pull: list[tuple[int, bool]] = attrs.Factory(list)
    app_read: int = 0


def counting_server(mw: CancelMiddleware, flow: Flow) -> Any:  # noqa: ANN401 - an ASGI app
    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] != "http":
            raise RuntimeError("no lifespan support")

        async def counted() -> dict[str, Any]:
            flow.held_at_pull.append((flow.pulled - flow.taken, flow.more))
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                flow.pulled += 1
                flow.more = message.get("more_body", False)
            return message

        await mw(scope, counted, send)

    return app


async def test_an_upload_the_app_reads_slowly_is_pulled_one_message_at_a_time() -> None:
    flow = Flow()

    async def slow_reader(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        total = 0
        while True:
            message = await receive()
            flow.taken += 1
            total += len(message.get("body", b""))
            await trio.sleep(0.001)  # slower than the client sends
            if not message.get("more_body"):
                break
        flow.app_read = total
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})

    size = 4 * 1024 * 1024
    mw = CancelMiddleware(slow_reader, timeout=30)
    async with running(counting_server(mw, flow)) as base:
        stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
        async with stream:
            await stream.send_all(
                f"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
            )
            chunk = b"x" * 65536
            for _ in range(size // len(chunk)):
                await stream.send_all(chunk)
            data = b""
            with trio.fail_after(10):
                while not data.endswith(b"\r\n0\r\n\r\n"):  # the chunked answer's end
                    data += await stream.receive_some()
    assert f"\r\n{size}\r\n".encode() in data
    assert flow.app_read == size
    assert flow.pulled > 10  # many messages went through...
    # ...and none was pulled while a message that more body may follow sat unread
    assert [held for held, more in flow.held_at_pull if more] == [0] * flow.pulled
    assert max(held for held, _ in flow.held_at_pull) <= 1


async def _upload(stream: trio.SocketStream, path: bytes) -> None:
    """Send a 10 MB upload's head and as much of its body as the server takes."""
    await stream.send_all(
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    )
    chunk = b"x" * 65536
    for _ in range(10_000_000 // len(chunk)):
        await stream.send_all(chunk)


async def test_an_unread_upload_whose_client_left_ends_at_the_timeout() -> None:
    rec = Recorder()
    flow = Flow()
    async with running(counting_server(CancelMiddleware(make_app(rec), timeout=0.3), flow)) as base:
        stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_upload, stream, b"/sleep/30")  # until the server pushes back
            await rec.started_event("/sleep/30").wait()
            nursery.cancel_scope.cancel()
        await stream.aclose()  # gone, its upload unread
        with trio.fail_after(5):
            await rec.ended.wait()
    assert rec.reasons("/sleep/30") == ["request timeout"]
    assert flow.pulled == 1  # one message held, unread; the rest stayed with the server


async def test_an_unread_upload_whose_client_left_is_noticed_when_the_app_reads() -> None:
    reasons: list[str | None] = []
    read = trio.Event()
    began = trio.Event()
    cancelled = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        began.set()
        try:
            await read.wait()  # not reading until told
            while True:
                await receive()
        except trio.Cancelled as exc:
            reasons.append(exc.reason)
            cancelled.set()
            raise

    flow = Flow()
    async with running(counting_server(CancelMiddleware(app), flow)) as base:
        stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_upload, stream, b"/up")  # until the server pushes back
            await began.wait()
            nursery.cancel_scope.cancel()
        await stream.aclose()
        read.set()
        with trio.fail_after(5):
            await cancelled.wait()
    assert reasons == ["client disconnected"]


# ---------------------------------------------------------------- the handler never outlives it


async def test_the_handler_is_joined_when_the_server_cancels_its_request_task() -> None:
    """Hypercorn cancels a request's task when it stops (config.graceful_timeout); the handler,
    aborted, gets its bounded cleanup done before the request task returns."""
    order: list[str] = []
    began = trio.Event()
    returned = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        began.set()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.2)  # a bounded cleanup: flush, release a lock
                order.append("handler cleanup done")

    async with tc.GracefulShutdown(grace=5) as gs:
        mw = CancelMiddleware(app, shutdown=gs)

        async def server_side(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
            if scope["type"] != "http":
                raise RuntimeError("no lifespan support")
            try:
                await mw(scope, receive, send)
            finally:
                order.append("request task returned")
                returned.set()

        async with running(server_side) as base:
            stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await began.wait()
        # the server has stopped: it cancelled the request task after its graceful_timeout
        with trio.fail_after(5):
            await returned.wait()
        await stream.aclose()
    assert order == ["handler cleanup done", "request task returned"]


# ---------------------------------------------------------------- the deadline stays in the request


async def test_the_request_deadline_does_not_leak_into_the_callers_context() -> None:
    """httpx.ASGITransport runs the app in the caller's own task."""
    from trio_cancel.deadlines import async_propagate_deadline, remaining_ms

    inside: list[int | None] = []
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        inside.append(remaining_ms())
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def other(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] != "http":
            raise RuntimeError("no lifespan support")
        value = dict(scope["headers"]).get(b"connect-timeout-ms")
        seen.append(None if value is None else value.decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = httpx.ASGITransport(app=CancelMiddleware(app, timeout=0.3))
    hooks: Any = {"request": [async_propagate_deadline]}
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://in-process") as local,
        running(other) as base,
        httpx.AsyncClient(base_url=base, event_hooks=hooks) as client,
    ):
        assert (await local.get("/")).status_code == 200
        assert remaining_ms() is None
        await client.get("/")  # outside any request: no deadline to send
        await trio.sleep(0.35)  # the request's deadline has passed
        assert (await client.get("/")).status_code == 200
    assert inside[0] is not None
    assert 0 < inside[0] <= 300
    assert seen == [None, None]


# ---------------------------------------------------------------- the hooks speak the grammar


async def test_the_hook_sends_a_long_deadline_that_the_middleware_accepts() -> None:
    from trio_cancel.deadlines import async_propagate_deadline

    rec = Recorder()
    hooks: Any = {"request": [async_propagate_deadline]}
    async with (
        running(CancelMiddleware(make_app(rec))) as base,
        httpx.AsyncClient(base_url=base, event_hooks=hooks) as client,
    ):
        with trio.move_on_after(1e9):
            response = await client.get("/sleep/0")
    assert response.status_code == 200
    assert len(response.request.headers["connect-timeout-ms"]) == 10


@pytest.mark.parametrize("budget", [0.015, 0.0])
async def test_the_async_hook_lets_the_callers_scope_absorb_no_time_left(budget: float) -> None:
    from trio_cancel.deadlines import async_propagate_deadline

    rec = Recorder()
    hooks: Any = {"request": [async_propagate_deadline]}
    async with (
        running(CancelMiddleware(make_app(rec))) as base,
        httpx.AsyncClient(base_url=base, event_hooks=hooks) as client,
    ):
        with trio.move_on_after(budget) as scope:
            await client.get("/sleep/0")  # less than the hop margin left: never sent
        assert scope.cancelled_caught
        assert (await client.get("/sleep/0")).status_code == 200
    assert list(rec.started) == ["/sleep/0"]
    assert len(rec.events) == 1


# ---------------------------------------------------------------- serve_until_shutdown is bounded

SERVER = """
import json, sys
import trio
from trio_cancel.asgi import serve_until_shutdown

BIG = b"x" * (32 * 1024 * 1024)

async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan support")
    body = BIG if scope["path"] == "/big" else b"small"
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})

async def main(grace):
    async with trio.open_nursery() as nursery:
        async def serve(task_status):
            report = await serve_until_shutdown(
                app, bind="127.0.0.1:0", grace=grace, task_status=task_status
            )
            print(json.dumps(report.to_dict()), flush=True)
        print(await nursery.start(serve), flush=True)

trio.run(main, float(sys.argv[1]))
"""


def _start_big_server(
    tmp_path: Path, grace: float, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.stdout is not None
    return proc, _port(proc.stdout.readline().strip())


def _status_of_small_request(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        return sock.recv(12)


def _wait_for_the_trigger(port: int) -> None:
    """The trigger's own sign: the listener is closed, a new connection is refused."""
    while True:
        try:
            _status_of_small_request(port)
        except ConnectionRefusedError:
            return


@pytest.mark.parametrize("force", ["grace period", "second signal"])
def test_serve_until_shutdown_returns_although_a_client_stopped_reading(
    tmp_path: Path, force: str
) -> None:
    """Hypercorn shields its socket sends: a client that stops reading a large answer held the
    shutdown for ever, past the grace period and a second signal. Phase 2 closes it."""
    proc, port = _start_big_server(tmp_path, grace=0.5 if force == "grace period" else 600)
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.1 200"  # the answer has begun; now stop reading
            proc.send_signal(signal.SIGTERM)
            _wait_for_the_trigger(port)
            if force == "second signal":
                proc.send_signal(signal.SIGTERM)  # phase 2 now, not in 600 s
            out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    rows = [row for row in report["tasks"] if row["name"] == "GET /big"]
    assert len(rows) == 1
    assert rows[0]["forced"]
    assert re.search(r"closed \d+ connection\(s\) still open", err), err


def test_serve_until_shutdown_public_fallback(tmp_path: Path) -> None:
    """Without Hypercorn's private pieces the public hypercorn.trio.serve serves (unbounded
    for a client that stops reading, and it says so)."""
    proc, port = _start_big_server(
        tmp_path, grace=0.5, env={"TRIO_CANCEL_HYPERCORN_INTERNALS": "off"}
    )
    try:
        assert _status_of_small_request(port) == b"HTTP/1.1 200"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "serving with hypercorn.trio.serve" in err
    assert json.loads(out.strip().splitlines()[-1])["reason"] == "signal SIGTERM"


def test_hypercorn_internals_are_used_on_the_checked_versions() -> None:
    from trio_cancel import _hypercorn_internals as internals

    version = internals.HYPERCORN_VERSION
    assert version is not None
    checked = internals.CHECKED_HYPERCORN[0] <= version <= internals.CHECKED_HYPERCORN[1]
    assert internals.owning_usable() == checked


async def test_the_wait_for_an_aborted_handler_is_bounded_by_the_grace_period(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A unit test beside the real-server one: a cleanup longer than the grace period is left
    to the shutdown (which still lands it), and the request task returns at the bound."""
    ended: list[float] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(5)  # longer than the grace period
                ended.append(trio.current_time())

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()  # pragma: no cover

    async with tc.GracefulShutdown(grace=1) as gs:
        mw = CancelMiddleware(app, shutdown=gs)
        start = trio.current_time()
        with trio.move_on_after(0.5):  # the server cancels its request task
            await mw({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
        returned = trio.current_time() - start
        report = await gs.wait()
    assert returned == pytest.approx(1.5)  # 0.5 s, then at most the 1 s grace period
    assert ended == [pytest.approx(start + 5.5)]  # the shutdown still landed it
    assert "still running its cleanup after the grace period" in caplog.text
    (row,) = report.tasks
    assert row.outcome == tc.Aborted("the server cancelled the request")


async def test_the_tokens_reason_is_exact_when_an_inner_deadline_expires_with_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Why the streaming test above waits under no scope of its own: a handler sleeping until
    the very moment of its request's deadline may get the sleep's own ``Cancelled`` (reason
    ``None``: Trio reports the innermost cancelled scope), in the same scheduling round. The
    token's reason, and the answer, are exact whichever way the round goes."""
    seen: list[tuple[str | None, str | None]] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        token = scope["extensions"]["trio_cancel"]["token"]
        try:
            await trio.sleep(0.2)  # ends exactly at the request's deadline
            await trio.sleep_forever()
        except trio.Cancelled as exc:
            seen.append((exc.reason, token.reason))
            raise

    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await trio.sleep_forever()  # then the client stays
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    mw = CancelMiddleware(app, timeout=0.2)
    for _ in range(20):
        messages.append({"type": "http.request", "body": b"", "more_body": False})
        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        await mw(scope, receive, send)
    assert [token_reason for _, token_reason in seen] == ["request timeout"] * 20
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [504] * 20


# ------------------------------------------------ a response and the deadline, at once


def _one_request() -> tuple[Any, list[dict[str, Any]]]:
    """A request with an empty body, already arrived, whose client stays."""
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    return receive, messages


async def test_a_response_head_at_the_deadline_is_not_lost_in_the_servers_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """deadline_chain's race: B's 504 reaches A as A's own deadline passes, and A's
    ``send(http.response.start)`` waits in the server (Hypercorn's per-connection send lock)
    when the deadline cancels the request. The head went to the protocol but not the wire:
    the caller got an empty 500. The caller gets the response A was passing on."""
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        await send({"type": "http.response.start", "status": 504, "headers": []})
        await send({"type": "http.response.body", "body": b'{"code": "deadline_exceeded"}'})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            await trio.sleep(0.3)  # the connection's send lock is busy past the deadline
        else:
            await trio.lowlevel.checkpoint()
        sent.append(message)

    receive, _ = _one_request()
    mw = CancelMiddleware(app, timeout=0.2)
    await mw({"type": "http", "method": "GET", "path": "/work", "headers": []}, receive, send)
    assert [(m["type"], m.get("status")) for m in sent] == [
        ("http.response.start", 504),
        ("http.response.body", None),
    ]


async def test_a_complete_response_sent_as_the_deadline_passes_is_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The app finished its work (shielded) after its deadline and sends its whole response
    without a checkpoint in between: the deadline fired meanwhile, but the response is not cut
    (the head is out; a cut would close the connection mid-response)."""
    sent: list[dict[str, Any]] = []
    token_reasons: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        with trio.CancelScope(shield=True):
            await trio.sleep(0.3)  # past the 0.2 s deadline
        token_reasons.append(scope["extensions"]["trio_cancel"]["token"].reason)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()  # as Hypercorn's send: a checkpoint before the write
        sent.append(message)

    receive, _ = _one_request()
    mw = CancelMiddleware(app, timeout=0.2)
    await mw({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
    assert token_reasons == ["request timeout"]
    assert [(m["type"], m.get("status"), m.get("body")) for m in sent] == [
        ("http.response.start", 200, None),
        ("http.response.body", None, b"done"),
    ]
