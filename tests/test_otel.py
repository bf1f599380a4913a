"""trio_cancel.otel with the real OpenTelemetry SDK (in-memory span exporter, metric reader)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

import pytest
import trio

import trio_cancel as tc
from trio_cancel import _hooks

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry import metrics, trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402

import trio_cancel.otel as tc_otel  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.trace import ReadableSpan

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
_READER = InMemoryMetricReader()
trace.set_tracer_provider(_PROVIDER)
metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))
TRACER = _PROVIDER.get_tracer("tests")


@pytest.fixture(autouse=True)
def exporter() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    tc_otel.uninstrument()
    tc_otel.configure()


def spans(name: str | None = None) -> list[ReadableSpan]:
    found = list(_EXPORTER.get_finished_spans())
    return [s for s in found if name is None or s.name == name]


def one(name: str) -> ReadableSpan:
    (found,) = spans(name)
    return found


def attrs_of(s: ReadableSpan) -> dict[str, Any]:
    return dict(s.attributes or {})


def assert_marked(s: ReadableSpan, source: str, reason: str | None, *, error: bool) -> None:
    a = attrs_of(s)
    assert a["trio_cancel.cancelled"] is True
    assert a["trio_cancel.source"] == source
    assert a.get("trio_cancel.reason") == reason
    if error:
        assert s.status.status_code is StatusCode.ERROR
        assert a["error.type"] == source
    else:
        assert s.status.status_code is StatusCode.UNSET
        assert "error.type" not in a


async def test_token_source_leaves_status_unset() -> None:
    token = tc.CancellationToken()

    async def work() -> None:
        with token.cancel_scope(), tc_otel.span("work", TRACER):
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(work)
        await trio.testing.wait_all_tasks_blocked()
        token.cancel("user asked")
    assert_marked(one("work"), "token", "user asked", error=False)


async def test_a_token_with_a_timer_cancelled_by_hand_is_not_a_timeout() -> None:
    """The timer's source applies only to the timer's own cancel: an app that cancels its
    request token itself (a timer still armed) is an intentional cancellation."""
    token = tc.CancellationToken()

    async def work() -> None:
        with token.cancel_scope(), tc_otel.span("work", TRACER):
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(work)
        await trio.testing.wait_all_tasks_blocked()
        token.cancel_after(100, "request timeout")
        _hooks.timer_source(token, "request timeout")  # as the middleware announces its timer
        token.cancel("app gave up")
    assert_marked(one("work"), "token", "app gave up", error=False)


async def test_abort_source() -> None:
    async def work() -> None:
        with tc_otel.span("work", TRACER):
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, work)
        await trio.testing.wait_all_tasks_blocked()
        handle.abort("losing hedge")
    assert isinstance(handle.outcome, tc.Aborted)
    assert_marked(one("work"), "abort", "losing hedge", error=False)


async def test_joinset_abort_all_source() -> None:
    async def work() -> None:
        with tc_otel.span("work", TRACER):
            await trio.sleep_forever()

    async with tc.JoinSet() as js:
        for _ in range(3):
            js.spawn(work)
        await trio.testing.wait_all_tasks_blocked()
        js.abort_all("enough")
    assert len(spans("work")) == 3
    for s in spans("work"):
        assert_marked(s, "abort", "enough", error=False)


async def test_deadline_sets_error(autojump_clock: trio.testing.MockClock) -> None:
    with trio.move_on_after(1):
        with tc_otel.span("work", TRACER):
            await trio.sleep_forever()
    assert_marked(one("work"), "trio.deadline", None, error=True)


async def test_nursery_sibling_failure() -> None:
    async def work() -> None:
        with tc_otel.span("work", TRACER):
            await trio.sleep_forever()

    async def fail() -> None:
        await trio.testing.wait_all_tasks_blocked()
        raise ValueError("boom")

    with pytest.RaisesGroup(ValueError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(work)
            nursery.start_soon(fail)
    assert_marked(
        one("work"), "trio.nursery", "child task raised exception ValueError('boom')", error=False
    )


async def test_plain_scope_cancel_is_trio_explicit() -> None:
    with trio.CancelScope() as cs, tc_otel.span("work", TRACER):
        cs.cancel("mine")
        await trio.sleep_forever()
    assert_marked(one("work"), "trio.explicit", "mine", error=False)


async def test_completed_span_untouched() -> None:
    with tc_otel.span("work", TRACER, attributes={"k": 1}) as s:
        await trio.lowlevel.checkpoint()
        s.set_attribute("done", True)
    got = one("work")
    assert attrs_of(got) == {"k": 1, "done": True}
    assert got.status.status_code is StatusCode.UNSET


async def test_other_exception_is_opentelemetrys() -> None:
    with pytest.raises(KeyError), tc_otel.span("work", TRACER):
        raise KeyError("x")
    got = one("work")
    assert "trio_cancel.cancelled" not in attrs_of(got)
    assert got.status.status_code is StatusCode.ERROR


async def test_nesting_and_nursery_children_keep_parents() -> None:
    token = tc.CancellationToken()

    async def child() -> None:
        with tc_otel.span("child", TRACER):
            await trio.sleep_forever()

    with token.cancel_scope(), tc_otel.span("parent", TRACER):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            await trio.testing.wait_all_tasks_blocked()
            token.cancel("stop")
    parent, child_span = one("parent"), one("child")
    assert child_span.parent is not None
    assert parent.context is not None
    assert child_span.parent.span_id == parent.context.span_id
    assert_marked(child_span, "token", "stop", error=False)
    assert_marked(parent, "token", "stop", error=False)


async def test_status_policy_configurable() -> None:
    tc_otel.configure(error_sources={"token"})
    token = tc.CancellationToken()
    with token.cancel_scope(), tc_otel.span("a", TRACER):
        token.cancel("r")
        await trio.lowlevel.checkpoint()
    assert_marked(one("a"), "token", "r", error=True)
    tc_otel.configure()
    with trio.move_on_after(0):
        with tc_otel.span("b", TRACER, error_sources=()):
            await trio.lowlevel.checkpoint()
    assert_marked(one("b"), "trio.deadline", None, error=False)
    with pytest.raises(TypeError):
        tc_otel.configure(error_sources="token")


async def test_shutdown_sources_and_span(autojump_clock: trio.testing.MockClock) -> None:
    tc_otel.instrument()

    async def polite(token: tc.CancellationToken) -> None:
        with token.cancel_scope(), tc_otel.span("polite", TRACER):
            await trio.sleep_forever()

    async def stubborn() -> None:
        with tc_otel.span("stubborn", TRACER):
            await trio.sleep_forever()

    async with tc.GracefulShutdown(5) as sd:
        sd.spawn(polite, name="polite")
        sd.spawn(stubborn, name="stubborn")
        await trio.testing.wait_all_tasks_blocked()
        sd.trigger("deploy")
    assert_marked(one("polite"), "shutdown", "deploy", error=False)
    assert_marked(
        one("stubborn"), "shutdown_forced", "deploy: forced after the grace period", error=True
    )
    task_span = one("task stubborn")
    assert_marked(task_span, "shutdown_forced", "deploy: forced after the grace period", error=True)
    assert one("stubborn").parent.span_id == task_span.context.span_id  # type: ignore[union-attr]
    sd_span = one("GracefulShutdown")
    assert [e.name for e in sd_span.events] == ["trigger", "phase 2", "forced"]
    assert sd_span.events[2].attributes == {"trio_cancel.task": "stubborn"}
    assert sd_span.status.status_code is StatusCode.ERROR


async def test_task_spans_with_instrument() -> None:
    tc_otel.instrument()

    async def quick() -> int:
        await trio.lowlevel.checkpoint()
        return 1

    async def bad() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("x")

    async with trio.open_nursery() as nursery:
        tc.spawn(nursery, quick, name="quick")
        failed = tc.spawn(nursery, bad, name="bad")
        never = tc.spawn(nursery, quick, name="never")
        never.abort("before start")
    assert isinstance(failed.outcome, tc.Failed)
    assert attrs_of(one("task quick")) == {"trio_cancel.task": "quick"}
    assert one("task bad").status.status_code is StatusCode.ERROR
    assert_marked(one("task never"), "abort", "before start", error=False)


async def test_uninstrument_leaves_no_trace() -> None:
    tc_otel.instrument()
    assert tc_otel.is_instrumented()
    tc_otel.uninstrument()
    assert not tc_otel.is_instrumented()
    assert _hooks.task_start is None
    assert _hooks.task_end is None
    assert _hooks.shutdown_event is None
    assert _hooks.request_cut is None

    async def quick() -> None:
        await trio.lowlevel.checkpoint()

    async with tc.GracefulShutdown(1) as sd:
        sd.spawn(quick)
    assert spans() == []
    assert not tc_otel._task_spans
    assert not tc_otel._shutdown_spans


async def test_uninstrument_lets_open_spans_end_with_their_work() -> None:
    """Spans open at uninstrument() end when their work ends, marked as usual (a task's span
    and a shutdown's, with its events); nothing is started after it."""
    tc_otel.instrument()
    gate = trio.Event()
    async with tc.GracefulShutdown(100) as sd:
        try:
            handle = sd.spawn(trio.sleep_forever, name="open")
            sd.spawn(gate.wait, name="slow")
            await trio.testing.wait_all_tasks_blocked()
            tc_otel.uninstrument()
            assert spans() == []  # nothing ended early
            late = sd.spawn(trio.sleep_forever, name="late")
            await trio.testing.wait_all_tasks_blocked()
            handle.abort("bye")
            late.abort("bye")
            await handle.join()
            assert_marked(one("task open"), "abort", "bye", error=False)
            sd.trigger("deploy")
        finally:
            gate.set()
            if sys.exc_info()[0] is not None:
                sd.force()  # a failed check must not wait for the grace period
    assert attrs_of(one("task slow")) == {"trio_cancel.task": "slow"}
    assert spans("task late") == []
    sd_span = one("GracefulShutdown")
    assert [e.name for e in sd_span.events] == ["trigger"]
    assert sd_span.end_time is not None
    assert not tc_otel._task_spans
    assert not tc_otel._shutdown_spans
    assert _hooks.task_start is None
    assert _hooks.task_end is None
    assert _hooks.shutdown_event is None


def _counts() -> dict[str, int]:
    data = _READER.get_metrics_data()
    out: dict[str, int] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "trio_cancel.cancellations":
                    for p in m.data.data_points:
                        assert isinstance(p, NumberDataPoint)
                        assert p.attributes is not None
                        out[str(p.attributes["trio_cancel.source"])] = int(p.value)
    return out


async def test_counter_by_source(autojump_clock: trio.testing.MockClock) -> None:
    before = _counts()
    for _ in range(2):
        with trio.move_on_after(1), tc_otel.span("w", TRACER):
            await trio.sleep_forever()
    after = _counts()
    assert after["trio.deadline"] - before.get("trio.deadline", 0) == 2


def test_import_trio_cancel_imports_no_opentelemetry() -> None:
    code = (
        "import sys, trio_cancel, trio_cancel.asgi\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
        "assert not trio_cancel._hooks.active\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


_LATE_PROVIDERS = """
import trio, trio.testing, trio_cancel as tc, trio_cancel.otel as tc_otel
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

async def abort_one():
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        handle.abort("stop")
        await handle.join()

tc_otel.instrument()
trio.run(abort_one)  # no provider set: nothing is kept, nothing is open
assert not tc_otel._recording() and not tc_otel._task_spans
trace.set_tracer_provider(trace.NoOpTracerProvider())  # set, but records nothing
trio.run(abort_one)
assert not tc_otel._recording() and not tc_otel._task_spans
exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
trace._TRACER_PROVIDER = None  # the API refuses a second set: start over, as a process would
trace._TRACER_PROVIDER_SET_ONCE._done = False
trace.set_tracer_provider(tracer_provider)
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
trio.run(abort_one)  # set after instrument(): seen at the next task
spans = exporter.get_finished_spans()
assert [s.attributes["trio_cancel.source"] for s in spans] == ["abort"], spans
points = [
    p for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
    for m in sm.metrics if m.name == "trio_cancel.cancellations" for p in m.data.data_points
]
assert [(p.attributes["trio_cancel.source"], p.value) for p in points] == [("abort", 1)]
print("ok")
"""


def test_providers_set_after_instrument_are_seen() -> None:
    """Without an SDK a task costs no span and no metric; a provider set later (after
    instrument(), after a no-op one) is seen at the next task."""
    done = subprocess.run(
        [sys.executable, "-c", _LATE_PROVIDERS], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# ---------------------------------------------------------------- end to end: Hypercorn + ASGI


async def test_server_spans_say_why_each_request_was_cut() -> None:
    """A real Hypercorn server, OpenTelemetryMiddleware(CancelMiddleware(app)): a request cut
    by its timeout, one whose client left, one forced by the shutdown (the middleware lets
    requests in flight finish in phase 1); the exported server spans tell them apart."""
    import httpx
    from hypercorn.config import Config
    from hypercorn.trio import serve
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    from trio_cancel.asgi import CancelMiddleware

    tc_otel.instrument()
    started: dict[str, trio.Event] = {}
    ended: dict[str, trio.Event] = {}

    def event(table: dict[str, trio.Event], path: str) -> trio.Event:
        return table.setdefault(path, trio.Event())

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        path = scope["path"]
        event(started, path).set()
        try:
            await trio.sleep_forever()
        finally:
            event(ended, path).set()

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    stop = trio.Event()
    statuses: dict[str, int] = {}
    async with tc.GracefulShutdown(grace=0.2) as gs:
        mw = CancelMiddleware(app, timeout=0.3, shutdown=gs)
        wrapped: Any = OpenTelemetryMiddleware(mw)
        async with trio.open_nursery() as server:
            binds = await server.start(
                lambda task_status: serve(
                    wrapped, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            base = binds[0]
            async with httpx.AsyncClient(base_url=base) as client:
                response = await client.get("/timeout?secret=s3cr3t")
                statuses["/timeout"] = response.status_code

                stream = await trio.open_tcp_stream("127.0.0.1", int(base.rsplit(":", 1)[1]))
                await stream.send_all(b"GET /left HTTP/1.1\r\nHost: x\r\n\r\n")
                await event(started, "/left").wait()
                await stream.aclose()
                await event(ended, "/left").wait()

                async def get(path: str) -> None:
                    statuses[path] = (await client.get(path)).status_code

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(get, "/stubborn")
                    await event(started, "/stubborn").wait()
                    gs.trigger("deploy")
                await gs.wait()
            stop.set()
    assert statuses == {"/timeout": 504, "/stubborn": 503}
    server_spans = {
        str((s.attributes or {}).get("url.path", (s.attributes or {}).get("http.target"))): s
        for s in spans()
        if s.kind is trace.SpanKind.SERVER
    }
    got = {
        path.split("?")[0]: (
            attrs_of(s).get("trio_cancel.source"),
            attrs_of(s).get("trio_cancel.reason"),
        )
        for path, s in server_spans.items()
    }
    assert got == {
        "/timeout": ("request_timeout", "request timeout"),
        "/left": ("client_disconnect", "client disconnected"),
        "/stubborn": ("shutdown_forced", "deploy: forced after the grace period"),
    }
    for s in server_spans.values():
        ours = {k: v for k, v in attrs_of(s).items() if k.startswith("trio_cancel.")}
        assert "s3cr3t" not in repr(ours)  # no request data in the library's attributes
    left = next(s for p, s in server_spans.items() if p.startswith("/left"))
    assert "error.type" not in attrs_of(left)  # the caller cancelled: intentional


async def test_scope_bound_to_an_already_cancelled_token() -> None:
    token = tc.CancellationToken()
    token.cancel("early")
    with token.cancel_scope(), tc_otel.span("late", TRACER):
        await trio.lowlevel.checkpoint()
    assert_marked(one("late"), "token", "early", error=False)


async def test_remote_source_is_recorded_by_the_bus_call_site() -> None:
    # The bus itself needs PostgreSQL (tests/test_cancel_bus.py); its call site announces the
    # source exactly as here.
    token = tc.CancellationToken()
    with token.cancel_scope(), tc_otel.span("rpc", TRACER):
        _hooks.will_cancel(token, "remote")
        token.cancel("cancelled by the caller")
        await trio.lowlevel.checkpoint()
    assert_marked(one("rpc"), "remote", "cancelled by the caller", error=False)


async def test_an_announced_source_for_another_token_is_ignored() -> None:
    a, b = tc.CancellationToken(), tc.CancellationToken()
    a.cancel()
    _hooks.will_cancel(a, "remote")  # a is already cancelled: this cancel() never records
    with b.cancel_scope(), tc_otel.span("b", TRACER):
        b.cancel("plain")
        await trio.lowlevel.checkpoint()
    assert_marked(one("b"), "token", "plain", error=False)


async def test_a_failing_exporter_side_never_breaks_the_task(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tc_otel.instrument()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("telemetry down")

    monkeypatch.setattr(tc_otel._tracer, "start_span", broken)

    async def quick() -> int:
        await trio.lowlevel.checkpoint()
        return 7

    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, quick)
    assert handle.outcome == tc.Completed(7)
    assert "telemetry down" in caplog.text


async def test_aborted_tasks_are_counted_without_a_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tc_otel.instrument()
    monkeypatch.setattr(tc_otel, "_tracer", trace.NoOpTracer())
    before = _counts().get("abort", 0)
    async with tc.JoinSet() as js:
        for _ in range(3):
            js.spawn(trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        js.abort_all("enough")
    assert spans() == []
    assert _counts()["abort"] - before == 3


def _metric(name: str) -> list[Any]:
    data = _READER.get_metrics_data()
    found: list[Any] = []
    if data is None:
        return found
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    found.extend(m.data.data_points)
    return found


async def test_shutdown_metrics(autojump_clock: trio.testing.MockClock) -> None:
    tc_otel.instrument()

    def landing() -> dict[str, tuple[int, float]]:
        return {
            p.attributes["trio_cancel.source"]: (p.count, p.sum)
            for p in _metric("trio_cancel.landing_time")
        }

    before = landing()

    async def polite(token: tc.CancellationToken) -> None:
        with token.cancel_scope():
            await trio.sleep_forever()
        await trio.sleep(1)  # lands 1 s after the trigger

    async with tc.GracefulShutdown(5) as sd:
        sd.spawn(polite)
        sd.spawn(trio.sleep_forever, name="stuck")
        await trio.testing.wait_all_tasks_blocked()
        sd.trigger("deploy")
        await trio.sleep(0.5)
        (in_flight,) = _metric("trio_cancel.shutdown.in_flight")
        assert in_flight.value == 2
    (in_flight,) = _metric("trio_cancel.shutdown.in_flight")
    assert in_flight.value == 0
    after = landing()
    for source, (count, total) in [("shutdown", (1, 1.0)), ("shutdown_forced", (1, 0.0))]:
        count0, total0 = before.get(source, (0, 0.0))
        assert after[source][0] - count0 == count
        assert after[source][1] - total0 == pytest.approx(total)  # forced: exits at once


def test_abandoned_thread_calls_are_observed() -> None:
    tc_otel.instrument()
    (point,) = _metric("trio_cancel.threads.abandoned")
    assert point.value == tc.thread_call_statistics().abandoned
    tc_otel.uninstrument()
    assert _metric("trio_cancel.threads.abandoned") in ([], [point])


async def test_remote_source_through_the_real_cancel_bus() -> None:
    """A job cancelled by another process's bus (PostgreSQL): its span says ``remote``."""
    import os
    import uuid

    dsn = os.environ.get("TRIO_CANCEL_PG_DSN")
    if dsn is None:
        if os.environ.get("TRIO_CANCEL_REQUIRE_PG") == "1":
            pytest.fail("TRIO_CANCEL_REQUIRE_PG=1 but no TRIO_CANCEL_PG_DSN")
        pytest.skip("no PostgreSQL server (run through .ci/with-postgres)")
    import trio_cancel.postgres as tc_postgres

    name = f"tcb_{uuid.uuid4().hex[:12]}"
    try:
        async with (
            tc_postgres.open_cancel_bus(dsn, table=name, channel=name) as worker,
            tc_postgres.open_cancel_bus(dsn, table=name, channel=name) as controller,
        ):
            token = worker.token("job-1")
            with trio.fail_after(30), token.cancel_scope(), tc_otel.span("job", TRACER):
                await controller.cancel("job-1", "the user pressed stop")
                await trio.sleep_forever()
            await worker.landed("job-1", tc.Aborted(token.reason))
    finally:
        with trio.CancelScope(shield=True):
            async with await tc_postgres.connect(dsn) as conn:
                await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
                await conn.execute(f'DROP FUNCTION IF EXISTS "{name}_announce"()')
                await conn.execute(f'DROP FUNCTION IF EXISTS "{name}_cancel"(text, text, interval)')
    assert_marked(one("job"), "remote", "the user pressed stop", error=False)


@pytest.mark.parametrize("seed", range(10))
async def test_seeded_schedules_each_span_names_what_cut_it(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Random mixes of token cancels, aborts, deadlines and completions, fired in random
    order: every span names the cancellation that reached it first, or none."""
    import random

    rng = random.Random(seed)
    token = tc.CancellationToken()
    kinds = [rng.choice(["token", "abort", "both", "deadline", "done"]) for _ in range(12)]
    deadlines = [rng.uniform(0.5, 1.5) for _ in kinds]
    fire_at = rng.uniform(0.1, 2.5)

    async def work(i: int) -> None:
        kind = kinds[i]
        with trio.CancelScope() as cs:
            if kind == "deadline":
                cs.deadline = trio.current_time() + deadlines[i]
            with tc_otel.span(f"w{i}", TRACER):
                await trio.sleep(0.05 if kind == "done" else 10)

    async with trio.open_nursery() as nursery:
        handles = []
        for i, kind in enumerate(kinds):
            bound = token if kind in ("token", "both", "deadline") else None
            handles.append(tc.spawn(nursery, work, i, token=bound))
        await trio.sleep(fire_at)
        events = ["token"] + [i for i, k in enumerate(kinds) if k in ("abort", "both")]
        rng.shuffle(events)
        first: dict[int, str] = {}
        for ev in events:
            if ev == "token":
                token.cancel("stop")
                for i, k in enumerate(kinds):
                    if k in ("token", "both"):
                        first.setdefault(i, "token")
            else:
                assert isinstance(ev, int)
                handles[ev].abort("hedge")
                first.setdefault(ev, "abort")
    for i, kind in enumerate(kinds):
        got = attrs_of(one(f"w{i}")).get("trio_cancel.source")
        if kind == "done":
            want = None
        elif kind == "deadline":
            want = "trio.deadline" if deadlines[i] < fire_at else "token"
        else:
            want = first[i]
        assert got == want, (seed, i, kind)


async def test_the_record_holds_nothing_once_the_scopes_are_gone() -> None:
    import gc

    for _ in range(200):
        token = tc.CancellationToken()
        with token.cancel_scope():
            token.cancel("x")
            await trio.lowlevel.checkpoint()
        handle_scope = trio.CancelScope()
        _hooks.cancel_scope(handle_scope, None, "abort")
    del token, handle_scope
    gc.collect()
    assert len(_hooks._sources) < 5
    assert len(_hooks._by_fields) < 5
    assert _hooks._pending is None


# ------------------------------------------- a source only for the cancel the library did itself


@pytest.mark.parametrize("reason", ["plain", None])
async def test_plain_outer_cancel_inherited_by_a_token_scope_is_trio_explicit(
    reason: str | None,
) -> None:
    """Plain Trio cancels the outer scope; the token scope inside inherits that cancellation's
    reason object; the library then cancels the token. The span was ended by the plain cancel
    (it came first, and the token's cancel kept its reason): never ``token``. Also with no
    reasons at all (same task, same values: only identity tells them apart)."""
    token = tc.CancellationToken()
    with trio.CancelScope() as outer, tc_otel.span("work", TRACER), token.cancel_scope():
        outer.cancel(reason)
        token.cancel(None if reason is None else "lib")
        await trio.lowlevel.checkpoint()
    assert_marked(one("work"), "trio.explicit", reason, error=False)


async def test_abort_after_a_plain_nursery_cancel_is_trio_explicit() -> None:
    """A task whose scope inherited a plain cancel of its nursery, then aborted: the plain
    cancel ended it (its span, its task span and the counter say so)."""
    tc_otel.instrument()

    async def work() -> None:
        with tc_otel.span("work", TRACER):
            await trio.sleep_forever()

    before = _counts()
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, work, name="w")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel("plain")
        handle.abort("lib")
    assert_marked(one("work"), "trio.explicit", "plain", error=False)
    assert_marked(one("task w"), "trio.explicit", "plain", error=False)
    after = _counts()
    assert after.get("abort", 0) == before.get("abort", 0)
    assert after["trio.explicit"] - before.get("trio.explicit", 0) == 2


async def test_abort_all_after_a_plain_nursery_cancel_is_trio_explicit() -> None:
    async def work() -> None:
        with tc_otel.span("work", TRACER):
            await trio.sleep_forever()

    with trio.CancelScope() as outer:
        async with tc.JoinSet() as js:
            js.spawn(work)
            js.spawn(work)
            await trio.testing.wait_all_tasks_blocked()
            outer.cancel("plain")
            js.abort_all("lib")
    assert len(spans("work")) == 2
    for s in spans("work"):
        assert_marked(s, "trio.explicit", "plain", error=False)


async def test_plain_inner_cancel_then_token_names_the_plain_one() -> None:
    """Plain Trio cancels an inner scope first, then the library the token scope around the
    span: the Cancelled that ends the span is the plain one (its reason says so), and the
    source agrees with the reason."""
    token = tc.CancellationToken()
    with token.cancel_scope(), tc_otel.span("work", TRACER), trio.CancelScope() as inner:
        inner.cancel("plain")
        token.cancel("lib")
        await trio.lowlevel.checkpoint()
    assert_marked(one("work"), "trio.explicit", "plain", error=False)


async def test_token_first_then_plain_outer_names_the_token() -> None:
    """The library cancels the inner token scope first, then plain Trio the outer scope: the
    Cancelled that reaches the span is the token's (its reason says so): ``token``."""
    token = tc.CancellationToken()
    with trio.CancelScope() as outer, tc_otel.span("work", TRACER), token.cancel_scope():
        token.cancel("lib")
        outer.cancel("plain")
        await trio.lowlevel.checkpoint()
    assert_marked(one("work"), "token", "lib", error=False)


async def test_a_task_aborted_before_phase_two_keeps_its_abort_source(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Phase 2's abort of a task the user had aborted already (still in its shielded cleanup)
    creates no cancellation: the task's span keeps ``abort`` with the user's reason, not
    ``shutdown_forced`` beside a reason that is not the shutdown's."""
    tc_otel.instrument()

    async def slow_cleanup() -> None:
        with tc_otel.span("w", TRACER):
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(10)

    async with tc.GracefulShutdown(5) as sd:
        handle = sd.spawn(slow_cleanup, name="w")
        await trio.testing.wait_all_tasks_blocked()
        handle.abort("user")
        sd.trigger("deploy")
    assert sd.report is not None
    assert [t.forced for t in sd.report.tasks] == [True]
    assert_marked(one("w"), "abort", "user", error=False)
    assert_marked(one("task w"), "abort", "user", error=False)


# ------------------------------------------------------------------ in-flight tasks, honestly


def _in_flight() -> list[int]:
    return [int(p.value) for p in _metric("trio_cancel.shutdown.in_flight")]


async def test_in_flight_when_instrumented_in_the_middle_of_a_shutdown() -> None:
    """Triggered while not instrumented, then instrument(): the landing tasks never take the
    in-flight count below zero."""
    gates = [trio.Event() for _ in range(3)]  # the tasks take no token: phase 1 leaves them

    async with tc.GracefulShutdown(100) as sd:
        try:
            for gate in gates:
                sd.spawn(gate.wait)
            await trio.testing.wait_all_tasks_blocked()
            sd.trigger("deploy")
            tc_otel.instrument()
            gates[0].set()
            await trio.testing.wait_all_tasks_blocked()
            assert all(v >= 0 for v in _in_flight())
        finally:
            for gate in gates:
                gate.set()
    assert _in_flight() == [0]


async def test_in_flight_when_uninstrumented_in_the_middle_of_a_shutdown() -> None:
    """instrument(), trigger, uninstrument(), the tasks land: the count does not stay above
    zero (nothing is reported once uninstrumented, and 0 once instrumented again)."""
    tc_otel.instrument()
    gate = trio.Event()
    async with tc.GracefulShutdown(100) as sd:
        try:
            sd.spawn(gate.wait)
            sd.spawn(gate.wait)
            await trio.testing.wait_all_tasks_blocked()
            sd.trigger("deploy")
            assert _in_flight() == [2]
            tc_otel.uninstrument()
        finally:
            gate.set()
    assert all(v == 0 for v in _in_flight())
    tc_otel.instrument()
    assert _in_flight() == [0]


async def test_in_flight_counts_tasks_spawned_after_the_trigger() -> None:
    """A task spawned after the trigger is in flight too, and its landing does not take the
    count below zero."""
    tc_otel.instrument()
    gate = trio.Event()
    async with tc.GracefulShutdown(100) as sd:
        try:
            sd.spawn(gate.wait)
            await trio.testing.wait_all_tasks_blocked()
            sd.trigger("deploy")
            sd.spawn(gate.wait)
            sd.spawn(gate.wait)
            await trio.testing.wait_all_tasks_blocked()
            assert _in_flight() == [3]
        finally:
            gate.set()
    assert _in_flight() == [0]


# ------------------------------------------------ each kind of cancellation, spans and counter


def _delta(before: dict[str, int]) -> dict[str, int]:
    after = _counts()
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def test_keyboard_interrupt_source_in_spans_and_counter() -> None:
    """Ctrl+C delivered to the main task waiting for its nursery: Trio cancels the children
    with source ``KeyboardInterrupt``; their spans (and task spans) say so, as does the
    counter."""
    import signal

    tc_otel.instrument()

    @trio.lowlevel.enable_ki_protection
    def press_ctrl_c() -> None:
        signal.raise_signal(signal.SIGINT)  # delivered to the main task, as Trio does

    async def work() -> None:
        with tc_otel.span("work", TRACER):
            await trio.sleep_forever()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            tc.spawn(nursery, work, name="w")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(trio.to_thread.run_sync, lambda: None)  # keeps the run busy
            trio.lowlevel.current_trio_token().run_sync_soon(press_ctrl_c)

    before = _counts()
    with pytest.RaisesGroup(KeyboardInterrupt):  # the nursery's, as Trio raises it
        trio.run(main)
    assert_marked(one("work"), "trio.KeyboardInterrupt", None, error=False)
    assert_marked(one("task w"), "trio.KeyboardInterrupt", None, error=False)
    assert _delta(before) == {"trio.KeyboardInterrupt": 2}


async def test_a_deadline_that_fired_on_a_token_scope_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The deadline of a token's own scope fired; the token is cancelled afterwards (while
    the work unwinds): the span says ``trio.deadline``, and the counter counts that."""
    token = tc.CancellationToken()
    before = _counts()
    with token.cancel_scope() as cs:
        cs.deadline = trio.current_time() + 1
        with tc_otel.span("work", TRACER):
            try:
                await trio.sleep_forever()
            finally:
                token.cancel("too late")
    assert cs.cancelled_caught
    assert_marked(one("work"), "trio.deadline", None, error=True)
    assert _delta(before) == {"trio.deadline": 1}


async def test_a_deadline_around_a_token_bound_task_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task bound to a token, in a nursery inside ``move_on_after``: the deadline fires, the
    token is cancelled while the task unwinds. The task's span and its work's say
    ``trio.deadline``."""
    tc_otel.instrument()
    token = tc.CancellationToken()

    async def work() -> None:
        with tc_otel.span("work", TRACER):
            try:
                await trio.sleep_forever()
            finally:
                token.cancel("too late")

    before = _counts()
    with trio.move_on_after(1):
        async with trio.open_nursery() as nursery:
            handle = tc.spawn(nursery, work, token=token, name="w")
    assert isinstance(handle.outcome, tc.Aborted)
    assert_marked(one("work"), "trio.deadline", None, error=True)
    assert_marked(one("task w"), "trio.deadline", None, error=True)
    assert _delta(before) == {"trio.deadline": 2}


@pytest.mark.parametrize("first", ["abort", "token"])
async def test_a_token_scope_inside_an_aborted_task(first: str) -> None:
    """A token's scope inside a task that is aborted too, in either order: a span inside the
    token's scope and one around it each name the cancellation whose ``Cancelled`` reached
    them (the first one to reach the inner scope), with its own reason."""
    token = tc.CancellationToken()

    async def work() -> None:
        with tc_otel.span("outer", TRACER), token.cancel_scope(), tc_otel.span("inner", TRACER):
            await trio.sleep_forever()

    before = _counts()
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, work)
        await trio.testing.wait_all_tasks_blocked()
        if first == "abort":
            handle.abort("ab")
            token.cancel("tk")
        else:
            token.cancel("tk")
            handle.abort("ab")
    reason = {"abort": "ab", "token": "tk"}[first]
    assert_marked(one("inner"), first, reason, error=False)
    assert_marked(one("outer"), first, reason, error=False)
    assert _delta(before) == {first: 2}


async def test_tasks_aborted_by_phase_two_at_spawn_or_start_are_forced() -> None:
    """Phase 2 also aborts a task spawned after it began and one still waiting in ``start()``:
    their task spans (and the counter) say ``shutdown_forced``, never ``abort``."""
    tc_otel.instrument()

    async def starting(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with tc_otel.span("starting", TRACER):
            await trio.sleep_forever()

    before = _counts()
    async with tc.GracefulShutdown(100) as sd:

        async def start_it() -> None:
            with pytest.raises(tc.OperationCancelledError):
                await sd.start(starting, name="starting")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_it)
            await trio.testing.wait_all_tasks_blocked()
            sd.force()
        sd.spawn(trio.sleep_forever, name="late")
    assert sd.report is not None
    assert [(t.name, t.forced) for t in sd.report.tasks] == [("late", True)]
    reason = "shutdown: forced by force()"
    assert_marked(one("task late"), "shutdown_forced", reason, error=True)
    assert_marked(one("starting"), "shutdown_forced", reason, error=True)
    assert_marked(one("task starting"), "shutdown_forced", reason, error=True)
    assert _delta(before) == {"shutdown_forced": 3}


def _asgi_scope(path: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"x"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def test_a_request_task_span_says_what_cut_the_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handler runs as a task of the shutdown, aborted by the middleware when the request's
    token is cancelled: that task's span names the token's source (timeout, caller deadline,
    client disconnect), not ``abort``."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    from trio_cancel.asgi import CancelMiddleware

    tc_otel.instrument()

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        await trio.sleep_forever()

    async with tc.GracefulShutdown(grace=5) as gs:
        wrapped: Any = OpenTelemetryMiddleware(CancelMiddleware(app, timeout=3, shutdown=gs))

        async def call(
            path: str,
            disconnect_at: float | None = None,
            headers: tuple[tuple[bytes, bytes], ...] = (),
        ) -> None:
            async def receive() -> dict[str, Any]:
                if disconnect_at is not None:
                    await trio.sleep(disconnect_at)
                    return {"type": "http.disconnect"}
                await trio.sleep_forever()
                raise AssertionError  # pragma: no cover

            async def send(message: object) -> None:
                pass

            await wrapped(_asgi_scope(path, headers), receive, send)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "/timeout")
            nursery.start_soon(call, "/deadline", None, ((b"connect-timeout-ms", b"1000"),))
            nursery.start_soon(call, "/left", 1.5)
    assert_marked(one("task GET /timeout"), "request_timeout", "request timeout", error=True)
    assert_marked(one("task GET /deadline"), "caller_deadline", "caller deadline", error=True)
    assert_marked(one("task GET /left"), "client_disconnect", "client disconnected", error=False)


async def test_a_scope_bound_late_to_a_child_of_the_shutdown_token_says_shutdown() -> None:
    async with tc.GracefulShutdown(grace=5) as gs:
        gs.trigger("deploy")
        child = gs.token.child_token()  # born cancelled
        grandchild = child.child_token()
        with child.cancel_scope(), tc_otel.span("child", TRACER):
            await trio.lowlevel.checkpoint()
        with grandchild.cancel_scope(), tc_otel.span("grandchild", TRACER):
            await trio.lowlevel.checkpoint()
    assert_marked(one("child"), "shutdown", "deploy", error=False)
    assert_marked(one("grandchild"), "shutdown", "deploy", error=False)


async def test_a_scope_bound_late_to_a_token_an_ancestor_cancelled_names_its_source() -> None:
    async with tc.GracefulShutdown(grace=5) as gs:
        live = gs.token.child_token()
        gs.trigger("deploy")
        with live.cancel_scope(), tc_otel.span("late", TRACER):
            await trio.lowlevel.checkpoint()
    assert_marked(one("late"), "shutdown", "deploy", error=False)


async def test_a_raising_span_processor_never_replaces_the_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry.sdk.trace import SpanProcessor

    class Raising(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            raise RuntimeError("processor down")

    provider = TracerProvider()
    provider.add_span_processor(Raising())
    tracer = provider.get_tracer("raising")
    token = tc.CancellationToken()
    with token.cancel_scope() as scope, tc_otel.span("work", tracer):
        token.cancel("stop")
        await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught  # the Cancelled reached its scope, not a RuntimeError

    async def work() -> None:
        with tc_otel.span("work", tracer):
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, work)
        await trio.testing.wait_all_tasks_blocked()
        handle.abort("hedge")
    assert handle.outcome == tc.Aborted("hedge")
    with tc_otel.span("fine", tracer):  # a span that completes: the error is logged too
        pass
    assert caplog.text.count("ending a span failed") == 3


async def test_a_span_left_by_a_group_of_a_cancellation_and_an_error() -> None:
    token = tc.CancellationToken()

    async def fails_in_cleanup() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("cleanup")

    async def work() -> None:
        with tc_otel.span("work", TRACER):
            async with trio.open_nursery() as inner:
                inner.start_soon(fails_in_cleanup)
                await trio.sleep_forever()

    with pytest.RaisesGroup(ValueError, flatten_subgroups=True), token.cancel_scope():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(work)
            await trio.testing.wait_all_tasks_blocked()
            token.cancel("stop")
    s = one("work")
    a = attrs_of(s)
    assert a["trio_cancel.cancelled"] is True
    assert a["trio_cancel.source"] == "token"
    assert a["trio_cancel.reason"] == "stop"
    assert s.status.status_code is StatusCode.ERROR
    (event,) = s.events
    assert event.name == "exception"
    recorded = event.attributes or {}
    assert recorded["exception.type"] == "ExceptionGroup"  # the group's errors, not Cancelled
    assert "ValueError: cleanup" in str(recorded["exception.stacktrace"])
    assert "error.type" not in a  # the error's status, not the cancellation's policy


async def test_mark_cancelled_marks_a_mixed_group() -> None:
    group = BaseExceptionGroup("g", [trio.Cancelled._create(), ValueError("x")])
    with TRACER.start_as_current_span("own") as sp:
        assert tc_otel.mark_cancelled(sp, group) is True
    s = one("own")
    assert attrs_of(s)["trio_cancel.cancelled"] is True
    assert s.status.status_code is StatusCode.ERROR
    assert [e.name for e in s.events] == ["exception"]


async def test_the_shutdown_span_follows_the_status_policy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tc_otel.instrument()
    tc_otel.configure(error_sources=[])
    async with tc.GracefulShutdown(5) as sd:
        sd.spawn(trio.sleep_forever, name="stuck")
        await trio.testing.wait_all_tasks_blocked()
        sd.trigger("deploy")
    sd_span = one("GracefulShutdown")
    assert attrs_of(sd_span)["trio_cancel.forced"] == 1
    assert sd_span.status.status_code is StatusCode.UNSET
    assert "error.type" not in attrs_of(sd_span)


async def test_a_str_policy_is_a_type_error_at_the_call() -> None:
    with (
        pytest.raises(TypeError, match="not a str"),
        tc_otel.span("s", TRACER, error_sources="trio.deadline"),
    ):
        pass  # pragma: no cover
    assert spans() == []
    with TRACER.start_as_current_span("own") as sp:
        with pytest.raises(TypeError, match="not a str"):
            tc_otel.mark_cancelled(sp, trio.Cancelled._create(), error_sources="token")
        with pytest.raises(TypeError, match="strings"):
            tc_otel.mark_cancelled(sp, ValueError(), error_sources=[1])  # type: ignore[list-item]


async def test_nothing_is_measured_after_uninstrument(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tc_otel.instrument()

    def landing() -> int:
        return sum(p.count for p in _metric("trio_cancel.landing_time"))

    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, trio.sleep_forever, name="open")
        await trio.testing.wait_all_tasks_blocked()
        tc_otel.uninstrument()
        landed, counted = landing(), _counts()
        handle.abort("bye")
    assert_marked(one("task open"), "abort", "bye", error=False)  # the span still ends marked
    assert landing() == landed
    assert _counts() == counted


async def test_task_started_after_phase_two_is_forced() -> None:
    """``start()`` called once phase 2 has begun aborts the new task at once: its task span
    (and the counter) say ``shutdown_forced``, as for ``spawn()``, never ``abort``."""
    tc_otel.instrument()

    async def starting(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep_forever()  # pragma: no cover - aborted before it runs

    before = _counts()
    async with tc.GracefulShutdown(100) as sd:
        sd.force()
        with pytest.raises(tc.OperationCancelledError):
            await sd.start(starting, name="after-force")
    assert_marked(
        one("task after-force"), "shutdown_forced", "shutdown: forced by force()", error=True
    )
    assert _delta(before) == {"shutdown_forced": 1}
    # The shutdown's span counts it among the forced (its event, its count, its status).
    shutdown_span = one("GracefulShutdown")
    assert [e.name for e in shutdown_span.events].count("forced") == 1
    assert shutdown_span.attributes is not None
    assert shutdown_span.attributes["trio_cancel.forced"] == 1
    assert shutdown_span.status.status_code is StatusCode.ERROR


def test_in_flight_reader_thread_while_shutdowns_are_added() -> None:
    """The meter's reader (a thread of its own) reads the in-flight gauge while Trio's thread
    adds the shutdowns it sees: the read never raises ``Set changed size during iteration``."""

    class Shutdown:  # what the gauge reads of a GracefulShutdown
        _triggered_at = 1.0
        _running = 1

    kept = [Shutdown() for _ in range(2000)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                tc_otel._observe_in_flight(None)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                errors.append(exc)
                return

    tc_otel.instrument()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(100):
            for sd in kept:
                tc_otel._track(sd)
            for sd in [Shutdown() for _ in range(50)]:  # added, then collected
                tc_otel._track(sd)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert errors == []


def test_announced_cancel_of_a_cancelled_token_keeps_nothing_alive() -> None:
    """A call site announces the source of a cancel (``will_cancel``) of a token that turns
    out to be cancelled already: the announcement does not keep the token alive."""
    token = tc.CancellationToken()
    token.cancel("first")
    _hooks.will_cancel(token, "shutdown")
    token.cancel("again")  # no effect: nothing consumes the announcement
    ref = weakref.ref(token)
    del token
    gc.collect()
    assert ref() is None


async def test_task_span_of_a_start_that_failed_before_started_records_the_real_error() -> None:
    """A task that raises, or returns, before ``task_status.started()`` makes ``start()``
    raise; its span records what ``start()`` raised, not the library's internal marker."""
    tc_otel.instrument()

    async def fails(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise ValueError("bad config")

    async def returns(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        return

    async with trio.open_nursery() as nursery:
        with pytest.raises(ValueError, match="bad config"):
            await tc.start(nursery, fails, name="fails")
        with pytest.raises(RuntimeError, match=r"without calling task_status\.started"):
            await tc.start(nursery, returns, name="returns")
    for name, kind in (("task fails", "ValueError"), ("task returns", "RuntimeError")):
        sp = one(name)
        assert sp.status.status_code is StatusCode.ERROR
        assert sp.status.description == kind
        assert [e.attributes["exception.type"] for e in sp.events if e.attributes] == [kind]


_SUBTREE_SOURCE = """
import trio, trio.testing, trio_cancel as tc, trio_cancel.otel as tc_otel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()  # the application's own, never set as the global one
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("app")
seen = []

async def main():
    async with tc.GracefulShutdown(grace=10) as gs:
        child = gs.token.child_token()
        gs.trigger("deploy")  # no SDK is seen yet: the subtree still keeps the source
        born = child.child_token()  # born cancelled from a cancelled token
        for token in (child, born):
            with token.cancel_scope(), tc_otel.span("work", tracer):
                try:
                    await trio.sleep(1)
                except trio.Cancelled as exc:
                    seen.append(tc_otel.cancellation_source(exc))
                    raise

trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
assert seen == ["shutdown", "shutdown"], seen
spans = [s.attributes["trio_cancel.source"] for s in exporter.get_finished_spans()]
assert spans == ["shutdown", "shutdown"], spans
print("ok")
"""


def test_subtree_keeps_its_source_without_a_global_sdk() -> None:
    """With no SDK set globally when a shutdown triggers, a scope bound later to a descendant
    of its token, or to a child born cancelled from one, still says ``shutdown``
    (``cancellation_source()`` and a span with the application's own tracer)."""
    done = subprocess.run(
        [sys.executable, "-c", _SUBTREE_SOURCE], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


_ENV_PROVIDERS = """
import os, trio, trio.testing, trio_cancel as tc, trio_cancel.otel as tc_otel

os.environ["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk_tracer_provider"  # set after the import
os.environ["OTEL_PYTHON_METER_PROVIDER"] = "sdk_meter_provider"
tc_otel.instrument()

async def main():
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, trio.sleep_forever, name="t")
        await trio.testing.wait_all_tasks_blocked()
        assert handle in tc_otel._task_spans  # the task has a span
        handle.abort("stop")

trio.run(main)
assert tc_otel._tracing() and tc_otel._metering()
print("ok")
"""


def test_providers_named_by_environment_variables_before_instrument_are_seen() -> None:
    """``OTEL_PYTHON_TRACER_PROVIDER``/``..._METER_PROVIDER`` set after the import but before
    ``instrument()``: the providers they name are loaded, and tasks get spans."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", _ENV_PROVIDERS], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


_UNLOADABLE_PROVIDER = """
import logging, trio, trio.testing, trio_cancel as tc, trio_cancel.otel as tc_otel
from opentelemetry import trace

logged = []
logging.getLogger("trio_cancel.otel").addHandler(
    type("H", (logging.Handler,), {"emit": lambda self, r: logged.append(r.getMessage())})()
)

def unloadable():
    raise ImportError("no such provider")

tc_otel.instrument()
trace.get_tracer_provider = unloadable  # as a bad OTEL_PYTHON_TRACER_PROVIDER entry point
trace._TRACER_PROVIDER = object()  # the API's global changed: the getter is asked

async def main():
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        handle.abort("stop")
    assert handle.outcome == tc.Aborted("stop"), handle.outcome

trio.run(main)
assert logged == ["trio_cancel.otel: the tracer provider could not be loaded"], logged
print("ok")
"""


def test_a_provider_that_cannot_be_loaded_is_logged_not_raised_into_the_task() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _UNLOADABLE_PROVIDER], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
