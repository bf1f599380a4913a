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
import functools
import json
import logging
import math
from typing import Any, final

import trio

from . import _hooks
from ._excgroups import raise_errors_of
from ._hypercorn_internals import Connections, serve_owning_connections
from ._outcome import Aborted, Failed, Outcome
from ._shutdown import GracefulShutdown, LandingReport
from ._token import CancellationToken, release_timer
from .deadlines import (
    REQUEST_DEADLINE,
    DeadlineHeaderError,
    RequestDeadline,
    parse_deadline_headers,
)

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
    deadlines and graceful shutdown (see the module docstring).

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

    Raises:
        ValueError: ``timeout``, ``max_timeout`` or ``retry_after`` is not a finite number
            > 0 (zero, negative, NaN, ``inf``, ``10**400``); a status is not from 400 to 599.
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

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        """Handle one ASGI call.

        Cancellation:
            A cancellation of the server's own task for this request (its shutdown) cancels
            the handler as well and propagates.
        """
        if scope.get("type") != "http":
            await self._app(scope, receive, send)  # lifespan, websocket: untouched
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
        self.deadline = math.inf
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

    async def _handle(self, token: CancellationToken) -> None:
        # The request's deadline, for outgoing calls (deadlines' hooks), set only while the
        # app runs: the app may run in the caller's own task (httpx.ASGITransport).
        reset = REQUEST_DEADLINE.set(self.cell) if self.cell is not None else None
        try:
            with token.cancel_scope():
                await self.mw._app(self.scope, self._app_receive, self._app_send)
        finally:
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
        if kind == "http.response.body" and not message.get("more_body", False):
            # The response is complete once this is sent: from now on only the middleware's
            # token (and the shutdown's phase 2) may cancel the app (a BackgroundTask runs).
            self._complete()
        elif kind == "http.response.start":
            self.started = True
        await self.send(message)

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
        body = json.dumps({"code": code, "message": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if retry:
            headers.append((b"retry-after", str(self.mw._retry_after).encode()))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


def shutdown_grace(shutdown: GracefulShutdown) -> float:
    """The shutdown's grace period (the bound of a shielded wait for a handler's cleanup)."""
    return shutdown._grace  # a sibling module's field, read only (no accessor yet)


def shutdown_forcing(shutdown: GracefulShutdown) -> bool:
    """Whether the shutdown's phase 2 has begun (by its grace period, ``force()`` or a second
    signal)."""
    return shutdown._phase_two_reason is not None  # read only (no accessor yet)


class _ResponseCutShortError(Exception):
    """Raised to the server when a response that had begun cannot be completed."""


async def serve_until_shutdown(
    app: Any,  # noqa: ANN401 - any ASGI app
    *,
    bind: str = "127.0.0.1:8000",
    grace: float = 10.0,
    request_timeout: float | None = None,
    install_signal_handlers: bool = True,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> LandingReport:
    """Serve ``app`` with Hypercorn's Trio worker until a shutdown, and land every request.

    The ready way to run a server under :class:`~trio_cancel.GracefulShutdown`: the app is
    wrapped in :class:`CancelMiddleware` (``request_timeout`` is its ``timeout``); SIGINT/SIGTERM
    trigger the shutdown (a second one forces it). At the trigger, new requests get 503 at
    once while requests in flight have ``grace`` seconds to finish; then the server stops
    listening and the report is returned. ``task_status.started()`` is called with the
    server's URL (``nursery.start`` returns it). Needs Hypercorn (``pip install
    hypercorn[trio]``).

    It returns within ``grace`` plus 1 s after the trigger (within 1 s after a signal that
    forces phase 2), whatever the clients do: it owns its listening sockets and the
    connections it accepted, and in phase 2, once the forced requests have had 0.3 s to
    send their 503, it closes the connections still open (a client that stops reading a
    large response holds Hypercorn's send, which no cancellation reaches).

    Returns:
        The shutdown's :class:`~trio_cancel.LandingReport`: one row per request that was in
        flight at the trigger (``"GET /path"``).

    Cancellation:
        A cancellation from outside stops the server and cancels every request at once, as
        for any nursery; the connections still open are closed.
    """
    from hypercorn.config import Config

    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1  # every request has landed by the time the server stops
    return await _serve(app, config, grace, request_timeout, install_signal_handlers, task_status)


# Seconds that the requests forced by phase 2 get to send their 503 before the connections
# still open are closed.
_PHASE_TWO_ANSWER_TIME = 0.3

_PHASE_TWO_POLL = 0.05  # seconds between two looks for phase 2


async def _serve(
    app: Any,  # noqa: ANN401 - any ASGI app
    config: Any,  # noqa: ANN401 - a hypercorn.config.Config
    grace: float,
    request_timeout: float | None,
    install_signal_handlers: bool,
    task_status: trio.TaskStatus[str],
) -> LandingReport:
    """The body of :func:`serve_until_shutdown`: serve, wait for the trigger, land, stop."""
    connections = Connections()
    stop = trio.Event()
    async with trio.open_nursery() as server_nursery:
        try:
            async with GracefulShutdown(grace) as shutdown:
                if install_signal_handlers:
                    shutdown.install_signal_handlers()
                wrapped = CancelMiddleware(app, timeout=request_timeout, shutdown=shutdown)
                binds = await server_nursery.start(
                    functools.partial(
                        serve_owning_connections,
                        wrapped,
                        config,
                        connections,
                        shutdown_trigger=stop.wait,
                    )
                )
                task_status.started(binds[0])
                await shutdown.token.wait_cancelled()
                report = await _land(shutdown, connections)
        finally:
            stop.set()
    return report


async def _land(shutdown: GracefulShutdown, connections: Connections) -> LandingReport:
    """``shutdown.wait()``, closing in phase 2 the connections that keep requests from
    landing."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_close_in_phase_two, shutdown, connections)
        report = await shutdown.wait()
        nursery.cancel_scope.cancel()
    return report


async def _close_in_phase_two(shutdown: GracefulShutdown, connections: Connections) -> None:
    # GracefulShutdown has no event for phase 2 (yet): look for it every 50 ms.
    while not shutdown_forcing(shutdown):  # noqa: ASYNC110 - no event to wait for
        await trio.sleep(_PHASE_TWO_POLL)
    await trio.sleep(_PHASE_TWO_ANSWER_TIME)  # the forced requests answer 503 meanwhile
    if len(connections):
        _log.warning(
            "serve_until_shutdown: closed %d connection(s) still open %g s into phase 2",
            len(connections),
            _PHASE_TWO_ANSWER_TIME,
        )
        await connections.close_all()
