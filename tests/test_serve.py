"""Tests of the production server set-up: the report's request rows, the shutdown's phases,
``serve_until_shutdown`` with a Hypercorn ``Config``, and the documentation's programs."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_cancel as tc
from trio_cancel.asgi import CancelMiddleware


def _request(path: str, query: bytes = b"", request_id: str | None = None) -> dict[str, Any]:
    headers = [] if request_id is None else [(b"x-request-id", request_id.encode())]
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query,
        "headers": headers,
    }


async def _call(mw: CancelMiddleware, scope: dict[str, Any], sent: list[Any]) -> None:
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append((scope["path"], message))

    await mw(scope, receive, send)


async def _app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
    seconds = float(scope["path"].rsplit("/", 1)[-1])
    with trio.CancelScope(shield=scope["path"].startswith("/stubborn")):
        await trio.sleep(seconds)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("report_query", [False, True])
async def test_report_rows_tell_requests_apart(
    autojump_clock: trio.testing.MockClock, report_query: bool
) -> None:
    sent: list[Any] = []
    async with tc.GracefulShutdown(grace=1.0) as gs:
        mw = CancelMiddleware(_app, timeout=0.5, shutdown=gs, report_query=report_query)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_call, mw, _request("/work/0.3", b"token=s3cret", "id-1"), sent)
            nursery.start_soon(_call, mw, _request("/work/5", b"", "id-2"), sent)
            nursery.start_soon(_call, mw, _request("/work/0.1"), sent)
            await trio.sleep(0.2)
            gs.trigger("deploy")
        report = await gs.wait()
    rows = {str(row.detail["path"]).split("?")[0]: row for row in report.tasks}  # type: ignore[index]
    done, timed_out = rows["/work/0.3"], rows["/work/5"]
    assert "/work/0.1" not in rows  # ended before the trigger: counted only
    assert done.outcome == tc.Completed(None)
    assert dict(done.detail) == {  # type: ignore[arg-type]
        "method": "GET",
        "path": "/work/0.3?token=s3cret" if report_query else "/work/0.3",
        "request_id": "id-1",
        "status": 200,
    }
    assert timed_out.outcome == tc.Aborted("request timeout")
    assert timed_out.detail["status"] == 504  # type: ignore[index]
    assert timed_out.detail["request_id"] == "id-2"  # type: ignore[index]
    text = str(report)
    assert "request_id=id-2 status=504" in text
    assert ("s3cret" in text) == report_query
    data_rows = {row["detail"]["request_id"]: row for row in report.to_dict()["tasks"]}
    assert data_rows["id-2"]["detail"]["status"] == 504
    assert data_rows["id-2"]["reason"] == "request timeout"
    statuses = {path: m["status"] for path, m in sent if m["type"] == "http.response.start"}
    assert statuses == {"/work/0.3": 200, "/work/5": 504, "/work/0.1": 200}


async def test_a_forced_request_row_shows_the_503_it_got(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[Any] = []
    async with tc.GracefulShutdown(grace=1.0) as gs:
        mw = CancelMiddleware(_app, shutdown=gs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_call, mw, _request("/work/10"), sent)
            await trio.sleep(0.1)
            gs.trigger("deploy")
        report = await gs.wait()
    (row,) = report.tasks
    assert row.forced
    assert row.outcome == tc.Aborted("deploy: forced after the grace period")
    assert row.detail["status"] == 503  # type: ignore[index]
    assert [m["status"] for _, m in sent if m["type"] == "http.response.start"] == [503]


def test_report_query_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="report_query"):
        CancelMiddleware(_app, report_query="yes")  # type: ignore[arg-type]


async def test_grace_and_the_phase_two_event(autojump_clock: trio.testing.MockClock) -> None:
    woke: list[float] = []
    async with tc.GracefulShutdown(grace=2.5) as gs:
        assert gs.grace == 2.5
        assert not gs.forcing

        async def watch() -> None:
            await gs.wait_forcing()
            woke.append(trio.current_time())

        gs.spawn(watch)
        gs.spawn(trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        gs.trigger()
        report = await gs.wait()
    assert gs.forcing
    assert woke == [start + 2.5]
    assert report.phases["phase_two"] == 2.5
    assert report.phases["trigger"] == 0.0
    assert report.phases["drain"] is None
