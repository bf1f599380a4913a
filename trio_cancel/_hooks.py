"""Internal hook point between the core and :mod:`trio_cancel.otel`.

The core never imports OpenTelemetry. At each place where the library cancels something, it
tells this module *why* (the source: ``token``, ``abort``, ``shutdown``, ...), and this module
keeps that next to the ``CancelReason`` object Trio stores on the cancelled scope (the same
object is shared by every scope the cancellation reaches, so one record answers for all of
them). Trio itself reports every one of these as ``"explicit"``: this record is how the
library's own sources are told apart, never by reading strings.

Nothing is recorded until :data:`active` is true (``trio_cancel.otel`` sets it when it is
imported): each call site costs one module-attribute check per cancel call, not per scope.

The optional callables (``task_start``, ``task_end``, ``shutdown_event``, ``request_cut``) are
``None`` unless ``trio_cancel.otel.instrument()`` set them; the core calls them only when set.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import TYPE_CHECKING, Any

import trio

from ._trio_internals import innermost_cancelled_scope, scope_reason_object

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._task import TaskHandle
    from ._token import CancellationToken

# Whether sources are recorded (set by trio_cancel.otel at import).
active = False

# CancelReason object (Trio's, shared by the scopes one cancellation reached) ->
# (source, trio.current_time() of the cancel call or None outside a run).
# (Trio's CancelReason compares by value and is not hashable: keyed by id, with a weak
# reference that removes the entry when the reason goes.)
_sources: dict[int, tuple[weakref.ref[Any], str, float | None]] = {}
# Token -> the source its own cancel_after timer stands for (the middleware's time limits).
_timer_sources: weakref.WeakKeyDictionary[CancellationToken, tuple[str, str]] = (
    weakref.WeakKeyDictionary()
)
# The source announced by a call site for the next cancel() of that token.
_pending: tuple[CancellationToken, str] | None = None
# Token on which cancel() itself was called -> its source (one entry per cancel call).
token_sources: weakref.WeakKeyDictionary[CancellationToken, str] = weakref.WeakKeyDictionary()

_TIMER_SOURCES = {"request timeout": "request_timeout", "caller deadline": "caller_deadline"}

# Set by trio_cancel.otel.instrument(); the core calls them only when not None.
task_start: Callable[[TaskHandle[Any]], None] | None = None
task_end: Callable[[TaskHandle[Any]], None] | None = None
shutdown_event: Callable[[Any, str, Any], None] | None = None
request_cut: Callable[[Any, object], None] | None = None


def shutdown(sd: object, kind: str, arg: object) -> None:
    """A ``GracefulShutdown`` event (open, trigger, phase 2, exit, landed)."""
    hook = shutdown_event
    if hook is not None:
        hook(sd, kind, arg)


def _now() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:
        return None


def _reason_of(scope: trio.CancelScope) -> object | None:
    return scope_reason_object(scope)


def will_cancel(token: CancellationToken, source: str) -> None:
    """A call site is about to call ``token.cancel()`` for ``source``."""
    global _pending
    if active:
        _pending = (token, source)


def timer_source(token: CancellationToken, why: str) -> None:
    """``token``'s ``cancel_after`` timer (armed with reason ``why``) stands for a source."""
    if active:
        source = _TIMER_SOURCES.get(why)
        if source is not None:
            _timer_sources[token] = (source, why)


def token_cancelled(token: CancellationToken, scopes: list[trio.CancelScope]) -> None:
    """``token.cancel()`` just cancelled ``scopes`` (its subtree's bound scopes)."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None and pending[0] is token:
        source = pending[1]
    else:
        # The timer's source only for the timer's own cancel (it cancels with its reason): a
        # token cancelled by hand while its timer is armed is an intentional cancellation.
        timer = _timer_sources.get(token)
        source = timer[0] if timer is not None and token.reason == timer[1] else "token"
    token_sources[token] = source
    record_scopes(scopes, source)


def bound_late(token: CancellationToken, scope: trio.CancelScope) -> None:
    """``scope`` was bound to ``token`` after it had been cancelled (and so was cancelled at
    once): the source of the token's own cancel() if known, else ``token``."""
    if active:
        record_scopes((scope,), token_sources.get(token, "token"))


def record_scopes(scopes: Iterable[trio.CancelScope], source: str) -> None:
    """Record ``source`` for the reasons the library just gave ``scopes``. Reasons already
    recorded keep their first source (the scope was cancelled before, by someone else)."""
    if not active:
        return
    now = _now()
    last: object = None
    for scope in scopes:
        reason = _reason_of(scope)
        if reason is None or reason is last:
            continue
        last = reason
        if lookup(reason) is None:
            _store(reason, source, now)


def _store(reason: object, source: str, now: float | None) -> None:
    key = id(reason)

    def gone(ref: weakref.ref[Any], key: int = key) -> None:
        entry = _sources.get(key)
        if entry is not None and entry[0] is ref:
            del _sources[key]

    with contextlib.suppress(TypeError):  # not weak-referenceable: cannot be told apart
        _sources[key] = (weakref.ref(reason, gone), source, now)


def record_scope(scope: trio.CancelScope, source: str) -> None:
    """As :func:`record_scopes` for one scope."""
    if active:
        record_scopes((scope,), source)


def forced(sd: object, handle: TaskHandle[Any]) -> None:
    """The shutdown's phase 2 just aborted ``handle``'s task: its own abort reason (not a
    reason it had before, from a token) stands for ``shutdown_forced``."""
    shutdown(sd, "forced", handle)
    if not active:
        return
    reason = _reason_of(handle._scope)
    if reason is not None:
        known = lookup(reason)
        if known is None or known[0] == "abort":
            _store(reason, "shutdown_forced", _now() if known is None else known[1])


def lookup(reason: object) -> tuple[str, float | None] | None:
    """The recorded (source, time) of a ``CancelReason`` object, if the library cancelled it."""
    if reason is None:
        return None
    entry = _sources.get(id(reason))
    if entry is None or entry[0]() is not reason:
        return None
    return entry[1], entry[2]


def current_reason() -> object | None:
    """The ``CancelReason`` of the innermost cancel status of the current task (what a
    ``Cancelled`` raised here carries), or None when it is not cancelled."""
    try:
        task = trio.lowlevel.current_task()
    except RuntimeError:
        return None
    scope = innermost_cancelled_scope(task)
    return None if scope is None else _reason_of(scope)


def scope_reason(scope: trio.CancelScope) -> object | None:
    """The ``CancelReason`` Trio keeps on ``scope`` (None if it was not cancelled)."""
    return _reason_of(scope)
