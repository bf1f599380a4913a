"""Cancellation in OpenTelemetry traces and metrics (optional: ``pip install trio_cancel[otel]``).

``import trio_cancel.otel as tc_otel``. Needs ``opentelemetry-api`` only; without a configured
SDK every call here is a cheap no-op (OpenTelemetry's own non-recording spans and instruments).

* :func:`span` is a drop-in for ``tracer.start_as_current_span`` that marks a span ended by a
  cancellation (OpenTelemetry's own handles only ``Exception``: a span left by
  :exc:`trio.Cancelled` would look like a success).
* :func:`instrument` makes the library trace what it does itself: a span per task it starts,
  a span per :class:`~trio_cancel.GracefulShutdown`, and the request's server span marked by
  :class:`~trio_cancel.asgi.CancelMiddleware`.
* Metrics (meter ``trio_cancel``): ``trio_cancel.cancellations`` (counter, by source),
  ``trio_cancel.landing_time`` (histogram, seconds from the cancel call or the trigger to the
  task's exit), ``trio_cancel.shutdown.in_flight`` (tasks of the triggered shutdowns still
  running, read at each collection), ``trio_cancel.threads.abandoned`` (thread calls abandoned
  so far).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Final, ParamSpec

import trio
from opentelemetry import context as otel_context, metrics, trace
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import Status, StatusCode

from . import _hooks
from ._outcome import Aborted, Failed
from ._task import _ErrorBeforeStarted, _ReturnedBeforeStarted
from ._threads import thread_call_statistics

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from opentelemetry.metrics import CallbackOptions, Observation

    from ._task import TaskHandle

__all__ = [
    "DEFAULT_ERROR_SOURCES",
    "LIBRARY_SOURCES",
    "cancellation_source",
    "configure",
    "instrument",
    "is_instrumented",
    "mark_cancelled",
    "span",
    "uninstrument",
]

LIBRARY_SOURCES: Final = frozenset(
    {
        "token",
        "abort",
        "shutdown",
        "shutdown_forced",
        "client_disconnect",
        "request_timeout",
        "caller_deadline",
        "remote",
    }
)
"""The sources the library records when it cancels something itself."""

DEFAULT_ERROR_SOURCES: Final = frozenset(
    {"trio.deadline", "request_timeout", "caller_deadline", "shutdown_forced"}
)
"""Sources whose cancellation sets the span's status to ``ERROR`` by default: deadlines and a
forced shutdown. Any other cancellation is intentional and leaves the status unset (the HTTP
semantic convention for a request the caller cancelled)."""

ATTR_CANCELLED: Final = "trio_cancel.cancelled"
ATTR_REASON: Final = "trio_cancel.reason"
ATTR_SOURCE: Final = "trio_cancel.source"

_P = ParamSpec("_P")
_log = logging.getLogger("trio_cancel.otel")
_tracer = trace.get_tracer("trio_cancel")
_meter = metrics.get_meter("trio_cancel")
_error_sources: frozenset[str] = DEFAULT_ERROR_SOURCES
_instrumented = False

_cancellations = _meter.create_counter(
    "trio_cancel.cancellations",
    unit="{cancellation}",
    description="Work ended by a cancellation, by source",
)
_landing = _meter.create_histogram(
    "trio_cancel.landing_time",
    unit="s",
    description="From the cancel call (or the shutdown's trigger) to the task's exit",
)
# The GracefulShutdowns seen by an event since instrument() (each until it is collected).
# Added to from Trio's thread and read by the meter's reader, in a thread of its own: a
# WeakSet added to while another thread iterates it raises (hence the lock).
_shutdowns: weakref.WeakSet[Any] = weakref.WeakSet()
_shutdowns_lock = threading.Lock()


def _track(sd: object) -> None:
    with _shutdowns_lock:
        _shutdowns.add(sd)


def _observe_in_flight(options: CallbackOptions) -> Iterable[Observation]:
    """Read at each collection, never added to: the count is the shutdowns' own (it cannot
    drift below zero or stay above it, whatever instrument()/uninstrument() did meanwhile)."""
    if not _instrumented:
        return ()
    total = 0
    with _shutdowns_lock:
        current = list(_shutdowns)
    for sd in current:
        if sd._triggered_at is not None:
            total += sd._running
    return (metrics.Observation(total),)


_meter.create_observable_up_down_counter(
    "trio_cancel.shutdown.in_flight",
    callbacks=[_observe_in_flight],
    unit="{task}",
    description="Tasks of a triggered GracefulShutdown still running",
)


def _observe_abandoned(options: CallbackOptions) -> Iterable[Observation]:
    if not _instrumented:
        return ()
    return (metrics.Observation(thread_call_statistics().abandoned),)


_meter.create_observable_counter(
    "trio_cancel.threads.abandoned",
    callbacks=[_observe_abandoned],
    unit="{call}",
    description="Interruptible thread calls abandoned after their grace period",
)

_hooks.active = True  # from now on the library records why it cancels


def _leaves(exc: BaseException) -> list[trio.Cancelled] | None:
    """The ``Cancelled`` exceptions ``exc`` is made of, or None if it holds anything else."""
    if isinstance(exc, trio.Cancelled):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(trio.Cancelled)
        if match is None or rest is not None:
            return None
        found: list[trio.Cancelled] = []
        stack: list[BaseException] = [match]
        while stack:
            e = stack.pop()
            if isinstance(e, BaseExceptionGroup):
                stack.extend(e.exceptions)
            elif isinstance(e, trio.Cancelled):
                found.append(e)
        return found
    return None


def _split(exc: BaseException) -> tuple[list[trio.Cancelled], BaseException | None]:
    """The ``Cancelled`` exceptions ``exc`` holds, and the rest of it (None when it is only
    cancellations): a group of both is split, nothing is lost."""
    if isinstance(exc, trio.Cancelled):
        return [exc], None
    if not isinstance(exc, BaseExceptionGroup):
        return [], exc
    match, rest = exc.split(trio.Cancelled)
    leaves = [] if match is None else _leaves(match)
    return leaves or [], rest


def _source(trio_source: object, reason_obj: object) -> str:
    if trio_source == "explicit":
        known = _hooks.lookup(reason_obj)
        if known is not None:
            return known[0]
    return f"trio.{trio_source}"


def _source_of(cancelled: trio.Cancelled) -> str:
    """The source of ``cancelled``, caught in the current task: the library's, if the reason
    it was raised with is one the library's own cancel created, else Trio's."""
    trio_source = getattr(cancelled, "source", "unknown")
    if trio_source == "explicit":
        found = _hooks.explicit_source(cancelled, _hooks.current_reason())
        if found is not None:
            return found
    return f"trio.{trio_source}"


def cancellation_source(exc: BaseException) -> str | None:
    """The source of the cancellation ``exc`` is (a :exc:`trio.Cancelled`, or a group of
    them), as :func:`span` records it; ``None`` if ``exc`` is not a cancellation.

    Call it where the exception is caught, in the task it was raised in: the library's own
    sources (``token``, ``abort``, ``shutdown``, ...) are found from the cancel status of the
    current task; otherwise Trio's ``Cancelled.source`` prefixed with ``trio.``.
    """
    leaves = _leaves(exc)
    if not leaves:
        return None
    return _source_of(leaves[0])


def configure(*, error_sources: Iterable[str] | None = None) -> None:
    """Change the status policy for every span marked from now on.

    Args:
        error_sources: The sources whose cancellation sets ``ERROR`` (with ``error.type`` = the
            source); every other cancellation leaves the status unset. ``None`` restores
            :data:`DEFAULT_ERROR_SOURCES`; an empty collection never sets ``ERROR``.

    Raises:
        TypeError: ``error_sources`` is a string or holds something other than strings.
    """
    global _error_sources
    new = _policy(error_sources)
    _error_sources = DEFAULT_ERROR_SOURCES if new is None else new


def _policy(error_sources: Iterable[str] | None) -> frozenset[str] | None:
    """``error_sources`` checked (None stays None: the configured policy)."""
    if error_sources is None:
        return None
    if isinstance(error_sources, str):
        raise TypeError("error_sources must be a collection of source names, not a str")
    new = frozenset(error_sources)
    if not all(isinstance(s, str) for s in new):
        raise TypeError("error_sources must hold strings")
    return new


def _mark(
    sp: trace.Span,
    source: str,
    reason: str | None,
    error_sources: frozenset[str] | None,
    *,
    status: bool = True,
    count: bool = True,
) -> None:
    sp.set_attribute(ATTR_CANCELLED, True)
    sp.set_attribute(ATTR_SOURCE, source)
    if reason is not None:
        sp.set_attribute(ATTR_REASON, reason)
    if status and source in (_error_sources if error_sources is None else error_sources):
        sp.set_attribute("error.type", source)
        sp.set_status(Status(StatusCode.ERROR, reason or source))
    if count:
        _cancellations.add(1, {ATTR_SOURCE: source})


def _mark_exc(sp: trace.Span, exc: BaseException, policy: frozenset[str] | None) -> bool:
    """Mark ``sp`` for ``exc`` if it holds a cancellation (see :func:`mark_cancelled`). An
    error of the telemetry is logged, never raised over ``exc``."""
    leaves, rest = _split(exc)
    if not leaves:
        return False
    try:
        if sp.is_recording():
            first = leaves[0]
            source = _source_of(first)
            reason = getattr(first, "reason", None)
            if rest is None:
                _mark(sp, source, reason, policy)
            else:  # a group with real errors: those decide the status, as an Exception would
                _mark(sp, source, reason, policy, status=False)
                sp.record_exception(rest)
                sp.set_status(Status(StatusCode.ERROR, f"{type(rest).__name__}: {rest}"))
    except Exception:  # noqa: BLE001 - telemetry must not replace the exception it observes
        _log.exception("trio_cancel.otel: marking a span failed")
    return True


def _end(sp: trace.Span) -> None:
    """``sp.end()``; a span processor's error is logged, never raised (it would replace the
    exception, a ``Cancelled`` say, that is leaving the span)."""
    try:
        sp.end()
    except Exception:  # noqa: BLE001 - as above
        _log.exception("trio_cancel.otel: ending a span failed")


def mark_cancelled(
    sp: trace.Span, exc: BaseException, *, error_sources: Iterable[str] | None = None
) -> bool:
    """Mark ``sp`` as ended by the cancellation ``exc``, as :func:`span` does; return whether
    ``exc`` holds a cancellation (nothing is done otherwise, nor for a span that does not
    record). A group of cancellations and other errors marks the cancellation and records
    the other errors (exception event, status ``ERROR``). Call it in the task that caught
    ``exc``.

    Raises:
        TypeError: ``error_sources`` is a string or holds something other than strings.
    """
    return _mark_exc(sp, exc, _policy(error_sources))


@contextlib.contextmanager
def span(
    name: str,
    tracer: trace.Tracer | None = None,
    *,
    error_sources: Iterable[str] | None = None,
    **kw: Any,  # noqa: ANN401 - passed to start_as_current_span
) -> Iterator[trace.Span]:
    """``tracer.start_as_current_span(name, **kw)`` that marks a span ended by a cancellation.

    A span left by a :exc:`trio.Cancelled` (or a group made only of them) gets
    ``trio_cancel.cancelled = true``, ``trio_cancel.reason`` (when the cancellation had one)
    and ``trio_cancel.source``; if the source is in the status policy (by default
    :data:`DEFAULT_ERROR_SOURCES`), the status is ``ERROR`` and ``error.type`` = the source,
    otherwise the status stays unset. A group of cancellations and other errors gets those
    attributes too, and its other errors are recorded (exception event, status ``ERROR``), as
    an ``Exception`` would be. Other exceptions are OpenTelemetry's business, as with
    ``start_as_current_span``; a span that completes is untouched. An error of a span
    processor when the span ends is logged, never raised over the exception leaving the span.

    Args:
        name: The span's name.
        tracer: The tracer (default: the ``trio_cancel`` tracer of the global provider).
        error_sources: This span's policy instead of the one :func:`configure` set.
        **kw: Passed to ``start_as_current_span`` (``kind``, ``attributes``, ``links``...).

    Raises:
        TypeError: ``error_sources`` is a string or holds something other than strings.

    Cancellation:
        Not a checkpoint: the cancellation passes through unchanged once the span is marked.
    """
    global _tracing_seen
    if tracer is not None:  # a tracer of the application's own: sources are kept from now on
        _tracing_seen = True
    policy = _policy(error_sources)
    end_on_exit = kw.pop("end_on_exit", True)
    sp: trace.Span | None = None
    try:
        with (tracer or _tracer).start_as_current_span(name, end_on_exit=False, **kw) as sp:
            try:
                yield sp
            except BaseException as exc:
                _mark_exc(sp, exc, policy)
                raise
    finally:
        if sp is not None and end_on_exit:
            _end(sp)  # after OpenTelemetry recorded an Exception, as it would end it


# ------------------------------------------------------------------ instrument()

_task_spans: dict[TaskHandle[Any], tuple[trace.Span, object]] = {}


class _ShutdownSpan:
    """A shutdown's open span, and how many tasks its phase 2 forced (those in the report,
    and those aborted as ``start()`` began, which never reach it)."""

    __slots__ = ("forced", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.forced = 0


_shutdown_spans: weakref.WeakKeyDictionary[Any, _ShutdownSpan] = weakref.WeakKeyDictionary()


def _guarded(hook: Callable[_P, None]) -> Callable[_P, None]:
    """A hook never breaks the library's own work: an error of the telemetry is logged."""

    @functools.wraps(hook)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:  # noqa: BLE001 - telemetry must not break the work it observes
            _log.exception("trio_cancel.otel: %s failed", hook.__name__)

    return guarded


# Whether a real (an SDK's) tracer or meter provider is set. These are asked once per task
# (and once per cancel), so the answer "none yet" must cost next to nothing: the API's public
# getters read os.environ on every call (about 1 µs each). The provider the API holds is read
# from its module instead (a private global of opentelemetry-api, read with getattr: were it
# renamed, the public getter is asked each time, as before); it is None until a provider is
# set, and the public getter is asked only when it has changed since the last answer. A
# provider is set once per process, so once a real one is seen the answer stays.
_UNSET: Final = object()
_GLOBALS_READABLE: Final = hasattr(trace, "_TRACER_PROVIDER") and hasattr(
    _metrics_api, "_METER_PROVIDER"
)
_tracing_seen = False
_tracer_checked: object = None  # the API's provider global when last asked (None: not set)
_metering_seen = False
_meter_checked: object = None


def _tracing() -> bool:
    """Whether a real tracer provider (an SDK's) is set: until one is, a task costs no span."""
    global _tracing_seen, _tracer_checked
    if _tracing_seen:
        return True
    held = getattr(trace, "_TRACER_PROVIDER", _UNSET)
    if held is _tracer_checked:
        return False
    _tracing_seen = _real_provider(
        trace.get_tracer_provider,
        lambda p: not isinstance(p, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)),
        "tracer",
    )
    if held is not _UNSET:
        _tracer_checked = held
    return _tracing_seen


def _metering() -> bool:
    """Whether a real meter provider (an SDK's) is set: until one is, no metric is kept."""
    global _metering_seen, _meter_checked
    if _metering_seen:
        return True
    held = getattr(_metrics_api, "_METER_PROVIDER", _UNSET)
    if held is _meter_checked:
        return False
    _metering_seen = _real_provider(
        metrics.get_meter_provider,
        lambda p: type(p).__name__ not in ("_ProxyMeterProvider", "NoOpMeterProvider"),
        "meter",
    )
    if held is not _UNSET:
        _meter_checked = held
    return _metering_seen


def _real_provider(get: Callable[[], object], real: Callable[[object], bool], what: str) -> bool:
    """Whether the provider the API's getter ``get`` returns (loading one named by an
    environment variable) is ``real``; a provider that cannot be loaded is logged, not raised
    into the task that asked."""
    try:
        return real(get())
    except Exception:  # noqa: BLE001 - telemetry must not break the work it observes
        _log.exception("trio_cancel.otel: the %s provider could not be loaded", what)
        return False


def _recording() -> bool:
    """Whether a real tracer or meter provider is set (an SDK's): until one is, no span is
    recorded and no metric kept."""
    return _tracing_seen or _metering_seen or _tracing() or _metering()


def _task_start(handle: TaskHandle[Any]) -> None:
    # Without a tracer provider, a task has no span (the check inline: once per task).
    if _tracing_seen or (
        (not _GLOBALS_READABLE or trace._TRACER_PROVIDER is not _tracer_checked) and _tracing()
    ):
        _task_span(handle)


@_guarded
def _task_span(handle: TaskHandle[Any]) -> None:
    sp = _tracer.start_span(f"task {handle.name}", attributes={"trio_cancel.task": handle.name})
    if not sp.is_recording():
        return
    token = otel_context.attach(trace.set_span_in_context(sp))  # this task's own context
    _task_spans[handle] = (sp, token)


def _task_end(handle: TaskHandle[Any]) -> None:
    # Without an SDK no span was opened and the API's instruments keep nothing: nothing to do
    # (the check inline, as in _task_start: this runs once per task).
    if (
        _task_spans
        or _tracing_seen
        or _metering_seen
        or not _GLOBALS_READABLE
        or trace._TRACER_PROVIDER is not _tracer_checked
        or _metrics_api._METER_PROVIDER is not _meter_checked
    ):
        _task_ended(handle)
    elif not _instrumented:  # after uninstrument(), no span left to end
        _hooks.task_end = None


@_guarded
def _task_ended(handle: TaskHandle[Any]) -> None:
    if not _task_spans and not _recording():
        if not _instrumented:
            _hooks.task_end = None
        return
    entry = _task_spans.pop(handle, None)
    if not _instrumented:
        # After uninstrument(): only end the spans still open (marked as usual), then let go.
        if not _task_spans:
            _hooks.task_end = None
        if entry is None:
            return
    outcome = handle._outcome
    if isinstance(outcome, Aborted):
        reason_obj = _hooks.scope_reason(handle._scope)
        if reason_obj is None:  # cancelled from outside the task's own scope
            reason_obj = _hooks.current_reason()
            trio_source = getattr(reason_obj, "source", "unknown")
        else:
            trio_source = getattr(reason_obj, "source", "explicit")
        source = _source(trio_source, reason_obj)
        known = _hooks.lookup(reason_obj)
        if known is not None and known[1] is not None and _instrumented:
            _landing.record(trio.current_time() - known[1], {ATTR_SOURCE: source})
        if entry is None:
            _cancellations.add(1, {ATTR_SOURCE: source})
        else:  # after uninstrument(), the open span is marked but nothing is measured
            _mark(entry[0], source, outcome.reason, None, count=_instrumented)
    elif isinstance(outcome, Failed) and entry is not None:
        error = _task_error(handle, outcome.error)
        entry[0].record_exception(error)
        entry[0].set_status(Status(StatusCode.ERROR, f"{type(error).__name__}"))
    if entry is not None:
        sp, token = entry
        with contextlib.suppress(Exception):
            otel_context.detach(token)  # type: ignore[arg-type]
        sp.end()


def _task_error(handle: TaskHandle[Any], error: BaseException) -> BaseException:
    """What a started task's failure is for its span: a task that failed, or returned, before
    ``task_status.started()`` ends with a marker of the library's (the error then propagates
    from ``start()``), not with what the application sees."""
    if isinstance(error, _ErrorBeforeStarted):
        return error.error
    if isinstance(error, _ReturnedBeforeStarted):
        return RuntimeError(f"{handle.name!r} returned without calling task_status.started()")
    return error


@_guarded
def _shutdown_event(sd: Any, kind: str, arg: Any) -> None:  # noqa: ANN401 - GracefulShutdown
    if not _instrumented:
        # After uninstrument(): only the spans still open get their events and end.
        if sd in _shutdown_spans and kind in ("trigger", "phase 2", "forced", "landed"):
            _shutdown_span_event(sd, kind, arg)
        if not _shutdown_spans:
            _hooks.shutdown_event = None
        return
    _track(sd)  # its in-flight tasks are observed from now on
    if kind == "exit":
        if not isinstance(arg._outcome, Aborted) and sd._triggered_at is not None:
            _landing.record(trio.current_time() - sd._triggered_at, {ATTR_SOURCE: "shutdown"})
    elif kind == "open":
        new = _tracer.start_span("GracefulShutdown")
        if new.is_recording():
            _shutdown_spans[sd] = _ShutdownSpan(new)
    else:
        _shutdown_span_event(sd, kind, arg)


def _shutdown_span_event(sd: Any, kind: str, arg: Any) -> None:  # noqa: ANN401 - as above
    """The shutdown's span (if open) records the event; ``landed`` ends it."""
    entry = _shutdown_spans.pop(sd, None) if kind == "landed" else _shutdown_spans.get(sd)
    if entry is None:
        return
    sp = entry.span
    if kind == "trigger":
        sp.add_event("trigger", {ATTR_REASON: str(arg), "trio_cancel.in_flight": sd._running})
    elif kind == "phase 2":
        sp.add_event("phase 2", {ATTR_REASON: str(arg)})
    elif kind == "forced":
        entry.forced += 1
        sp.add_event("forced", {"trio_cancel.task": arg.name})
    elif kind == "landed":
        sp.set_attribute("trio_cancel.forced", entry.forced)
        if entry.forced and "shutdown_forced" in _error_sources:  # the status policy
            sp.set_attribute("error.type", "shutdown_forced")
            sp.set_status(Status(StatusCode.ERROR, "tasks were forced"))
        sp.end()


@_guarded
def _request_cut(run: Any, outcome: object) -> None:  # noqa: ANN401 - the middleware's run
    token = run.token
    # A request cut by its token (timeout, caller deadline, disconnect) also ends Aborted, with
    # the token's reason; only an abort the token does not explain is the shutdown's phase 2.
    forced = isinstance(outcome, Aborted) and not (
        token is not None and token.is_cancelled() and outcome.reason == token.reason
    )
    if token is None or not (forced or token.is_cancelled()):
        return
    sp = trace.get_current_span()  # the server span of OpenTelemetryMiddleware
    if not sp.is_recording():
        return
    if forced:
        source, reason = "shutdown_forced", outcome.reason  # type: ignore[attr-defined]
    else:
        # The source of the cancel that reached the request's token: its own (a time limit, a
        # disconnect) or an ancestor's (the middleware's token, the shutdown's).
        reason, source = token.reason, token._source or "token"
    _mark(sp, source, reason, None)


def instrument() -> None:
    """Trace what the library does itself (call once, at start-up; idempotent).

    From now on: each task started by ``spawn``/``start``/``JoinSet``/``GracefulShutdown``
    runs in a span of its own (``task <name>``, a child of the span current where it was
    started), marked as :func:`span` marks one when the task ends ``Aborted``; each
    ``GracefulShutdown`` records a span with events for the trigger, phase 2 and each forced
    task; ``CancelMiddleware`` marks the request's server span (the order is
    ``OpenTelemetryMiddleware(CancelMiddleware(app))``) with the source of the cancellation
    that cut the request. The metrics are recorded.
    """
    global _instrumented
    # A provider named by OTEL_PYTHON_TRACER_PROVIDER / OTEL_PYTHON_METER_PROVIDER is loaded
    # by the API's getters: at this module's import, or here if the variable was set since.
    trace.get_tracer_provider()
    metrics.get_meter_provider()
    _hooks.task_start = _task_start
    _hooks.task_end = _task_end
    _hooks.shutdown_event = _shutdown_event
    _hooks.request_cut = _request_cut
    _instrumented = True


def uninstrument() -> None:
    """Undo :func:`instrument`: from now on nothing new is traced or measured (no task or
    shutdown span starts, no server span is marked, the metrics of :func:`instrument` are no
    longer recorded). Spans already open are not cut short: each ends when its work ends,
    marked as usual (a task's span when the task ends, a shutdown's, with its events, when its
    tasks have landed); until then the library calls into this module for them only.
    Idempotent."""
    global _instrumented
    _instrumented = False
    _hooks.task_start = None
    _hooks.request_cut = None
    if not _task_spans:
        _hooks.task_end = None
    if not _shutdown_spans:
        _hooks.shutdown_event = None


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in force."""
    return _instrumented
