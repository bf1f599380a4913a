"""Every public exception and warning of trio_cancel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self, final

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._select import Selected


@final
class OperationCancelledError(Exception):
    """A token cancelled an operation that was asked to fail rather than move on.

    Raised at the exit of :meth:`CancellationToken.fail_scope` when the token cancelled
    the body, the way :func:`trio.fail_after` raises :exc:`trio.TooSlowError`.

    Attributes:
        reason: The reason given to the ``cancel()`` that reached the token, or ``None``.
        cause: The structured cause given to that ``cancel()``, or ``None``.
    """

    def __init__(self, reason: str | None = None, cause: object | None = None) -> None:
        super().__init__(reason if reason is not None else "operation cancelled")
        self.reason = reason
        self.cause = cause

    def __repr__(self) -> str:
        return f"OperationCancelledError(reason={self.reason!r}, cause={self.cause!r})"


@final
class LaggedError(Exception):
    """A broadcast receiver fell more than ``capacity`` values behind.

    Raised once by ``receive()``; the receiver then continues from the oldest value still kept
    (tokio ``RecvError::Lagged``).

    Attributes:
        skipped: How many values this receiver will never see.
    """

    def __init__(self, skipped: int) -> None:
        super().__init__(f"receiver lagged behind and skipped {skipped} values")
        self.skipped = skipped


class SelectError(BaseExceptionGroup):
    """:func:`select` had a value from one branch and an error from another.

    A ``BaseExceptionGroup`` (an ``ExceptionGroup`` when every error is an ``Exception``, so
    ``except* ValueError`` works either way) whose :attr:`exceptions` are the branch errors, and
    whose :attr:`selected` is the :class:`Selected` that ``select`` would have returned: the
    first branch to return is the winner, any other that returned is in ``also_completed``. So
    a value a branch already received is never lost when another branch fails.

    Attributes:
        selected: What the branches that returned gave.

    Not ``@final``: its ``ExceptionGroup`` flavour is a subclass, chosen by the constructor.
    """

    selected: Selected[Any]

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[BaseException],
        selected: Selected[Any],
    ) -> Self:
        flavour: type[SelectError] = cls
        if cls is SelectError and all(isinstance(exc, Exception) for exc in exceptions):
            flavour = _SelectExceptionGroup  # every error is an Exception: an ExceptionGroup
        self = super().__new__(flavour, message, exceptions)
        self.selected = selected
        return self  # type: ignore[return-value]

    def __init__(
        self,
        message: str,
        exceptions: Sequence[BaseException],
        selected: Selected[Any],
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[BaseException]) -> SelectError:  # type: ignore[override]
        """A group like this one with other exceptions (``split``/``subgroup`` use it); the
        ``selected`` value travels with it."""
        return SelectError(self.message, excs, self.selected)

    def __repr__(self) -> str:
        return (
            f"SelectError({self.message!r}, {list(self.exceptions)!r}, selected={self.selected!r})"
        )


@final
class _SelectExceptionGroup(SelectError, ExceptionGroup):
    """The ``ExceptionGroup`` flavour of :class:`SelectError` (every error is an Exception)."""


@final
class CommitOutcomeUnknownError(Exception):
    """A commit was sent but did not finish within its bound: it may have committed.

    Raised by a database transaction block (``trio_cancel.sqlite``, ``trio_cancel.postgres``)
    and by :func:`commit_or_rollback` when the commit is still running after its grace period
    (plus, for a database, the driver's own lock wait). Nothing is rolled back after it: the
    transaction may have committed, or may still commit. Before retrying, check whether it did
    (make the write idempotent: a unique request id stored in the same transaction).
    """
