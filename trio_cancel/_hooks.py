"""Internal hook point between the core and :mod:`trio_cancel.otel`.

The core never imports OpenTelemetry. At each place where the library cancels something, it
tells this module *why* (the source: ``token``, ``abort``, ``shutdown``, ...), and this module
keeps that next to the ``CancelReason`` object that cancel created (Trio stores it on the
cancelled scope, and copies it into every scope inside that the cancellation reaches, so one
record answers for all of them). Trio itself reports every one of these as ``"explicit"``:
this record is how the library's own sources are told apart, never by reading strings.

Only a reason object the library's own cancel *created* is recorded. A scope that already held
a reason when the library cancelled it keeps that reason (Trio's first-reason-stays rule): it
was inherited from an enclosing scope that plain Trio cancelled (a ``scope.cancel()``, a
deadline, a failing sibling), or set by an earlier cancel, and that cancellation, not the
library's, is what the scope's tasks see. Recording the library's source for it would
attribute the plain cancellation to the library.

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
# The source announced by a call site for the next cancel() of that token (weakly: a token
# already cancelled never consumes it, and it must not be kept alive by it).
_pending: tuple[weakref.ref[CancellationToken], str] | None = None
# (reason, source_task) of each recorded reason object -> it (the latest recorded): which
# library cancel a ``Cancelled`` came from when it is not the current task's own reason (a
# Cancelled carries those fields, not the object). Entries go with their reason objects.
_by_fields: dict[tuple[object, object], weakref.ref[Any]] = {}
# Every token a cancel reached (the one cancel() was called on and its subtree) keeps the
# cancel's source in its ``_source`` slot: a cancelled token forgets its parents, and a scope
# bound to it later, a child born cancelled from it, or the request it stands for, needs it.
# The reason object the latest cancel_scope() created, if it created one (forced() relabels it).
_last_created: weakref.ref[Any] | None = None

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
        _pending = (weakref.ref(token), source)


def timer_source(token: CancellationToken, why: str) -> None:
    """``token``'s ``cancel_after`` timer (armed with reason ``why``) stands for a source."""
    if active:
        source = _TIMER_SOURCES.get(why)
        if source is not None:
            _timer_sources[token] = (source, why)


def token_cancelled(
    token: CancellationToken, created: Iterable[object], subtree: Iterable[CancellationToken]
) -> None:
    """``token.cancel()`` just cancelled its subtree's bound scopes, creating the reason
    objects ``created`` (what ``cancel_scopes`` returned); ``subtree`` is the tokens it marked
    (``token`` first): each keeps the source (in a slot of its own: one attribute store per
    token, about 0.1 % of a mass cancel's time)."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None and pending[0]() is token:
        source = pending[1]
    else:
        # The timer's source only for the timer's own cancel (it cancels with its reason): a
        # token cancelled by hand while its timer is armed is an intentional cancellation.
        timer = _timer_sources.get(token)
        source = timer[0] if timer is not None and token.reason == timer[1] else "token"
    for node in subtree:
        node._source = source
    record_created(created, source)


def born_cancelled(child: CancellationToken, parent: CancellationToken) -> None:
    """``child`` was born cancelled from the cancelled ``parent``: it keeps the parent's
    source (it has no parent once born)."""
    if active:
        child._source = parent._source


def bound_late(token: CancellationToken, scope: trio.CancelScope) -> None:
    """``scope`` was bound to ``token`` after it had been cancelled, and so was just cancelled
    (the core binds only new scopes, not yet entered: the reason it holds is that cancel's):
    the source of the cancel that cancelled the token (its own or an ancestor's) if known,
    else ``token``."""
    if active:
        reason = _reason_of(scope)
        if reason is not None:
            record_created((reason,), token._source or "token")


def record_created(created: Iterable[object], source: str) -> None:
    """Record ``source`` for the reason objects a cancel of the library just created (what
    ``cancel_scopes`` returned). One already recorded keeps its first source."""
    if not active:
        return
    now = _now()
    for reason in created:
        if lookup(reason) is None:
            _store(reason, source, now)


@trio.lowlevel.enable_ki_protection
def cancel_scope(scope: trio.CancelScope, reason: str | None, source: str) -> None:
    """``scope.cancel(reason=reason)``, recording ``source`` for it if this cancel gave the
    scope its reason (not if the scope already held one: see the module's docstring)."""
    global _last_created
    _last_created = None
    had = _reason_of(scope)
    scope.cancel(reason=reason)
    got = _reason_of(scope)
    if got is not None and got is not had:
        with contextlib.suppress(TypeError):
            _last_created = weakref.ref(got)
        record_created((got,), source)


def _store(reason: object, source: str, now: float | None) -> None:
    key = id(reason)
    fields = (getattr(reason, "reason", None), getattr(reason, "source_task", None))

    def gone(ref: weakref.ref[Any], key: int = key) -> None:
        entry = _sources.get(key)
        if entry is not None and entry[0] is ref:
            del _sources[key]
        with contextlib.suppress(TypeError):
            if _by_fields.get(fields) is ref:
                del _by_fields[fields]

    try:
        ref = weakref.ref(reason, gone)
    except TypeError:  # not weak-referenceable: cannot be told apart
        return
    _sources[key] = (ref, source, now)
    with contextlib.suppress(TypeError):  # an unhashable reason: found by identity only
        _by_fields[fields] = ref


def forced(sd: object, handle: TaskHandle[Any]) -> None:
    """The shutdown's phase 2 just aborted ``handle``'s task: the reason that abort created
    (not one the task's scope held before, from a token or an enclosing plain cancel) stands
    for ``shutdown_forced``."""
    shutdown(sd, "forced", handle)
    _relabel(handle, "shutdown_forced")


def aborted_for(handle: TaskHandle[Any], token: CancellationToken) -> None:
    """``handle.abort()`` was just called because ``token`` was cancelled (an ``on_cancel``
    callback, the middleware's): the reason that abort created stands for the token's source
    (its cancel's: ``request_timeout``, ``client_disconnect``, ...), not for ``abort``."""
    _relabel(handle, token._source or "token")


def _relabel(handle: TaskHandle[Any], source: str) -> None:
    """The reason the ``handle.abort()`` just made created (if it created one) stands for
    ``source``; it keeps the time of the cancel call."""
    global _last_created
    created, _last_created = _last_created, None
    if not active or created is None:
        return
    reason = _reason_of(handle._scope)
    if reason is not None and reason is created():
        known = lookup(reason)
        _store(reason, source, _now() if known is None else known[1])


def lookup(reason: object) -> tuple[str, float | None] | None:
    """The recorded (source, time) of a ``CancelReason`` object, if the library cancelled it."""
    if reason is None:
        return None
    entry = _sources.get(id(reason))
    if entry is None or entry[0]() is not reason:
        return None
    return entry[1], entry[2]


def explicit_source(exc: BaseException, current: object | None) -> str | None:
    """The library's source for the ``Cancelled`` ``exc`` (Trio source ``"explicit"``), caught
    in a task whose innermost cancel status holds the reason object ``current``; None when the
    library did not cancel it.

    A ``Cancelled`` carries its reason's fields (``reason``, ``source_task``), not the object,
    so the fields are all there is to match. When ``current`` has those fields, it is taken
    as the one. Otherwise the ``Cancelled`` came from another cancellation, of a scope since
    left (say a token's scope inside a scope plain Trio cancelled afterwards): the latest
    library record with those fields, if any.

    The limit: two cancels with equal fields (the same reason, or none, from the same task)
    cannot be told apart once the raised one's scope has been left. The surrounding scope's
    reason, if it has those fields, is taken for it; or a library record with those fields
    (of another, still live cancellation) names a plain Trio cancel as the library's.
    """
    fields = (getattr(exc, "reason", None), getattr(exc, "source_task", None))
    if (
        current is not None
        and (
            getattr(current, "reason", None),
            getattr(current, "source_task", None),
        )
        == fields
    ):
        known = lookup(current)
        return None if known is None else known[0]
    try:
        ref = _by_fields.get(fields)
    except TypeError:
        return None
    obj = None if ref is None else ref()
    known = lookup(obj)
    return None if known is None else known[0]


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
