"""Cancellation in traces: the server spans of a small service's cut requests, as a table.

A Hypercorn server on 127.0.0.1 runs ``OpenTelemetryMiddleware(CancelMiddleware(app))`` (the
order ``trio_cancel.otel`` supports) under a ``GracefulShutdown``, with
``trio_cancel.otel.instrument()`` and the OpenTelemetry SDK exporting into memory. Five
requests: one that completes, one cut by the server's request timeout, one cut by the
caller's own deadline (a ``connect-timeout-ms`` header), one whose client hangs up, and one
still running when the shutdown's grace period ends. Without ``trio_cancel.otel`` the last
four would be exported as if nothing had happened to them (a span left by ``trio.Cancelled``
ends with status unset and no event); here each says why it stopped, and the status follows
the policy: deadlines and a forced shutdown are errors, a caller who left is not.

Needs ``pip install trio_cancel[otel] opentelemetry-sdk opentelemetry-instrumentation-asgi
hypercorn[trio] httpx``.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import trio_cancel as tc
import trio_cancel.otel as tc_otel
from trio_cancel.asgi import CancelMiddleware

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tc_otel.instrument()

started: dict[str, trio.Event] = {}
ended: dict[str, trio.Event] = {}


def event(table: dict[str, trio.Event], path: str) -> trio.Event:
    return table.setdefault(path, trio.Event())


async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401 - ASGI
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    event(started, path).set()
    try:
        if path == "/ok":
            await trio.sleep(0.01)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        with tc_otel.span(f"work {path}"):  # the app's own span, marked as well
            await trio.sleep_forever()
    finally:
        event(ended, path).set()


async def main() -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    stop = trio.Event()
    async with tc.GracefulShutdown(grace=0.3) as shutdown:
        service: Any = OpenTelemetryMiddleware(
            CancelMiddleware(app, timeout=0.5, shutdown=shutdown)
        )
        async with trio.open_nursery() as server:
            binds = await server.start(
                lambda task_status: serve(
                    service, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            base = binds[0]
            async with httpx.AsyncClient(base_url=base) as client:
                await client.get("/ok")
                await client.get("/slow?token=secret")  # the query string stays out of spans
                await client.get("/hurried", headers={"connect-timeout-ms": "200"})

                port = int(base.rsplit(":", 1)[1])
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"GET /left HTTP/1.1\r\nHost: x\r\n\r\n")
                await event(started, "/left").wait()
                await stream.aclose()  # the client hangs up
                await event(ended, "/left").wait()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.get, "/stuck")
                    await event(started, "/stuck").wait()
                    shutdown.trigger("deploy")
                await shutdown.wait()
            stop.set()

    rows = []
    for span in exporter.get_finished_spans():
        a = dict(span.attributes or {})
        if span.kind is not trace.SpanKind.SERVER:
            continue
        rows.append(
            (
                str(a.get("url.path", a.get("http.target", "?"))),
                str(a.get("http.response.status_code", a.get("http.status_code", "-"))),
                str(a.get("trio_cancel.source", "-")),
                span.status.status_code.name,
                str(a.get("trio_cancel.reason", "-")),
            )
        )
    order = ["/ok", "/slow", "/hurried", "/left", "/stuck"]
    rows.sort(key=lambda row: order.index(row[0]))
    header = ("request", "HTTP", "trio_cancel.source", "status", "trio_cancel.reason")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("Server spans exported (one per request):")
    for row in [header, *rows]:
        print(("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))).rstrip())
    work = sorted(
        (s.name, str((s.attributes or {}).get("trio_cancel.source")))
        for s in exporter.get_finished_spans()
        if s.name.startswith("work ")
    )
    print("The app's own spans (tc_otel.span):")
    for name, source in work:
        print(f"  {name}: trio_cancel.source = {source}")


if __name__ == "__main__":
    trio.run(main)
