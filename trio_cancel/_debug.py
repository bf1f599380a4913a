"""Opt-in tracking of what a test created, for the leak checks of trio_cancel.testing.

Tracking is off unless a ``LeakTracker`` is set in the current context (the pytest fixture
``trio_cancel_leaks`` does that for one test): then the factories record the endpoints and
``on_cancel`` registrations they create (tasks are watched by an instrument instead). Off, it
costs one ``ContextVar.get()`` per factory call; the token tree's hot paths (``child_token``,
``cancel``) never call it.
"""

from __future__ import annotations

import contextvars

import attrs


@attrs.define(eq=False)
class LeakTracker:
    """Endpoints and registrations created while tracking is on (for the leak fixture)."""

    endpoints: list[object] = attrs.Factory(list)
    registrations: list[object] = attrs.Factory(list)


CURRENT: contextvars.ContextVar[LeakTracker | None] = contextvars.ContextVar(
    "trio_cancel.leak_tracker", default=None
)


def track_endpoints(*objs: object) -> None:
    tracker = CURRENT.get()
    if tracker is not None:
        tracker.endpoints.extend(objs)


def track_registration(obj: object) -> None:
    tracker = CURRENT.get()
    if tracker is not None:
        tracker.registrations.append(obj)
