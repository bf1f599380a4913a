"""Every use of Hypercorn's private API in trio_cancel, and nowhere else.

:func:`~trio_cancel.asgi.serve_until_shutdown` promises to return within its grace period plus
1 s whatever the clients do. Hypercorn's Trio worker sends with its cancel scope shielded, so a
client that stops reading a large answer keeps a request's task (and so the shutdown's landing)
waiting for ever, and no cancellation reaches it: only closing the connection does. The public
``hypercorn.trio.serve`` never shows its listeners or the streams it accepted; so the library
runs Hypercorn's own pieces on listeners it owns, and keeps the streams it accepted, to close
those still open in phase 2. Each use is looked up once, at import, and has a public fallback.
The table, one row per use (checked on: Hypercorn 0.18.0 on Trio 0.35.0, Python 3.11)::

  1  Serving on owned listeners, serve_owning_connections()             version-gated
     used      hypercorn.trio.tcp_server.TCPServer(app, config, context, state, stream);
               hypercorn.trio.worker_context.WorkerContext(max_requests) and its
               .terminate / .terminated events; hypercorn.trio.lifespan.Lifespan(app,
               config, state) with .handle_lifespan / .wait_for_startup /
               .wait_for_shutdown; hypercorn.trio.statsd.StatsdLogger with
               Config.set_statsd_logger_class; hypercorn.utils.wrap_app(app,
               wsgi_max_body_size, mode), hypercorn.utils.repr_socket_addr;
               hypercorn.typing.ConnectionState (what hypercorn.trio.run.worker_serve does,
               less QUIC)
     why       the accepted streams, to close those a shielded send holds (a client that
               stops reading); the listening sockets, to close them at the end
     fallback  hypercorn.trio.serve: the same server, but a client that stops reading can
               hold the shutdown for ever (a warning is logged at the start)
     forced by tests/test_asgi.py::test_serve_until_shutdown_public_fallback

  2  A bind set explicitly, config_sets_bind()                          READ
     used      Config._bind (the class attribute holds the default; the bind setter, and so
               from_mapping / from_toml / from_object, writes it on the instance)
     why       a config whose bind was set to Hypercorn's default ("127.0.0.1:8000") has a
               bind of its own too: serve_until_shutdown refuses it with bind=
     fallback  a bind that differs from a fresh Config()'s: one set to the default is not
               seen, and bind= wins over it
     forced by tests/test_serve.py::test_a_config_bind_equal_to_the_default_public_fallback

Row 1 is enabled only when Hypercorn's version is within :data:`CHECKED_HYPERCORN` and every
name above imports, row 2 when ``Config`` has the layout it reads (a ``bind`` property over a
class-level ``_bind`` list); otherwise (or with ``TRIO_CANCEL_HYPERCORN_INTERNALS=off`` in the
environment) the public fallback serves.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import re
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_log = logging.getLogger("trio_cancel.asgi")

CHECKED_HYPERCORN = ((0, 18), (0, 18))
"""The first and last Hypercorn minor versions the private use was tested on (inclusive)."""


def _hypercorn_version() -> tuple[int, int] | None:
    try:
        version = importlib.metadata.version("hypercorn")
    except importlib.metadata.PackageNotFoundError:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None


def _load() -> dict[str, Any] | None:
    """The private names of row 1, or ``None`` if any is missing."""
    try:
        from hypercorn.trio.lifespan import Lifespan
        from hypercorn.trio.statsd import StatsdLogger
        from hypercorn.trio.tcp_server import TCPServer
        from hypercorn.trio.worker_context import WorkerContext
        from hypercorn.typing import ConnectionState
        from hypercorn.utils import repr_socket_addr, wrap_app
    except ImportError:
        return None
    return {
        "Lifespan": Lifespan,
        "StatsdLogger": StatsdLogger,
        "TCPServer": TCPServer,
        "WorkerContext": WorkerContext,
        "ConnectionState": ConnectionState,
        "repr_socket_addr": repr_socket_addr,
        "wrap_app": wrap_app,
    }


HYPERCORN_VERSION = _hypercorn_version()
_PRIVATE = _load()


def _internals_off() -> bool:
    return os.environ.get("TRIO_CANCEL_HYPERCORN_INTERNALS", "").lower() in ("off", "0", "no")


HYPERCORN_DEFAULT_BIND = ("127.0.0.1:8000",)
"""Hypercorn's default bind (the class-level default of ``Config``)."""


def config_sets_bind(config: Any) -> bool:  # noqa: ANN401 - a hypercorn.config.Config
    """Whether a Hypercorn ``Config`` has a bind of its own (row 2): one set on it, also to
    Hypercorn's default, or a default list changed in place."""
    from hypercorn.config import Config

    layout_known = isinstance(vars(Config).get("bind"), property) and isinstance(
        vars(Config).get("_bind"), list
    )
    if layout_known and not _internals_off():
        return "_bind" in vars(config) or tuple(config.bind) != HYPERCORN_DEFAULT_BIND
    return list(config.bind) != list(Config().bind)


def owning_usable() -> bool:
    """Whether :func:`serve_owning_connections` may use Hypercorn's private pieces here."""
    if _internals_off():
        return False
    return (
        _PRIVATE is not None
        and HYPERCORN_VERSION is not None
        and CHECKED_HYPERCORN[0] <= HYPERCORN_VERSION <= CHECKED_HYPERCORN[1]
    )


class Connections:
    """The connections a server accepted and has not closed yet (owned: it can close them)."""

    def __init__(self) -> None:
        self._open: set[trio.abc.Stream] = set()
        self._empty = trio.Event()
        self._empty.set()
        self.closed_by_force = 0

    def __len__(self) -> int:
        return len(self._open)

    def add(self, stream: trio.abc.Stream) -> None:
        self._open.add(stream)
        if self._empty.is_set():
            self._empty = trio.Event()

    def discard(self, stream: trio.abc.Stream) -> None:
        self._open.discard(stream)
        if not self._open:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Wait until no connection is open."""
        await self._empty.wait()

    async def close_all(self) -> int:
        """Close every open connection at once, whatever its tasks are doing: a task blocked
        sending to it (shielded or not) gets ``trio.ClosedResourceError``. Returns how many
        were closed.

        Cancellation:
            Always a checkpoint; the closing itself is not interrupted.
        """
        streams = list(self._open)
        with trio.CancelScope(shield=True):
            for stream in streams:
                await trio.aclose_forcefully(stream)
                self.discard(stream)
        self.closed_by_force += len(streams)
        await trio.lowlevel.checkpoint()
        return len(streams)


async def serve_owning_connections(
    app: Any,  # noqa: ANN401 - any ASGI app
    config: Any,  # noqa: ANN401 - a hypercorn.config.Config
    connections: Connections,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    on_listeners_closed: Callable[[], object] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` as ``hypercorn.trio.serve`` does, on listeners owned here, with every
    accepted stream in ``connections`` while it is open; after ``shutdown_trigger`` returns and
    ``config.graceful_timeout`` has passed, the connections still open are closed (a shielded
    send cannot hold the server). The listening sockets close as soon as ``shutdown_trigger``
    returns (new connections are refused), then ``on_listeners_closed()`` is called. Falls
    back to ``hypercorn.trio.serve`` when :func:`owning_usable` is false.

    Cancellation:
        As ``hypercorn.trio.serve``: a cancellation stops the server; the listeners and the
        connections still open are closed.
    """
    if not owning_usable():
        from hypercorn.trio import serve

        _log.warning(
            "Hypercorn %s is not one trio_cancel has checked: serving with hypercorn.trio.serve, "
            "where a client that stops reading can hold the shutdown",
            ".".join(map(str, HYPERCORN_VERSION or ("?",))),
        )
        await serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)
        return
    private = _PRIVATE
    assert private is not None
    config.set_statsd_logger_class(private["StatsdLogger"])
    wrapped = private["wrap_app"](app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = private["Lifespan"](wrapped, config, lifespan_state)
    context = private["WorkerContext"](None)

    async def handle(stream: trio.abc.Stream) -> None:
        connections.add(stream)
        try:
            await private["TCPServer"](
                wrapped, config, context, private["ConnectionState"](lifespan_state.copy()), stream
            )
        finally:
            connections.discard(stream)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        sockets = config.create_sockets()
        listeners: list[trio.abc.Listener[Any]] = []
        binds: list[str] = []
        try:
            async with trio.open_nursery() as server_nursery:
                ssl_context = config.create_ssl_context()
                for sock in sockets.secure_sockets:
                    sock.listen(config.backlog)
                    listeners.append(
                        trio.SSLListener(
                            trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                            ssl_context,
                            https_compatible=True,
                        )
                    )
                    binds.append(
                        f"https://{private['repr_socket_addr'](sock.family, sock.getsockname())}"
                    )
                for sock in sockets.insecure_sockets:
                    sock.listen(config.backlog)
                    listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                    binds.append(
                        f"http://{private['repr_socket_addr'](sock.family, sock.getsockname())}"
                    )
                for sock in sockets.quic_sockets:
                    sock.close()
                    _log.warning("serve_until_shutdown: QUIC (HTTP/3) is not served")
                task_status.started(binds)
                try:
                    async with trio.open_nursery() as accept_nursery:
                        accept_nursery.start_soon(
                            functools.partial(
                                trio.serve_listeners,
                                handle,
                                listeners,
                                handler_nursery=server_nursery,
                            )
                        )
                        await shutdown_trigger()  # (no max_requests: no stop of its own)
                        accept_nursery.cancel_scope.cancel()
                    with trio.CancelScope(shield=True):  # new connections are refused now
                        for listener in listeners:
                            await trio.aclose_forcefully(listener)
                    if on_listeners_closed is not None:
                        on_listeners_closed()
                finally:
                    await context.terminated.set()  # noqa: ASYNC102 - sets an event, never blocks
                    grace = config.graceful_timeout
                    server_nursery.cancel_scope.deadline = trio.current_time() + grace
                    server_nursery.start_soon(_close_after, connections, grace)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
                await connections.close_all()
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def _close_after(connections: Connections, seconds: float) -> None:
    """Give the connections ``seconds`` to end on their own, then close those still open."""
    with trio.CancelScope(shield=True):
        with trio.move_on_after(seconds):
            await connections.wait_empty()
        await connections.close_all()
