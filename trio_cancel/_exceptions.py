"""Every public exception and warning of trio_cancel."""

from __future__ import annotations

from typing import final


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
