"""Tests of the production server set-up: the report's request rows, the shutdown's phases,
``serve_until_shutdown`` with a Hypercorn ``Config``, and the documentation's programs."""

from __future__ import annotations

import functools
import json
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trio.testing
from _signals import ProgramHandler, send_together

import trio_cancel as tc
from trio_cancel.asgi import CancelMiddleware, serve_until_shutdown

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


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


async def test_a_request_shielded_past_phase_two_holds_the_landing_and_is_named(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Trio cannot leave a running task behind: a cleanup shielded from cancellation holds the
    server's landing until it ends; 1 s into phase 2 a warning names the requests that do."""
    from trio_cancel._hypercorn_internals import Connections
    from trio_cancel.asgi import _land

    async def shielded_cleanup() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(10)

    async with tc.GracefulShutdown(grace=2.0) as gs:
        gs.spawn(shielded_cleanup, name="GET /held")
        gs.spawn(trio.sleep_forever, name="GET /aborted")
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        gs.trigger("deploy")
        report = await _land(gs, Connections())
    assert trio.current_time() - start == 12.0  # phase 2 at 2 s, then the 10 s cleanup
    (warning,) = [r for r in caplog.records if "into phase 2" in r.getMessage()]  # once
    assert warning.levelname == "WARNING"
    assert "1 request(s) still running 1 s into phase 2" in warning.getMessage()
    assert warning.getMessage().endswith(": GET /held")
    rows = {row.name: row for row in report.tasks}
    assert rows["GET /held"].forced
    assert rows["GET /held"].seconds == 12.0
    assert rows["GET /aborted"].seconds == 2.0


async def test_no_warning_when_phase_two_lands_everything(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    from trio_cancel._hypercorn_internals import Connections
    from trio_cancel.asgi import _land

    async with tc.GracefulShutdown(grace=2.0) as gs:
        gs.spawn(trio.sleep_forever, name="GET /aborted")
        await trio.testing.wait_all_tasks_blocked()
        gs.trigger("deploy")
        report = await _land(gs, Connections())
    assert report.tasks[0].forced
    assert "into phase 2" not in caplog.text


# ---------------------------------------------------------------- a real server process

SERVER = """
import json, sys
import trio
from trio_cancel.asgi import serve_until_shutdown

async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("no lifespan support")
    path = scope["path"]
    if path.startswith("/sleep/"):
        print("started", path, flush=True)
        await trio.sleep(float(path.rsplit("/", 1)[1]))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

async def main(drain_delay, grace):
    async with trio.open_nursery() as nursery:
        async def serve(task_status):
            report = await serve_until_shutdown(
                app, bind="127.0.0.1:0", grace=grace, drain_delay=drain_delay,
                readiness_path="/ready", task_status=task_status,
            )
            print(json.dumps(report.to_dict()), flush=True)
            print(report, file=sys.stderr, flush=True)
        print(await nursery.start(serve), flush=True)

trio.run(main, float(sys.argv[1]), float(sys.argv[2]))
"""


def _start(tmp_path: Path, drain_delay: float, grace: float) -> tuple[subprocess.Popen[str], int]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(drain_delay), str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().strip().rsplit(":", 1)[1])


def _get(port: int, path: str) -> int:
    """The status of ``GET path`` on a new connection (ConnectionRefusedError when refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
    if not data:  # accepted by the kernel as the listener closed, then closed unanswered
        raise ConnectionResetError("closed without an answer")
    return int(data.split(b" ", 2)[1])


def _stop(proc: subprocess.Popen[str]) -> None:
    """Kill the server if it still runs, and close its pipes (also when the test failed, so that
    no unclosed pipe is reported later, in another test)."""
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _poll_until_refused(port: int, path: str) -> list[int]:
    seen: list[int] = []
    while True:
        try:
            seen.append(_get(port, path))
        except (ConnectionRefusedError, ConnectionResetError):
            # Refused; or accepted into the backlog just as the listener closed, then reset.
            return seen


def test_sigterm_drains_then_a_second_signal_triggers_and_the_listener_closes(
    tmp_path: Path,
) -> None:
    """A drain that would last 600 s: readiness says 503 while every other request is served;
    SIGINT then triggers at once: new connections are refused, the request in flight gets its
    grace period, then phase 2 answers it 503, and the process exits with the report."""
    proc, port = _start(tmp_path, drain_delay=600, grace=1.0)
    assert proc.stdout is not None
    try:
        assert _get(port, "/ready") == 200
        assert _get(port, "/work") == 200
        proc.send_signal(signal.SIGTERM)
        while _get(port, "/ready") != 503:  # the signal's handling is the only wait
            pass
        for _ in range(5):  # the steady client: served normally during the drain
            assert _get(port, "/work") == 200
        assert _get(port, "/ready") == 503
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(_get, port, "/sleep/600")
            assert proc.stdout.readline().strip() == "started /sleep/600"
            proc.send_signal(signal.SIGINT)  # during the drain: the trigger, at once
            seen = _poll_until_refused(port, "/ready")
            assert set(seen) <= {503}
            assert slow.result(timeout=60) == 503  # forced by phase 2
        out, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["reason"] == "signal SIGTERM"
    phases = report["phases"]
    assert phases["drain"] < 0 == phases["trigger"] <= phases["listener_closed"]
    assert phases["listener_closed"] < phases["phase_two"] <= phases["exit"]
    assert phases["phase_two"] >= 1.0  # the grace period, whole
    (row,) = report["tasks"]
    assert row["detail"] == {
        "method": "GET",
        "path": "/sleep/600",
        "request_id": None,
        "status": 503,
    }
    assert row["forced"]
    assert "phases (s from the trigger): drain -" in err


def test_the_drain_ends_by_itself_after_drain_delay(tmp_path: Path) -> None:
    """SIGTERM, then nothing: readiness goes 200 -> 503, then the listener closes after the
    delay (connections refused) and the process exits; the report says when."""
    proc, port = _start(tmp_path, drain_delay=0.5, grace=0.5)
    try:
        assert _get(port, "/ready") == 200
        proc.send_signal(signal.SIGTERM)
        seen = _poll_until_refused(port, "/ready")
        out, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 0, err
    assert 503 in seen
    first_503 = seen.index(503)
    assert set(seen[:first_503]) <= {200}
    assert set(seen[first_503:]) == {503}  # once draining, never ready again
    phases = json.loads(out.strip().splitlines()[-1])["phases"]
    assert phases["drain"] <= -0.5
    assert phases["phase_two"] is None  # nothing in flight: phase 2 never came
    assert 0 <= phases["listener_closed"] <= phases["exit"]


async def test_sigterm_and_sigint_arriving_together_trigger_once_and_do_not_force() -> None:
    """An orchestrator's SIGTERM and a terminal's SIGINT at once: one trigger, at once (SIGINT
    is among them, so no drain), and the request in flight gets its grace period; not a
    trigger followed by "a signal after the trigger" that forces phase 2."""

    async def together() -> None:
        send_together(signal.SIGTERM, signal.SIGINT)

    report, statuses = await _serve_one_slow_request(0.2, together, grace=30.0, drain_delay=600)
    assert statuses == [200]
    assert report.reason == "signal SIGINT"
    (row,) = report.tasks
    assert not row.forced
    assert row.detail["status"] == 200  # type: ignore[index]
    assert report.phases["drain"] is None  # SIGINT was among them: no drain
    assert report.phases["phase_two"] is None  # and nothing forced it


async def test_two_servers_in_one_process_both_land_on_one_sigterm() -> None:
    """A public and an admin port in one process: one SIGTERM shuts both down (each server's
    handlers used to replace the other's)."""
    reports: dict[str, tc.LandingReport] = {}

    async def serve(name: str, task_status: trio.TaskStatus[str]) -> None:
        reports[name] = await serve_until_shutdown(
            _fast_app, bind="127.0.0.1:0", grace=5.0, task_status=task_status
        )

    with ProgramHandler(signal.SIGTERM) as program, trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for name in ("public", "admin"):
                url = await nursery.start(serve, name)
                async with httpx.AsyncClient(base_url=url) as client:
                    assert (await client.get("/")).text == "ok"
            signal.raise_signal(signal.SIGTERM)
        assert program.calls == 0
        assert signal.getsignal(signal.SIGTERM) is program  # back once both have returned
    assert reports["public"].reason == "signal SIGTERM"
    assert reports["admin"].reason == "signal SIGTERM"


async def _serve_one_slow_request(
    wind_down: float,
    signals: Callable[[], Awaitable[None]],
    *,
    grace: float = 600.0,
    drain_delay: float = 0.0,
) -> tuple[tc.LandingReport, list[int]]:
    """Serve (with ``grace`` and ``drain_delay``), send one request that takes ``wind_down``
    seconds (no token: only phase 2 cuts it short), and once it is in flight call
    ``await signals()``; the report and the status."""
    in_flight = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] != "http":
            raise RuntimeError("no lifespan support")
        in_flight.set()
        await trio.sleep(wind_down)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    reports: list[tc.LandingReport] = []
    statuses: list[int] = []

    async def serve(task_status: trio.TaskStatus[str]) -> None:
        reports.append(
            await serve_until_shutdown(
                app,
                bind="127.0.0.1:0",
                grace=grace,
                drain_delay=drain_delay,
                task_status=task_status,
            )
        )

    async def get(url: str) -> None:
        async with httpx.AsyncClient(base_url=url) as client:
            statuses.append((await client.get("/slow")).status_code)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve)
            nursery.start_soon(get, url)
            await in_flight.wait()
            await signals()
    (report,) = reports
    return report, statuses


async def test_a_signal_after_the_trigger_forces_phase_two_at_once() -> None:
    async def two_signals() -> None:
        signal.raise_signal(signal.SIGTERM)  # the trigger
        await trio.testing.wait_all_tasks_blocked()  # the watcher has taken it
        signal.raise_signal(signal.SIGTERM)  # phase 2 now, not in 600 s

    report, statuses = await _serve_one_slow_request(600.0, two_signals)
    assert statuses == [503]
    (row,) = report.tasks
    assert row.forced
    assert row.outcome == tc.Aborted("signal SIGTERM: forced by a second signal (SIGTERM)")
    assert report.phases["phase_two"] is not None


async def test_a_signal_after_every_request_landed_records_no_phase_two(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second SIGTERM that comes once the landing is over (the server still closing) forces
    nothing: the report says phase 2 did not happen."""
    import trio_cancel.asgi as asgi

    land = asgi._land

    async def land_then_signal(shutdown: tc.GracefulShutdown, connections: Any) -> Any:  # noqa: ANN401
        report = await land(shutdown, connections)  # every request has landed
        signal.raise_signal(signal.SIGTERM)  # an impatient orchestrator's second SIGTERM
        await trio.testing.wait_all_tasks_blocked()  # the watcher has taken it
        return report

    monkeypatch.setattr(asgi, "_land", land_then_signal)

    async def one_signal() -> None:
        signal.raise_signal(signal.SIGTERM)

    report, statuses = await _serve_one_slow_request(0.2, one_signal)
    assert statuses == [200]
    (row,) = report.tasks
    assert not row.forced
    assert report.phases["phase_two"] is None


async def test_serve_until_shutdown_checks_its_arguments_at_the_call() -> None:
    from hypercorn.config import Config

    app = _app
    with pytest.raises(ValueError, match="termination budget"):
        await serve_until_shutdown(app, grace=25, drain_delay=5, termination_budget=30)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    with pytest.raises(ValueError, match="not both"):
        await serve_until_shutdown(app, bind="127.0.0.1:0", config=config)
    with pytest.raises(TypeError, match="Config"):
        await serve_until_shutdown(app, config={"bind": "x"})
    with pytest.raises(ValueError, match="drain_delay"):
        await serve_until_shutdown(app, drain_delay=-1)
    with pytest.raises(ValueError, match="readiness_path"):
        await serve_until_shutdown(app, readiness_path="ready")
    with pytest.raises(ValueError, match="timeout"):
        await serve_until_shutdown(app, timeout=0)


async def test_serve_until_shutdown_with_a_config_leaves_it_unchanged() -> None:
    from hypercorn.config import Config

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    config.keep_alive_timeout = 7
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve_until_shutdown,
                _fast_app,
                config=config,
                grace=3.0,
                install_signal_handlers=False,
            )
        )
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/")).text == "ok"
        nursery.cancel_scope.cancel()
    assert config.graceful_timeout == 0.5  # the copy's was raised above grace, not this one
    assert config.bind == ["127.0.0.1:0"]


async def test_a_config_bind_set_to_the_default_is_a_bind_of_its_own() -> None:
    from hypercorn.config import Config

    explicit = Config()
    explicit.bind = "127.0.0.1:8000"  # Hypercorn's default, but set: the config's own bind
    from_mapping = Config.from_mapping({"bind": ["127.0.0.1:8000"]})
    for config in (explicit, from_mapping):
        # (Not refused, it would serve until the deadline.)
        with pytest.raises(ValueError, match="not both"), trio.fail_after(5):
            await serve_until_shutdown(
                _fast_app, bind="127.0.0.1:0", config=config, install_signal_handlers=False
            )
    # A config that never set its bind takes bind=.
    config = Config()
    config.accesslog = None
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve_until_shutdown,
                _fast_app,
                bind="127.0.0.1:0",
                config=config,
                install_signal_handlers=False,
            )
        )
        assert not url.endswith(":8000")
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/")).text == "ok"
        nursery.cancel_scope.cancel()
    assert "_bind" not in vars(config)  # left unchanged


def test_a_config_bind_equal_to_the_default_public_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without reading Hypercorn's Config layout, only a bind that differs from the default
    is seen."""
    from hypercorn.config import Config

    from trio_cancel._hypercorn_internals import config_sets_bind

    explicit = Config()
    explicit.bind = "127.0.0.1:8000"
    other = Config()
    other.bind = ["127.0.0.1:9"]
    assert config_sets_bind(explicit)
    assert config_sets_bind(other)
    assert not config_sets_bind(Config())
    monkeypatch.setenv("TRIO_CANCEL_HYPERCORN_INTERNALS", "off")
    assert not config_sets_bind(explicit)  # the fallback's limit
    assert config_sets_bind(other)
    assert not config_sets_bind(Config())


async def _fast_app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
    if scope["type"] != "http":
        raise RuntimeError("no lifespan support")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


# ---------------------------------------------------------------- the documentation's programs

SNIPPETS = Path(__file__).resolve().parent.parent / "docs" / "snippets"


async def test_services_middleware_snippet_wraps_its_handler() -> None:
    namespace: dict[str, Any] = {}
    code = compile((SNIPPETS / "services_middleware.py").read_text(), "snippet", "exec")
    exec(code, namespace)
    assert isinstance(namespace["app"], CancelMiddleware)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve_until_shutdown,
                namespace["app"],
                bind="127.0.0.1:0",
                grace=1.0,
                install_signal_handlers=False,
            )
        )
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/")
        nursery.cancel_scope.cancel()
    assert response.json() == {"cancelled": False}


@pytest.mark.parametrize("snippet", ["services_by_hand.py", "services_serve.py"])
def test_services_server_snippet_serves_then_exits_after_its_report(snippet: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SNIPPETS / snippet), "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert "stop with Ctrl+C or kill -TERM" in line, line
        port = int(line.split()[2].rstrip(":").rsplit(":", 1)[1])
        assert _get(port, "/") == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)  # it exits: Hypercorn does not keep listening
    finally:
        _stop(proc)
    assert proc.returncode == 0, err
    assert "shutdown 'signal SIGTERM'" in out or '"reason": "signal SIGTERM"' in err
