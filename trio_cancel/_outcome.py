"""How a task ended: ``Completed(value)``, ``Failed(error)`` or ``Aborted(reason)``.

Values (frozen attrs classes), compared by content: ``Completed(1) == Completed(1)``. Built by
the task wrapper of :mod:`trio_cancel._task`; reported by ``JoinSet`` and ``GracefulShutdown``.
"""

from __future__ import annotations

from typing import Generic, TypeAlias, TypeVar, final

import attrs
import trio

from ._excgroups import first_leaf, only_cancelled

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@final
@attrs.frozen
class Completed(Generic[T_co]):
    """The task returned ``value`` (also when it did so after an abort was requested)."""

    value: T_co


@final
@attrs.frozen
class Failed:
    """The task raised ``error``.

    An ``Exception`` is only recorded here (it does not cancel the nursery); any other
    ``BaseException`` (``KeyboardInterrupt``) is recorded and also propagates.
    """

    error: BaseException


@final
@attrs.frozen
class Aborted:
    """The task ended through a ``trio.Cancelled``, or was aborted before it ever ran.

    ``reason`` is the reason of that cancellation: the ``abort(reason)``, the bound token's
    reason, or (for a cancellation from outside the task's own scope) the outside one's.
    Named so that it is never confused with ``trio.Cancelled``.
    """

    reason: str | None


Outcome: TypeAlias = Completed[T] | Failed | Aborted
"""How a task ended: ``Completed(value)``, ``Failed(error)`` or ``Aborted(reason)``."""


def outcome_of_base_exception(exc: BaseException) -> Failed | Aborted:
    """The outcome of a task that ended by raising ``exc`` past its body (a ``BaseException``,
    or cancellations): ``Aborted`` if nothing but ``trio.Cancelled``, else ``Failed``."""
    if only_cancelled(exc):
        first = first_leaf(exc)
        assert isinstance(first, trio.Cancelled)
        return Aborted(first.reason)
    return Failed(exc)
