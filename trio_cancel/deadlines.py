"""Deadlines that follow a request from service to service, as Connect and gRPC carry them.

A caller's remaining time travels as a *relative* budget, never an absolute timestamp (the
two machines' clocks need not agree): ``Connect-Timeout-Ms`` (Connect, 1 to 10 digits of
milliseconds) or ``grpc-timeout`` (gRPC, 1 to 8 digits and a unit of ``H M S m u n``).

* Server side: :func:`parse_deadline_headers` reads them (``trio_cancel.asgi.CancelMiddleware``
  bounds the handler with the result);
* client side: :func:`propagate_deadline` / :func:`async_propagate_deadline` are httpx event
  hooks that send the caller's remaining Trio deadline::

      client = httpx.AsyncClient(event_hooks={"request": [async_propagate_deadline]})
      with trio.move_on_after(0.5):
          await client.get(url)            # sends Connect-Timeout-Ms: 479 (or so)

``import trio_cancel`` does not import this module; it needs no httpx import of its own.
"""

from __future__ import annotations

import contextvars
import math
import re
from typing import Any, final

import trio

__all__ = [
    "HOP_MARGIN_MS",
    "DeadlineHeaderError",
    "async_propagate_deadline",
    "parse_deadline_headers",
    "propagate_deadline",
    "remaining_ms",
]

_CONNECT = re.compile(r"[0-9]{1,10}")
_GRPC = re.compile(r"([0-9]{1,8})([HMSmun])")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


@final
class DeadlineHeaderError(ValueError):
    """A ``Connect-Timeout-Ms`` or ``grpc-timeout`` header that is not well formed."""


def parse_deadline_headers(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The caller's budget in seconds from ``Connect-Timeout-Ms`` (1 to 10 digits of
    milliseconds) or ``grpc-timeout`` (1 to 8 digits and one unit of ``H M S m u n``);
    the smaller if both are present; ``None`` if neither is.

    Raises:
        DeadlineHeaderError: A header is present but malformed (``abc``, empty, ``-5``,
            ``1.5``, ``" 300"``, 11 digits, ``5x``, ``S``...).
    """
    budget: float | None = None
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name == b"connect-timeout-ms":
            value = raw_value.decode("latin-1")
            if not _CONNECT.fullmatch(value):
                raise DeadlineHeaderError(f"malformed Connect-Timeout-Ms: {value!r}")
            seconds = int(value) / 1000
        elif name == b"grpc-timeout":
            value = raw_value.decode("latin-1")
            match = _GRPC.fullmatch(value)
            if match is None:
                raise DeadlineHeaderError(f"malformed grpc-timeout: {value!r}")
            seconds = int(match[1]) * _GRPC_UNITS[match[2]]
        else:
            continue
        budget = seconds if budget is None else min(budget, seconds)
    return budget


# The deadline of the request the current task is handling (set by CancelMiddleware, which
# enforces it through the request's token rather than a scope deadline, so that the handler's
# Cancelled carries the reason).
REQUEST_DEADLINE: contextvars.ContextVar[float] = contextvars.ContextVar(
    "trio_cancel.request_deadline", default=math.inf
)


def remaining_ms() -> int | None:
    """The current task's remaining time, in whole milliseconds (rounded down): until its
    effective Trio deadline, or the deadline of the request it handles under
    ``CancelMiddleware``, whichever comes first; ``None`` without either. Must be called from
    a Trio task."""
    deadline = min(trio.current_effective_deadline(), REQUEST_DEADLINE.get())
    if deadline == math.inf:
        return None
    if deadline == -math.inf:  # an enclosing scope is already cancelled
        return 0
    return max(0, math.floor((deadline - trio.current_time()) * 1000))


HOP_MARGIN_MS = 20
"""What the hooks keep back from the budget they send on: the callee then gives up a little
before its caller does (not after it, by the time the request spent in transit), so the
caller receives the callee's own ``deadline_exceeded`` answer instead of racing it."""


def propagate_deadline(request: Any) -> None:  # noqa: ANN401 - an httpx.Request
    """httpx request hook: send the caller's remaining deadline, less :data:`HOP_MARGIN_MS`,
    as ``Connect-Timeout-Ms``.

    No header when the caller has no deadline. When nothing remains, the request is not sent:
    :exc:`trio.TooSlowError` is raised instead. For a client used from the Trio thread; from
    any other thread there is no Trio deadline to send, and no header is added.
    """
    if not trio.lowlevel.in_trio_run():
        return
    remaining = remaining_ms()
    if remaining is None:
        return
    budget = remaining - HOP_MARGIN_MS
    if budget <= 0:
        raise trio.TooSlowError("no time left for this request: it was not sent")
    request.headers["Connect-Timeout-Ms"] = str(budget)


async def async_propagate_deadline(request: Any) -> None:  # noqa: ANN401, ASYNC910 - httpx hook
    """As :func:`propagate_deadline`, for ``httpx.AsyncClient``.

    Cancellation:
        Not a checkpoint (it only reads the deadline); the request itself is.
    """
    propagate_deadline(request)
