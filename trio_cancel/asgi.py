"""Cancellation for ASGI apps on Trio servers: request timeouts, cancel on client disconnect,
per-request tokens, deadlines that follow a request from service to service, and shutdown.

``import trio_cancel.asgi`` (no dependency beyond Trio; ``import trio_cancel`` does not import
it). Wrap any ASGI app::

    app = CancelMiddleware(app, timeout=30.0, shutdown=gs)

Each HTTP request then runs in a task of its own, under a child token of the middleware's
token, available to the handler as ``scope["extensions"]["trio_cancel"]["token"]``. The handler
is cancelled (its ``trio.Cancelled`` carries the reason) when:

* its time is up: the least of ``timeout``, the caller's ``Connect-Timeout-Ms`` or
  ``grpc-timeout`` header, and ``max_timeout`` (reason ``"request timeout"``, or ``"caller
  deadline"`` when the caller's header set the limit). The client gets 504 with
  ``{"code": "deadline_exceeded"}``, or 408 if the request body had not fully arrived;
* the client disconnects (reason ``"client disconnected"``): no answer, nobody is there;
* its token is cancelled (by you, or by cancelling the middleware's token);
* the :class:`~trio_cancel.GracefulShutdown` forces phase 2 (the client gets 503 with
  ``Retry-After`` and ``{"code": "unavailable"}``). Requests that arrive after the trigger get
  that 503 at once; requests in flight at the trigger may finish within the grace period, and
  each is a row of the shutdown's :class:`~trio_cancel.LandingReport` (``"GET /path"``).

The token's ``reason`` is always exact; the ``trio.Cancelled`` carries it too, except when a
scope of the handler's own with a deadline (a ``trio.sleep``) expires in the same scheduling
round: Trio then reports that innermost scope's cancellation (reason ``None``).

A response head the app sent is never lost half-way in the server's send, and a complete
response sent as the request's time runs out is delivered whole (the caller gets it, not an
empty 500).

"Client disconnected" means before the response was complete: once the app has sent the
last body message, it runs on to its end (a Starlette ``BackgroundTask`` runs), and only the
middleware's token and the shutdown's phase 2 can cancel it.

Every message the server sends is forwarded to the app (the middleware reads ``receive()`` to
notice a disconnect, and hands each message on), never more than one unread body message ahead
of the app, so the server's backpressure on uploads holds; a queued message is handed over
even to a caller whose scope is already cancelled, so Starlette's ``request.is_disconnected()``
works. Lifespan and websocket scopes pass through untouched; an exception from the app
propagates (the server answers 500).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import json
import logging
import math
import signal
import types
from typing import TYPE_CHECKING, Any, final

import trio

from . import _hooks
from ._checks import check_grace
from ._excgroups import raise_errors_of
from ._hypercorn_internals import Connections, config_sets_bind, serve_owning_connections
from ._outcome import Aborted, Failed, Outcome
from ._process import signal_name
from ._shutdown import (
    PHASES,
    GracefulShutdown,
    LandingReport,
    SignalBatches,
    open_signal_batches,
)
from ._token import CancellationToken, release_timer
from .deadlines import (
    REQUEST_DEADLINE,
    DeadlineHeaderError,
    RequestDeadline,
    parse_deadline_headers,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "CancelMiddleware",
    "DeadlineHeaderError",
    "parse_deadline_headers",
    "serve_until_shutdown",
]

Scope = "MutableMapping[str, Any]"
Message = dict[str, Any]
Receive = "Callable[[], Awaitable[Message]]"
Send = "Callable[[Message], Awaitable[None]]"
ASGIApp = "Callable[[Any, Any, Any], Awaitable[None]]"

_log = logging.getLogger("trio_cancel.asgi")


def _check_status(status: object, name: str) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError(f"{name} must be an HTTP error status from 400 to 599, not {status!r}")
    return status


def _check_positive(value: object, name: str) -> float:
    """A finite number of seconds > 0; ``ValueError`` for ``10**400``, ``inf``, NaN, <= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return seconds


def _check_timeout(value: object, name: str) -> float:
    if value is None:
        return math.inf  # no limit
    return _check_positive(value, name)


@final
class CancelMiddleware:
    """ASGI middleware: request timeouts, cancel on disconnect, per-request tokens, caller
    deadlines and graceful shutdown (see :mod:`trio_cancel.asgi`).

    Args:
        app: The ASGI app to wrap.
        timeout: Seconds a request may take (``None``: no limit of its own).
        max_timeout: The most a caller's deadline header may grant (``None``: the header is
            bounded by ``timeout`` only). Incoming deadlines are untrusted: clamped, never
            extended.
        token: The parent of every request's token; cancelling it cancels every request.
            Default: a new token (``middleware.token``).
        shutdown: A :class:`~trio_cancel.GracefulShutdown` whose block contains the server: each
            request is spawned in it and listed in its report; after the trigger, new requests
            get ``shutdown_status`` at once.
        timeout_status: The status for a request whose time ran out (504).
        shutdown_status: The status for a request refused or forced by the shutdown (503).
        retry_after: Seconds for the ``Retry-After`` header of ``shutdown_status`` answers
            (whole seconds: a fraction is rounded up).
        readiness_path: A path (``"/ready"``) the middleware answers itself, for an
            orchestrator's readiness probe: 200 ``{"status": "ready"}``, then 503
            ``{"status": "draining"}`` once :meth:`drain` was called or the shutdown triggered.
            Not passed to the app, not a row of the report.
        report_query: Whether a request's row in the shutdown's report shows its query
            string (off by default: a query may hold secrets). Each row's
            :attr:`~trio_cancel.TaskLanding.detail` gives the method, the path, the request id
            (``X-Request-Id``) and the status sent.

    Raises:
        ValueError: ``timeout``, ``max_timeout`` or ``retry_after`` is not a finite number
            > 0 (zero, negative, NaN, ``inf``, ``10**400``); a status is not from 400 to 599;
            ``readiness_path`` does not start with ``/``.
        TypeError: ``timeout``, ``max_timeout`` or ``retry_after`` is not a number (``None``
            means no limit for the first two), ``token`` or ``shutdown`` is of the wrong type.
    """

    def __init__(
        self,
        app: Any,  # noqa: ANN401 - any ASGI app
        *,
        timeout: float | None = None,
        max_timeout: float | None = None,
        token: CancellationToken | None = None,
        shutdown: GracefulShutdown | None = None,
        timeout_status: int = 504,
        shutdown_status: int = 503,
        retry_after: float = 5,
        report_query: bool = False,
        readiness_path: str | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"CancelMiddleware needs an ASGI app, not {type(app).__name__}")
        self._app = app
        self._timeout = _check_timeout(timeout, "timeout")
        self._max_timeout = _check_timeout(max_timeout, "max_timeout")
        if token is not None and not isinstance(token, CancellationToken):
            raise TypeError(f"token must be a CancellationToken, not {type(token).__name__}")
        self.token: CancellationToken = token if token is not None else CancellationToken()
        if shutdown is not None and not isinstance(shutdown, GracefulShutdown):
            raise TypeError(f"shutdown must be a GracefulShutdown, not {type(shutdown).__name__}")
        self._shutdown = shutdown
        self._timeout_status = _check_status(timeout_status, "timeout_status")
        self._shutdown_status = _check_status(shutdown_status, "shutdown_status")
        # Retry-After holds whole seconds: a fraction is rounded up (never invites a retry early).
        self._retry_after = math.ceil(_check_positive(retry_after, "retry_after"))
        if not isinstance(report_query, bool):
            raise TypeError(f"report_query must be a bool, not {type(report_query).__name__}")
        self._report_query = report_query
        if readiness_path is not None and (
            not isinstance(readiness_path, str) or not readiness_path.startswith("/")
        ):
            raise ValueError(
                f"readiness_path must be a path such as '/ready', not {readiness_path!r}"
            )
        self._readiness_path = readiness_path
        self._draining = False

    @property
    def draining(self) -> bool:
        """Whether the readiness path answers 503: after :meth:`drain`, or once the shutdown
        has triggered."""
        return self._draining or (
            self._shutdown is not None and self._shutdown.token.is_cancelled()
        )

    @trio.lowlevel.enable_ki_protection
    def drain(self) -> None:
        """Start a drain: the readiness path answers 503 from now on (an orchestrator stops
        sending new traffic); every other request is served as before, no token is cancelled.
        Idempotent. Not a checkpoint; never blocks."""
        self._draining = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        """Handle one ASGI call.

        Cancellation:
            A cancellation of the server's own task for this request (its shutdown) cancels
            the handler as well and propagates.
        """
        if scope.get("type") != "http":
            await self._app(scope, receive, send)  # lifespan, websocket: untouched
            return
        if self._readiness_path is not None and scope.get("path") == self._readiness_path:
            draining = self.draining
            body = json.dumps({"status": "draining" if draining else "ready"}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ]
            status = 503 if draining else 200
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await _Request(self, scope, receive, send).run()

    def __repr__(self) -> str:
        return f"<CancelMiddleware timeout={self._timeout:g} s around {self._app!r}>"


class _Request:
    """One HTTP request going through the middleware.

    Invariants, and how they are kept:

    * Backpressure: the watcher holds at most one unread ``http.request`` message that more
      may follow (it reads the next one only once the app has taken it); after the last one
      it reads on, since only ``http.disconnect`` can follow.
    * "Client disconnected" means before the response was complete: :attr:`finished` is set
      before the last body message is handed to the server (whose ``http.disconnect`` after a
      complete response is protocol, not a client leaving), and from then on only the
      middleware's token (and the shutdown's phase 2) cancel the app: the request's timer is
      released and its deadline lifted.
    * The request's deadline is visible only inside the request (its context variable is reset
      when the app returns).
    """

    def __init__(self, mw: CancelMiddleware, scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        self.mw = mw
        self.scope = scope
        self.receive = receive
        self.send = send
        self.name = f"{scope.get('method', '?')} {scope.get('path', '?')}"
        self.started = False  # the app sent http.response.start
        self.finished = False  # the app sent (is sending) the last body message
        self.body_complete = False  # the last http.request message arrived
        self.disconnected = False
        self.status: int | None = None  # the status sent (or decided as the handler ended)
        self.request_id = _header(scope, b"x-request-id")
        self.deadline = math.inf
        self.why = "request timeout"  # the reason the request's time limit cancels with
        self.cell: RequestDeadline | None = None  # the deadline outgoing calls see
        self.token: CancellationToken | None = None
        self.inbox: collections.deque[Message] = collections.deque()
        self.arrived = trio.lowlevel.ParkingLot()  # the watcher queued a message
        self.taken = trio.lowlevel.ParkingLot()  # the app took a message

    async def run(self) -> None:
        mw = self.mw
        shutdown = mw._shutdown
        if shutdown is not None and shutdown.token.is_cancelled():
            await self._answer(
                mw._shutdown_status, "unavailable", "the server is shutting down", retry=True
            )
            return
        try:
            budget = parse_deadline_headers(list(self.scope.get("headers", [])))
        except DeadlineHeaderError as exc:
            await self._answer(400, "invalid_argument", str(exc))
            return
        limit, why = mw._timeout, "request timeout"
        if budget is not None:
            budget = min(budget, mw._max_timeout)
            if budget < limit:
                limit, why = budget, "caller deadline"
        if limit <= 0:
            await self._answer(mw._timeout_status, "deadline_exceeded", f"{why}: no time left")
            return
        self.why = why
        token = self.token = mw.token.child_token()
        deadline = self.deadline = trio.current_time() + limit
        if limit < math.inf:
            self.cell = RequestDeadline(deadline)
            token.cancel_after(limit, why)  # the handler's Cancelled carries the reason
            _hooks.timer_source(token, why)  # trio_cancel.otel: the source
        extensions = self.scope.setdefault("extensions", {})
        extensions["trio_cancel"] = {
            "token": token,
            "deadline": deadline,
            "shutdown": None if shutdown is None else shutdown.token,
        }
        outcome = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_receive, token)
                try:
                    if shutdown is None:
                        await self._handle(token)  # in this task: it cannot outlive it
                    else:
                        outcome = await self._handle_in(shutdown, token)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_errors_of(group)  # the app's own error, bare: the server answers 500
            raise
        finally:
            release_timer(token)  # ended before its deadline: no timer keeps the token alive
        if _hooks.request_cut is not None:  # trio_cancel.otel.instrument(): the server span
            _hooks.request_cut(self, outcome)
        if isinstance(outcome, Failed):
            raise outcome.error  # the app raised: the server answers 500
        if token.is_cancelled():
            reason = token.reason or "cancelled"
            if reason == why:
                await self._after_cut(reason, mw._timeout_status, "deadline_exceeded")
            elif not self.disconnected:
                await self._after_cut(reason, mw._shutdown_status, "unavailable")
        elif isinstance(outcome, Aborted):
            await self._after_cut(f"shutdown: {outcome.reason}", mw._shutdown_status, "unavailable")

    async def _handle_in(
        self, shutdown: GracefulShutdown, token: CancellationToken
    ) -> Outcome[None]:
        """Run the handler as a task of the shutdown (a row of its report) and join it; if
        this task is cancelled, abort the handler and wait for it, shielded, at most the
        shutdown's grace period: the handler never outlives the server's request task."""
        handle = shutdown.spawn(self._handle, token, name=self.name)
        shutdown._describe(handle, self._detail)

        # The request's token ends the task as an abort with the token's reason (a timed-out
        # request is Aborted("request timeout") in the report, not Completed(None)).
        def abort() -> None:
            handle.abort(token.reason or "cancelled")
            if _hooks.active:  # trio_cancel.otel: the abort stands for the token's source
                _hooks.aborted_for(handle, token)

        registration = token.on_cancel(abort)
        try:
            return await handle.join()
        except trio.Cancelled:
            handle.abort("the server cancelled the request")
            with trio.move_on_after(shutdown_grace(shutdown)) as scope:
                scope.shield = True
                await handle.join()
            if scope.cancelled_caught:
                _log.warning(
                    "%s: the handler was still running its cleanup after the grace period",
                    self.name,
                )
            raise
        finally:
            registration.unregister()

    def _detail(self) -> Mapping[str, object]:
        """The request's row detail in the shutdown's report (asked for once it ended)."""
        path = self.scope.get("path", "?")
        query = self.scope.get("query_string", b"")
        if self.mw._report_query and query:
            path = f"{path}?{query.decode('latin-1')}"
        return types.MappingProxyType(
            {
                "method": self.scope.get("method", "?"),
                "path": path,
                "request_id": self.request_id,
                "status": self.status,
            }
        )

    def _decide_status(self, error: BaseException | None) -> None:
        """In the handler's task, as it ends: the status the client gets (``None``: none),
        known before the report can be made."""
        if self.status is not None:
            return  # the app's own (or the middleware's answer) went out
        mw = self.mw
        token = self.token
        if self.disconnected and not self.finished:
            return
        if error is not None and not isinstance(error, trio.Cancelled):
            self.status = 500
        elif token is not None and token.is_cancelled():
            if token.reason == self.why:
                self.status = mw._timeout_status if self.body_complete else 408
            else:
                self.status = mw._shutdown_status
        elif error is not None:
            self.status = mw._shutdown_status  # aborted by the shutdown's phase 2

    async def _handle(self, token: CancellationToken) -> None:
        # The request's deadline, for outgoing calls (deadlines' hooks), set only while the
        # app runs: the app may run in the caller's own task (httpx.ASGITransport).
        reset = REQUEST_DEADLINE.set(self.cell) if self.cell is not None else None
        error: BaseException | None = None
        try:
            with token.cancel_scope():
                await self.mw._app(self.scope, self._app_receive, self._app_send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._decide_status(error)
            if reset is not None:
                REQUEST_DEADLINE.reset(reset)

    def _holds_body(self) -> bool:
        """Whether an unread ``http.request`` message that more may follow is queued."""
        inbox = self.inbox
        return bool(inbox) and inbox[-1].get("more_body", False)

    async def _watch_receive(self, token: CancellationToken) -> None:
        """Read the server's messages and queue them for the app, one unread body message at
        most; cancel the request's token when the client goes away before the response is
        complete."""
        while True:
            while self._holds_body():
                await self.taken.park()  # backpressure: the app has not taken the last one
            message = await self.receive()  # cancel-safe: a server's channel receive
            kind = message.get("type")
            if kind == "http.request" and not message.get("more_body", False):
                self.body_complete = True
            self.inbox.append(message)
            if self.arrived:
                self.arrived.unpark_all()
            if kind == "http.disconnect":
                self.disconnected = True
                if not self.finished:
                    _log.info("%s: client disconnected; cancelling the handler", self.name)
                    _hooks.will_cancel(token, "client_disconnect")  # trio_cancel.otel
                    token.cancel("client disconnected")
                return

    async def _app_receive(self) -> Message:
        # A queued message is handed over even if the caller's scope is cancelled (Starlette's
        # is_disconnected() polls this way); otherwise wait for the next one (after the
        # disconnect, none comes: as the server's own receive, it waits until cancelled).
        while not self.inbox:
            await self.arrived.park()
        message = self.inbox.popleft()
        if self.taken:
            self.taken.unpark_all()  # the watcher may pull the next one
        return message  # noqa: ASYNC910 - ASGI receive, by design

    async def _app_send(self, message: Message) -> None:
        kind = message.get("type")
        shield = False
        if kind == "http.response.body" and not message.get("more_body", False):
            # The response is complete once this is sent: from now on only the middleware's
            # token (and the shutdown's phase 2) may cancel the app (a BackgroundTask runs).
            # A request timeout that fired before the app got here (without a checkpoint in
            # between) does not cut the response whose head is out: it is delivered.
            shield = self._timed_out()
            self._complete()
        elif kind == "http.response.start":
            self.status = message.get("status")
            # The head goes out whole: a cancellation inside the server's send (waiting for
            # the connection's send lock) would leave it given to the protocol but not to the
            # wire, and the caller with an empty 500 instead of any answer.
            self.started = shield = True
        with trio.CancelScope(shield=shield):
            await self.send(message)

    def _timed_out(self) -> bool:
        """Whether the request's token was cancelled by its time limit (not by the
        middleware's token, a disconnect or the shutdown)."""
        token = self.token
        return (
            token is not None
            and token.is_cancelled()
            and token.reason == self.why
            and not self.mw.token.is_cancelled()
            and not self.disconnected
        )

    def _complete(self) -> None:
        self.finished = True
        if self.token is not None:
            release_timer(self.token)  # the request's time limit no longer applies
        if self.cell is not None:
            self.cell.at = math.inf  # nor does its deadline, for outgoing calls

    async def _after_cut(self, why: str, status: int, code: str) -> None:
        """The handler was cut short: answer, unless the client left or the response was
        complete."""
        if self.disconnected or self.finished:
            return  # noqa: ASYNC910 - nothing to send
        if self.started:
            # A second start message is not allowed: end the response by failing the call,
            # which makes the server close the connection.
            _log.warning(
                "%s: %s after the response started; closing the connection", self.name, why
            )
            raise _ResponseCutShortError(f"{self.name}: {why} after the response started")
        if status == self.mw._timeout_status and not self.body_complete:
            status = 408  # RFC 9110: the request itself did not arrive in time
        _log.info("%s: cancelled (%s); answering %d", self.name, why, status)
        await self._answer(status, code, why, retry=status == self.mw._shutdown_status)

    async def _answer(self, status: int, code: str, message: str, *, retry: bool = False) -> None:
        self.status = status
        body = json.dumps({"code": code, "message": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if retry:
            headers.append((b"retry-after", str(self.mw._retry_after).encode()))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


def _header(scope: Any, name: bytes) -> str | None:  # noqa: ANN401 - an ASGI scope
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def shutdown_grace(shutdown: GracefulShutdown) -> float:
    """The shutdown's grace period (the bound of a shielded wait for a handler's cleanup)."""
    return shutdown.grace


def shutdown_forcing(shutdown: GracefulShutdown) -> bool:
    """Whether the shutdown's phase 2 has begun (by its grace period, ``force()`` or a second
    signal)."""
    return shutdown.forcing


class _ResponseCutShortError(Exception):
    """Raised to the server when a response that had begun cannot be completed."""


async def serve_until_shutdown(
    app: Any,  # noqa: ANN401 - any ASGI app
    *,
    bind: str | None = None,
    config: Any = None,  # noqa: ANN401 - a hypercorn.config.Config
    grace: float = 10.0,
    drain_delay: float = 0.0,
    readiness_path: str | None = None,
    termination_budget: float | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the middleware's request timeout
    max_timeout: float | None = None,
    timeout_status: int = 504,
    shutdown_status: int = 503,
    retry_after: float = 5,
    report_query: bool = False,
    install_signal_handlers: bool = True,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> LandingReport:
    """Serve ``app`` with Hypercorn's Trio worker until a shutdown, and land every request.

    The ready way to run a server under :class:`~trio_cancel.GracefulShutdown`: the app is
    wrapped in :class:`CancelMiddleware` (``timeout``, ``max_timeout``, ``timeout_status``,
    ``shutdown_status``, ``retry_after``, ``report_query`` and ``readiness_path`` are its
    options). ``task_status.started()`` is called with the server's URL (``nursery.start``
    returns it). Needs Hypercorn (``pip install hypercorn[trio]``).

    The shutdown, in the order an orchestrator needs:

    * SIGTERM starts a *drain* when ``drain_delay`` > 0: ``readiness_path`` answers 503 from
      then on; every other request is served normally, and no token is cancelled.
    * The *trigger* comes at the end of ``drain_delay`` (at once without a drain, on SIGINT, or
      on a second signal during the drain): the listening sockets close (new connections are
      refused), the shutdown's token is cancelled, requests in flight get ``grace`` seconds,
      then phase 2 aborts the rest (answered 503).
    * A signal after the trigger forces phase 2 at once.
    * Signals that arrive together (SIGTERM from an orchestrator and SIGINT from a terminal,
      pending at the same moment) count as one: with SIGINT among them they trigger at once,
      and they do not also force phase 2.

    The report's :attr:`~trio_cancel.LandingReport.phases` give when each phase began, in
    seconds from the trigger. It returns within ``grace`` plus 1 s after the trigger (within
    1 s after a signal that forces phase 2), whatever the clients do: it owns its listening
    sockets and the connections it accepted, and in phase 2, once the forced requests have had
    0.3 s to send their 503, it closes the connections still open (a client that stops reading
    a large response holds Hypercorn's send, which no cancellation reaches).

    The app's own code shielded from cancellation is not bounded: a handler whose cleanup runs
    in ``with trio.CancelScope(shield=True):`` runs it to its end, and the function returns
    only then (Trio cannot leave a running task behind, and the report lists every request
    once it has ended). 1 s into phase 2, the requests still running are named in a warning
    on the ``trio_cancel.asgi`` logger. Bound such a cleanup in the app
    (``with trio.move_on_after(seconds, shield=True):``) so that ``drain_delay + grace + 1``
    plus its bound fits the orchestrator's budget.

    Args:
        app: The ASGI app.
        bind: Where to listen (``"127.0.0.1:8000"`` when neither this nor ``config`` says).
        config: A Hypercorn ``Config`` (TLS, access log, keep-alive, HTTP/2 settings, ...).
            It is copied, not changed; the copy's ``graceful_timeout`` is raised so that
            Hypercorn never cuts ``grace`` short.
        grace: Seconds the requests in flight at the trigger get before phase 2.
        drain_delay: Seconds between SIGTERM and the trigger (0: none).
        termination_budget: The seconds the orchestrator allows from SIGTERM to SIGKILL
            (Kubernetes' ``terminationGracePeriodSeconds``), to check the others against.
        install_signal_handlers: Whether SIGINT and SIGTERM drive the shutdown (call it from
            the main thread then); without them, cancel it from outside.

    Returns:
        The shutdown's :class:`~trio_cancel.LandingReport`: one row per request that was in
        flight at the trigger, with its :attr:`~trio_cancel.TaskLanding.detail`.

    Raises:
        ValueError: ``bind`` and a ``config`` with its own bind (one set on it, also to
            Hypercorn's default ``127.0.0.1:8000``) are both given;
            ``drain_delay + grace + 1`` exceeds ``termination_budget``; ``drain_delay`` is
            negative or not finite; and as :class:`CancelMiddleware` for its options.
        TypeError: ``config`` is not a Hypercorn ``Config``.

    Cancellation:
        A cancellation from outside stops the server and cancels every request at once, as
        for any nursery; the connections still open are closed.
    """
    from hypercorn.config import Config

    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be a hypercorn.config.Config, not {type(config).__name__}")
    grace = check_grace(grace)
    if isinstance(drain_delay, bool) or not isinstance(drain_delay, int | float):
        raise TypeError(
            f"drain_delay must be a number of seconds, not {type(drain_delay).__name__}"
        )
    if not math.isfinite(drain_delay) or drain_delay < 0:
        raise ValueError(
            f"drain_delay must be a finite number of seconds >= 0, not {drain_delay!r}"
        )
    if termination_budget is not None:
        budget = _check_positive(termination_budget, "termination_budget")
        if drain_delay + grace + 1 > budget:
            raise ValueError(
                f"drain_delay + grace + 1 s = {drain_delay + grace + 1:g} s does not fit the "
                f"termination budget of {budget:g} s: the orchestrator would kill the process "
                "before its requests landed"
            )
    if config is None:
        server_config = Config()
        server_config.accesslog = None
        server_config.errorlog = None
    else:
        if bind is not None and config_sets_bind(config):
            raise ValueError("give bind= or a config with its own bind, not both")
        server_config = copy.copy(config)
    server_config.bind = [bind] if bind is not None else list(server_config.bind)
    # Hypercorn's own graceful timeout must never cut the grace period short: phase 2 and
    # the closing of the connections still open end the landing, not Hypercorn.
    server_config.graceful_timeout = max(
        float(server_config.graceful_timeout), grace + _PHASE_TWO_ANSWER_TIME + 1.0
    )
    middleware_options: dict[str, Any] = {
        "timeout": timeout,
        "max_timeout": max_timeout,
        "timeout_status": timeout_status,
        "shutdown_status": shutdown_status,
        "retry_after": retry_after,
        "report_query": report_query,
        "readiness_path": readiness_path,
    }
    CancelMiddleware(app, **middleware_options)  # bad options: an error here, before serving
    return await _serve(
        app,
        server_config,
        grace,
        drain_delay,
        middleware_options,
        install_signal_handlers,
        task_status,
    )


# Seconds that the requests forced by phase 2 get to send their 503 before the connections
# still open are closed.
_PHASE_TWO_ANSWER_TIME = 0.3

# Seconds that the last answers get to go out once every request has landed.
_FLUSH_TIME = 0.1


async def _serve(
    app: Any,  # noqa: ANN401 - any ASGI app
    config: Any,  # noqa: ANN401 - a hypercorn.config.Config
    grace: float,
    drain_delay: float,
    middleware_options: dict[str, Any],
    install_signal_handlers: bool,
    task_status: trio.TaskStatus[str],
) -> LandingReport:
    """The body of :func:`serve_until_shutdown`: serve, wait for the trigger, land, stop."""
    connections = Connections()
    stop = trio.Event()
    with contextlib.ExitStack() as stack:
        receiver = None
        if install_signal_handlers:
            receiver = stack.enter_context(open_signal_batches((signal.SIGINT, signal.SIGTERM)))
        async with trio.open_nursery() as server_nursery:
            try:
                async with GracefulShutdown(grace) as shutdown:
                    wrapped = CancelMiddleware(app, shutdown=shutdown, **middleware_options)
                    if receiver is not None:
                        server_nursery.start_soon(
                            _watch_signals, receiver, shutdown, wrapped, drain_delay
                        )
                    binds = await server_nursery.start(
                        functools.partial(
                            serve_owning_connections,
                            wrapped,
                            config,
                            connections,
                            shutdown_trigger=stop.wait,
                            on_listeners_closed=functools.partial(
                                shutdown._mark_phase, "listener_closed"
                            ),
                        )
                    )
                    task_status.started(binds[0])
                    await shutdown.token.wait_cancelled()
                    stop.set()  # the listeners close: new connections are refused
                    report = await _land(shutdown, connections)
            finally:
                stop.set()
            # Every request has landed: the last answers go out, then what is open closes.
            with trio.move_on_after(_FLUSH_TIME):
                await connections.wait_empty()
            await connections.close_all()
            server_nursery.cancel_scope.cancel()  # the signal watcher
    return _with_exit_time(report, shutdown)


def _with_exit_time(report: LandingReport, shutdown: GracefulShutdown) -> LandingReport:
    """The report, with the phases the server recorded after it was made and its exit (phase
    2 as the report says: one that began after the landing did not happen)."""
    shutdown._mark_phase("exit_server")
    times = shutdown._phase_times
    trigger = times["trigger"]
    phases = {name: None if name not in times else times[name] - trigger for name in PHASES}
    phases["phase_two"] = report.phases["phase_two"]
    phases["exit"] = times["exit_server"] - trigger
    return LandingReport._create(
        report.tasks, report.reason, report.grace, report.ended_before, phases
    )


async def _watch_signals(
    receiver: SignalBatches,
    shutdown: GracefulShutdown,
    middleware: CancelMiddleware,
    drain_delay: float,
) -> None:
    """SIGTERM: drain for ``drain_delay``, then trigger; SIGINT, or a second signal during the
    drain: trigger at once; a signal after the trigger: phase 2 at once, unless every request
    has landed (the server is closing: nothing to force). Signals that arrive together (one
    batch) count as one: SIGINT and SIGTERM at once trigger (SIGINT is among them), and do
    not force."""
    drain_ends = math.inf
    first = ""
    while True:
        with trio.move_on_at(drain_ends) as timer:
            batch = await receiver.receive()
        if timer.cancelled_caught:  # the drain is over
            drain_ends = math.inf
            shutdown.trigger(f"signal {first}")
            continue
        name = signal_name(signal.SIGINT if signal.SIGINT in batch else batch[0])
        if shutdown.token.is_cancelled():
            if shutdown._landed():
                _log.info("%s: every request has landed, the server is closing", name)
            else:
                shutdown._force(f"forced by a second signal ({name})")
        elif drain_ends < math.inf or signal.SIGINT in batch or drain_delay == 0:
            drain_ends = math.inf
            shutdown.trigger(f"signal {first or name}")
        else:
            first = name
            drain_ends = trio.current_time() + drain_delay
            shutdown._mark_phase("drain")
            middleware.drain()
            _log.info("%s: draining for %g s (readiness answers 503)", name, drain_delay)


async def _land(shutdown: GracefulShutdown, connections: Connections) -> LandingReport:
    """``shutdown.wait()``, closing in phase 2 the connections that keep requests from
    landing, and naming in a warning the requests that still hold it 1 s into phase 2."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_close_in_phase_two, shutdown, connections)
        nursery.start_soon(_warn_if_held, shutdown)
        report = await shutdown.wait()
        nursery.cancel_scope.cancel()
    return report


# Seconds into phase 2 after which the requests still running are named in a warning: past
# the bound serve_until_shutdown keeps for everything but code shielded from cancellation.
_HELD_WARNING_TIME = 1.0
_HELD_NAMES_SHOWN = 10


async def _warn_if_held(shutdown: GracefulShutdown) -> None:
    """Trio cannot leave a running task behind: a request whose code is shielded from
    cancellation holds the exit until it ends. Say which ones, once."""
    await shutdown.wait_forcing()
    await trio.sleep(_HELD_WARNING_TIME)
    held = shutdown._running_names()
    if held:
        shown = ", ".join(held[:_HELD_NAMES_SHOWN])
        more = len(held) - _HELD_NAMES_SHOWN
        _log.warning(
            "serve_until_shutdown: %d request(s) still running %g s into phase 2, shielded "
            "from cancellation (a cleanup inside a shielded scope, say); the server returns "
            "when they end: %s%s",
            len(held),
            _HELD_WARNING_TIME,
            shown,
            f" and {more} more" if more > 0 else "",
        )


async def _close_in_phase_two(shutdown: GracefulShutdown, connections: Connections) -> None:
    await shutdown.wait_forcing()
    await trio.sleep(_PHASE_TWO_ANSWER_TIME)  # the forced requests answer 503 meanwhile
    if len(connections):
        _log.warning(
            "serve_until_shutdown: closed %d connection(s) still open %g s into phase 2",
            len(connections),
            _PHASE_TWO_ANSWER_TIME,
        )
        await connections.close_all()
