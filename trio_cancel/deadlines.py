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
    "format_connect_timeout",
    "format_grpc_timeout",
    "parse_deadline_headers",
    "propagate_deadline",
    "remaining_ms",
]

_CONNECT = re.compile(r"[0-9]{1,10}")
_GRPC = re.compile(r"([0-9]{1,8})([HMSmun])")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_CONNECT_MAX_MS = 9_999_999_999  # 10 digits
_GRPC_MAX = 99_999_999  # 8 digits
# gRPC units from the finest to the coarsest, as integer multiples of a nanosecond.
_GRPC_NANOS = (("n", 1), ("u", 10**3), ("m", 10**6), ("S", 10**9), ("M", 60 * 10**9))


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


class RequestDeadline:
    """The deadline of one request under ``CancelMiddleware``: a mutable cell, shared by every
    task of the request (child tasks copy the context, not the cell), so that the middleware
    can lift it for all of them once the response is complete."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at: float = at


# The deadline of the request the current task is handling (set by CancelMiddleware, which
# enforces it through the request's token rather than a scope deadline, so that the handler's
# Cancelled carries the reason). Set only for the time the app runs, then reset: the request's
# deadline never leaks into the caller's context.
REQUEST_DEADLINE: contextvars.ContextVar[RequestDeadline | None] = contextvars.ContextVar(
    "trio_cancel.request_deadline", default=None
)


def remaining_ms() -> int | None:
    """The current task's remaining time, in whole milliseconds (rounded down): until its
    effective Trio deadline, or the deadline of the request it handles under
    ``CancelMiddleware`` (until that request's response is complete), whichever comes first;
    ``None`` without either. Must be called from a Trio task."""
    deadline = _current_deadline()
    if deadline == math.inf:
        return None
    if deadline == -math.inf:  # an enclosing scope is already cancelled
        return 0
    return max(0, math.floor((deadline - trio.current_time()) * 1000))


def _current_deadline() -> float:
    request = REQUEST_DEADLINE.get()
    deadline = trio.current_effective_deadline()
    return deadline if request is None else min(deadline, request.at)


def format_connect_timeout(seconds: float) -> str:
    """A budget as a ``Connect-Timeout-Ms`` value: whole milliseconds, rounded down (never
    more than the budget), at most 10 digits (``9999999999``, about 115 days: a longer budget
    is sent as that).

    Raises:
        ValueError: ``seconds`` is negative or NaN.
    """
    _check_budget(seconds)
    if seconds >= _CONNECT_MAX_MS / 1000:
        return str(_CONNECT_MAX_MS)
    return str(min(_CONNECT_MAX_MS, math.floor(seconds * 1000)))


def format_grpc_timeout(seconds: float) -> str:
    """A budget as a ``grpc-timeout`` value: at most 8 digits with the smallest unit that
    fits (the most precise), rounded down (never more than the budget); ``99999999H`` for a
    longer budget than that holds (about 11,400 years).

    Raises:
        ValueError: ``seconds`` is negative or NaN.
    """
    _check_budget(seconds)
    if seconds >= _GRPC_MAX * 3600:
        return f"{_GRPC_MAX}H"
    nanos = math.floor(seconds * 1e9)
    for unit, size in _GRPC_NANOS:
        if nanos // size <= _GRPC_MAX:
            return f"{nanos // size}{unit}"
    return f"{nanos // (3600 * 10**9)}H"


def _check_budget(seconds: float) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"a budget is a number of seconds, not {type(seconds).__name__}")
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"a budget must be >= 0 seconds, not {seconds!r}")


HOP_MARGIN_MS = 20
"""What the hooks keep back from the budget they send on, in milliseconds: the callee then
gives up a little before its caller does (not after it, by the time the request spent in
transit), so the caller receives the callee's own ``deadline_exceeded`` answer instead of
racing it. A call with no more than this left is not sent (see the hooks). A constant: the
hooks read it when they run, so a program may assign another value at startup."""


def propagate_deadline(request: Any) -> None:  # noqa: ANN401 - an httpx.Request
    """httpx request hook: send the caller's remaining deadline, less :data:`HOP_MARGIN_MS`,
    as ``Connect-Timeout-Ms`` (at most 10 digits: a longer budget is sent as the largest value
    the header holds, about 115 days).

    No header when the caller has no deadline. When no more than the margin remains, the
    request is not sent: :exc:`trio.TooSlowError` is raised instead (a sync hook cannot wait;
    :func:`async_propagate_deadline` waits for the caller's own deadline instead). For a
    client used from the Trio thread; from any other thread there is no Trio deadline to send,
    and no header is added.
    """
    if not trio.lowlevel.in_trio_run():
        return
    budget = _budget_ms()
    if budget is None:
        return
    if budget <= 0:
        raise trio.TooSlowError("no time left for this request: it was not sent")
    request.headers["Connect-Timeout-Ms"] = str(min(budget, _CONNECT_MAX_MS))


def _budget_ms() -> int | None:
    remaining = remaining_ms()
    return None if remaining is None else remaining - HOP_MARGIN_MS


async def async_propagate_deadline(request: Any) -> None:  # noqa: ANN401, ASYNC910 - httpx hook
    """As :func:`propagate_deadline`, for ``httpx.AsyncClient``, except when no more than the
    margin remains: then the request is not sent, and the hook waits for the caller's
    deadline, so that the caller's own scope ends the call (``trio.move_on_after(0.015)``
    around a call moves on, as it would without the hook).

    Cancellation:
        Not a checkpoint when it sends the header (it only reads the deadline; the request
        itself is). With no time left it waits until the caller's deadline, where the
        caller's scope cancels it (nothing was sent). If the deadline passes and nothing
        cancels the call (the deadline of a request whose own scope does not enforce it), it
        raises :exc:`trio.TooSlowError`.
    """
    if not trio.lowlevel.in_trio_run():
        return  # noqa: ASYNC910 - an httpx hook: the request is the checkpoint
    budget = _budget_ms()
    if budget is None:
        return  # noqa: ASYNC910
    if budget <= 0:
        # Not sent. Wait for the caller's own deadline, where its scope fires; raising here
        # would escape a move_on_after that has only a few milliseconds left.
        await trio.sleep_until(_current_deadline())
        raise trio.TooSlowError("no time left for this request: it was not sent")
    request.headers["Connect-Timeout-Ms"] = str(min(budget, _CONNECT_MAX_MS))
