"""The observability page's code blocks, run against OpenTelemetry's SDK exporting to memory
(tests/test_docs.py): what a cancelled span says, and the status policy."""

from __future__ import annotations

import trio
import trio.testing
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import trio_cancel as tc

exported = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exported))
trace.set_tracer_provider(provider)


async def fetch_prices() -> None:
    await trio.sleep_forever()


async def fetch(token: tc.CancellationToken) -> None:
    with token.cancel_scope():
        # [docs-span]
        import trio_cancel.otel as tc_otel

        tc_otel.instrument()  # once, at start-up: the library's own spans

        with tc_otel.span("fetch prices"):  # instead of tracer.start_as_current_span(...)
            await fetch_prices()
        # [/docs-span]


def last_span() -> tuple[dict[str, object], StatusCode]:
    span = exported.get_finished_spans()[-1]
    return dict(span.attributes or {}), span.status.status_code


async def deadline_span() -> StatusCode:
    import trio_cancel.otel as tc_otel

    with trio.move_on_after(0.001), tc_otel.span("hedge"):
        await trio.sleep_forever()
    return last_span()[1]


async def main() -> None:
    import trio_cancel.otel as tc_otel

    token = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch, token)
        await trio.testing.wait_all_tasks_blocked()
        token.cancel("user asked")
    attributes, status = last_span()
    assert attributes["trio_cancel.cancelled"] is True
    assert attributes["trio_cancel.reason"] == "user asked"
    assert attributes["trio_cancel.source"] == "token"
    assert status == StatusCode.UNSET  # an intentional cancellation is not an error
    print(f"span: {attributes}")

    # The status policy: a deadline is an error by default.
    assert await deadline_span() == StatusCode.ERROR
    # [docs-configure]
    tc_otel.configure(error_sources=tc_otel.DEFAULT_ERROR_SOURCES | {"client_disconnect"})
    tc_otel.configure()  # back to the defaults
    tc_otel.configure(error_sources=())  # a cancellation is never an error
    # [/docs-configure]
    assert await deadline_span() == StatusCode.UNSET
    tc_otel.configure()
    assert await deadline_span() == StatusCode.ERROR
    assert tc_otel.is_instrumented()
    tc_otel.uninstrument()
    print("configure: a deadline is an error by default, and never with error_sources=()")


trio.run(main)
