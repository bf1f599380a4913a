"""Tests of trio_cancel.asgi against a real Hypercorn server (Trio worker) on 127.0.0.1, with a
real httpx client and raw sockets for what a well-behaved client does not do."""

from __future__ import annotations

import contextlib
import json
import math
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
                for _ in range(100):
                    await send({"type": "http.response.body", "body": b"x", "more_body": True})
                    await trio.sleep(0.05)
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


async def test_client_disconnect_cancels_the_handler_within_100_ms() -> None:
    rec = Recorder()
    async with running(CancelMiddleware(make_app(rec))) as base:
        left = await _request_and_leave(base, "/sleep/5", rec)
        with trio.fail_after(2):
            await rec.ended.wait()
    path, how, reason, at = rec.events[0]
    assert (path, how, reason) == ("/sleep/5", "cancelled", "client disconnected")
    assert at - left < 0.1


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
    mw = CancelMiddleware(make_app(rec), timeout=10, max_timeout=1.0)
    async with running(mw) as base, httpx.AsyncClient(base_url=base) as client:
        start = time.perf_counter()
        cut = await client.get("/sleep/5", headers={"Connect-Timeout-Ms": "300"})
        elapsed = time.perf_counter() - start
        clamped = await client.get("/sleep/5", headers={"grpc-timeout": "1H"})  # clamped to 1 s
        zero = await client.get("/sleep/0.01", headers={"Connect-Timeout-Ms": "0"})
    assert cut.status_code == 504
    assert 0.28 < elapsed < 1.0
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
    for timeout in (0, -1, math.nan):
        with pytest.raises(ValueError, match="timeout"):
            CancelMiddleware(app, timeout=timeout)
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

    polls: list[tuple[float, bool]] = []
    left = trio.Event()
    left_at: list[float] = []

    async def poll(request: Request) -> PlainTextResponse:
        with trio.CancelScope(shield=True):  # keep polling although the middleware cancels
            while True:
                disconnected = await request.is_disconnected()
                polls.append((time.perf_counter(), disconnected))
                if disconnected or len(polls) > 200:
                    break
                await trio.sleep(0.02)
        left.set()
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/poll", poll)])
    async with running(CancelMiddleware(app)) as base:
        stream = await trio.open_tcp_stream("127.0.0.1", _port(base))
        await stream.send_all(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.1)
        left_at.append(time.perf_counter())
        await stream.aclose()
        with trio.fail_after(5):
            await left.wait()
    after = [(t, d) for t, d in polls if t > left_at[0] + 0.001]
    assert after, polls
    assert after[-1][1] is True  # it became true...
    assert sum(1 for _, d in after if not d) <= 1  # ...on the first poll after the disconnect


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
    assert at - left < 0.1


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
