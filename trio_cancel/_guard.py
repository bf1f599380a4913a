"""Guards: code that runs when a block exits, the counterpart of Rust's ``Drop``.

:class:`DropGuard` cancels a token at the exit (synchronous, like ``Drop``). The others run an
async cleanup.

Rust runs ``Drop`` on every exit from a scope, but ``Drop`` cannot await, so async cleanup gets
spawned and may never finish. In Trio the cleanup can run in place: the guard's ``__aexit__``
awaits it, shielded from the cancellation that is ending the block (otherwise the first await
of the cleanup would be cancelled too) and bounded by a grace period (otherwise a stuck cleanup
would make the cancellation hang forever).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from typing import TYPE_CHECKING, Literal, Protocol, Self, TypeVarTuple, final

import attrs
import trio

from ._checks import check_async_callable, check_grace
from ._exceptions import CommitOutcomeUnknownError
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from types import TracebackType

    from ._token import CancellationToken

PosArgsT = TypeVarTuple("PosArgsT")

# flake8-async's ASYNC102 ("await in __aexit__ / except must be shielded with a timeout") is
# silenced on the awaits below that call bounded() (shielded, with the grace period as its
# timeout) and on the checkpoints that deliberately deliver a pending cancellation after the
# cleanup has run.


@final
class CleanupTimeoutWarning(RuntimeWarning):
    """A cleanup (an :func:`async_guard` cleanup or a rollback) overran its grace period.

    The cleanup was cancelled when its grace period ended; what it had not done yet is not
    done. The exception that ended the guarded block (if any) still propagates.
    """


class Transaction(Protocol):
    """What :func:`commit_or_rollback` needs: async ``commit()`` and ``rollback()``.

    A structural type: any object with these two methods fits, nothing to inherit. What they
    return is ignored.
    """

    async def commit(self) -> object:
        """Make the transaction's writes permanent.

        Cancellation:
            :func:`commit_or_rollback` calls it shielded, bounded by its grace period.
        """

    async def rollback(self) -> object:
        """Discard the transaction's writes.

        Cancellation:
            :func:`commit_or_rollback` calls it shielded, bounded by its grace period.
        """


# The deadline (Trio clock) of the guard's shielded, bounded scope that the current code runs
# in, and the task running it: a commit or rollback that shields itself again (a database
# transaction block) does not wait past it, so the guard's grace period bounds the whole exit
# (the smaller bound wins). Only for that task: a task spawned from inside the scope inherits
# the context but not the bound.
_OUTER_BOUND: contextvars.ContextVar[tuple[float, trio.lowlevel.Task | None]] = (
    contextvars.ContextVar("trio_cancel_outer_bound", default=(math.inf, None))
)


def outer_bound() -> float:
    """The deadline of the enclosing guard's bounded scope in this task (``inf`` if none)."""
    deadline, task = _OUTER_BOUND.get()
    return deadline if task is trio.lowlevel.current_task() else math.inf


@contextlib.contextmanager
def _bounded_scope(grace: float) -> Iterator[trio.CancelScope]:
    deadline = min(trio.current_time() + grace, outer_bound())
    reset = _OUTER_BOUND.set((deadline, trio.lowlevel.current_task()))
    try:
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            yield scope
    finally:
        _OUTER_BOUND.reset(reset)


async def bounded(
    grace: float, async_fn: Callable[[*PosArgsT], Awaitable[object]], *args: *PosArgsT
) -> tuple[BaseException | None, bool]:
    """Run ``async_fn(*args)`` shielded, cancelled after ``grace`` seconds.

    Returns what it raised (or None) and whether the grace period cut it short. Never raises.
    """
    error: BaseException | None = None
    try:
        with _bounded_scope(grace) as scope:
            await async_fn(*args)
    # Shielded: no outer Cancelled can reach here, and the scope absorbs its own. So this
    # never swallows a cancellation that is not ours.
    except BaseException as exc:  # noqa: BLE001, ASYNC103 - handed back to the caller
        error = exc
    return error, scope.cancelled_caught  # noqa: ASYNC910 - helper; callers checkpoint


async def clean_up(
    grace: float, async_fn: Callable[[], Awaitable[object]], what: str
) -> tuple[BaseException | None, bool]:
    """:func:`bounded`, plus the :exc:`CleanupTimeoutWarning` if ``what`` overran."""
    error, timed_out = await bounded(grace, async_fn)
    if timed_out:
        warnings.warn(
            CleanupTimeoutWarning(
                f"{what} overran its grace period of {grace:g} s and was cancelled"
            ),
            stacklevel=4,  # the user's 'async with' line
        )
    return error, timed_out


async def commit_bounded(
    grace: float,
    commit: Callable[[], Awaitable[object]],
    committed: Callable[[], None],
    roll_back: Callable[[], Awaitable[BaseException | None]],
    unknown: Callable[[], None],
) -> None:
    """Commit, shielded and bounded by ``grace``.

    Done: ``committed()``, then a cancellation that arrived meanwhile is raised (the commit
    stands). Still running when ``grace`` ran out: ``unknown()``, then
    :exc:`CommitOutcomeUnknownError` (no rollback: the commit may have happened); the same if
    ``commit()`` itself raised :exc:`CommitOutcomeUnknownError`. A ``BaseException`` that is
    not an ``Exception`` (a ``KeyboardInterrupt``) from ``commit()``: ``unknown()`` and no
    rollback either (``commit()`` may have committed before it came), then it propagates.
    Raised: ``roll_back()`` (which returns its own error, if any), then the commit's error,
    together with the rollback's in a group (the commit's first) if the rollback raised too.
    """
    error: BaseException | None = None
    try:
        with _bounded_scope(grace) as scope:
            await commit()
    # Shielded: no outer Cancelled reaches here, and the scope absorbs its own.
    except BaseException as exc:  # noqa: BLE001, ASYNC103 - raised below, or reported unknown
        error = exc
    if isinstance(error, CommitOutcomeUnknownError) or (
        error is not None and not isinstance(error, Exception)
    ):
        unknown()
        raise error
    if scope.cancel_called and (error is not None or scope.cancelled_caught):
        unknown()
        raise CommitOutcomeUnknownError(
            f"the commit did not finish within the grace period of {grace:g} s and was cut "
            "short: the transaction may have committed; check before retrying"
        ) from error
    if error is None:
        committed()
        await trio.lowlevel.checkpoint_if_cancelled()
        return
    rollback_error = await roll_back()
    if rollback_error is not None:
        raise BaseExceptionGroup("the commit and its rollback both raised", [error, rollback_error])
    raise error


@attrs.define(eq=False, repr=False)
class _EnterOnce:
    """The entry shared by both guards: a checkpoint, and the exit action if it is cancelled."""

    _entered: bool = attrs.field(default=False, init=False)

    async def _on_exit(self, block_error: BaseException | None) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        """Cancellation: a checkpoint; if it raises, the block never ran and the exit action
        (the cleanup, or the rollback) runs shielded and bounded as for any other exit, then
        the cancellation propagates."""
        if self._entered:
            raise RuntimeError("this guard was already entered; make a new one")
        self._entered = True
        try:
            await trio.lowlevel.checkpoint()
        except BaseException as exc:
            await self._on_exit(exc)  # noqa: ASYNC102
            raise
        return self


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def combine(block_error: BaseException | None, cleanup_error: BaseException, what: str) -> None:
    """Raise ``cleanup_error``, together with ``block_error`` if the block raised too."""
    if block_error is None:
        raise cleanup_error
    raise BaseExceptionGroup(f"the block and its {what} both raised", [block_error, cleanup_error])


def pending_cancel() -> bool:
    """Whether a cancellation is pending for the current task (delivered or not)."""
    deadline = trio.current_effective_deadline()  # -inf once an enclosing scope is cancelled
    return deadline == -math.inf or deadline <= trio.current_time()


@final
@attrs.define(eq=False, repr=False)
class AsyncGuard(_EnterOnce, metaclass=NoPublicConstructor):
    """Runs an async cleanup when its ``async with`` block exits, unless disarmed.

    Built by :func:`async_guard`. States: *armed*, then *disarmed* (by :meth:`disarm`) or
    *done* (the cleanup ran, or was cut short by its grace period: :attr:`timed_out`).

    Attributes:
        timed_out: True once the cleanup overran the grace period and was cancelled; False
            until then.
    """

    _cleanup: Callable[[], Awaitable[object]]
    _name: str
    _grace: float
    _armed: bool = attrs.field(default=True, init=False)
    timed_out: bool = attrs.field(default=False, init=False)

    @property
    def armed(self) -> bool:
        """Whether the cleanup will still run when the block exits."""
        return self._armed

    def disarm(self) -> None:
        """Skip the cleanup when the block exits (the explicit path already did the work).

        Not a checkpoint; never blocks. Calling it after the cleanup ran does nothing.
        """
        self._armed = False

    async def _on_exit(self, block_error: BaseException | None) -> None:
        if not self._armed:
            return  # noqa: ASYNC910 - helper; callers checkpoint
        self._armed = False
        error, self.timed_out = await clean_up(self._grace, self._cleanup, f"cleanup {self._name}")
        if error is not None:
            combine(block_error, error, "cleanup")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancellation: the cleanup is shielded from it. After a block that raised nothing,
        a checkpoint (a cancellation that arrived during the cleanup is raised there, after
        it); otherwise the block's exception travels on unchanged (with the cleanup's, in a
        group, if the cleanup raised too)."""
        if self._armed:
            await self._on_exit(exc)  # noqa: ASYNC102
            if exc is None:  # a cancellation that arrived during the cleanup lands here
                await trio.lowlevel.checkpoint_if_cancelled()  # noqa: ASYNC102
        elif exc is None:
            await trio.lowlevel.checkpoint()  # noqa: ASYNC102
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def __repr__(self) -> str:
        state = "armed" if self._armed else "timed out" if self.timed_out else "not armed"
        return f"<AsyncGuard {self._name} {state}, grace {self._grace:g} s>"


def async_guard(
    cleanup: Callable[[*PosArgsT], Awaitable[object]], *args: *PosArgsT, grace: float = 5.0
) -> AsyncGuard:
    """``async with tc.async_guard(cleanup, *args, grace=5.0) as guard:``.

    When the block exits by any route (normally, by an exception, or cancelled, including
    cancelled while entering), ``await cleanup(*args)`` runs once, shielded from the
    cancellation that is ending the block and cancelled after ``grace`` seconds. A cleanup cut
    short warns :exc:`CleanupTimeoutWarning` and sets ``guard.timed_out``; it raises nothing
    by itself. If the cleanup raises, its exception propagates (together with the block's, in a
    :exc:`BaseExceptionGroup`, if the block raised too). ``guard.disarm()`` skips the cleanup.

    Raises:
        TypeError: ``cleanup`` is not an async function, or ``grace`` is not a number.
        ValueError: ``grace`` is negative, NaN or too large for a float (``math.inf`` means no
            bound).

    Not a checkpoint; never blocks (entering and leaving the block are).
    """
    check_async_callable(cleanup, "async_guard()")
    grace = check_grace(grace)

    async def run() -> None:
        await cleanup(*args)

    return AsyncGuard._create(run, _name(cleanup), grace)


@final
@attrs.define(eq=False, repr=False)
class TransactionGuard(_EnterOnce, metaclass=NoPublicConstructor):
    """Commits or rolls back a transaction when its ``async with`` block exits.

    Built by :func:`commit_or_rollback`.

    Attributes:
        outcome: ``None`` while the block runs, then what its exit did: ``"committed"``,
            ``"rolled back"``, ``"rollback timed out"``, or ``"unknown"`` (the commit overran
            its grace period: it may have committed; :exc:`CommitOutcomeUnknownError`).
    """

    _tx: Transaction
    _grace: float
    outcome: Literal["committed", "rolled back", "rollback timed out", "unknown"] | None = (
        attrs.field(default=None, init=False)
    )

    @property
    def transaction(self) -> Transaction:
        """The guarded transaction."""
        return self._tx

    async def _on_exit(self, block_error: BaseException | None) -> None:
        """Roll back (the exit action of a block that raised or was cancelled)."""
        error, timed_out = await clean_up(
            self._grace, self._tx.rollback, f"rollback of {self._tx!r}"
        )
        self.outcome = "rollback timed out" if timed_out else "rolled back"
        if error is not None:
            combine(block_error, error, "rollback")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancellation: a block that ends while a cancellation is pending for its task
        (delivered or not) is rolled back and never committed; the cancellation then
        propagates. The commit itself runs shielded, so it is never torn by a cancellation; one
        that arrives during the commit is raised after it (``outcome`` is then
        ``"committed"``)."""
        if exc is not None or pending_cancel():
            await self._on_exit(exc)  # noqa: ASYNC102
            if exc is None:
                await trio.lowlevel.checkpoint()  # noqa: ASYNC102
            return
        await commit_bounded(  # noqa: ASYNC102 - shielded and bounded inside
            self._grace, self._tx.commit, self._committed, self._roll_back, self._unknown
        )

    async def _roll_back(self) -> BaseException | None:
        """The rollback after a failed commit: returns its error instead of raising it."""
        error, timed_out = await clean_up(
            self._grace, self._tx.rollback, f"rollback of {self._tx!r}"
        )
        self.outcome = "rollback timed out" if timed_out else "rolled back"
        return error

    def _committed(self) -> None:
        self.outcome = "committed"

    def _unknown(self) -> None:
        # A KeyboardInterrupt from a commit() that records its own outcome (a database
        # transaction block): take that; otherwise nobody knows.
        seen = getattr(self._tx, "outcome", None)
        self.outcome = seen if seen in ("committed", "rolled back") else "unknown"

    def __repr__(self) -> str:
        return f"<TransactionGuard {self.outcome or 'open'} for {self._tx!r}>"


def commit_or_rollback(tx: Transaction, *, grace: float = 5.0) -> TransactionGuard:
    """``async with tc.commit_or_rollback(tx, grace=5.0):`` for any ``tx`` with async
    ``commit()`` and ``rollback()``.

    A clean exit commits, shielded and bounded by ``grace`` seconds; if the commit raises, the
    transaction is rolled back and the commit's exception propagates (together with the
    rollback's, in a group with the commit's first, if the rollback raises too). A commit still
    running when ``grace`` runs out is cancelled and *not* rolled back: it may have committed,
    so the block raises :exc:`CommitOutcomeUnknownError` and ``outcome`` is ``"unknown"``.
    An exception or a cancellation (one pending for the block's task when it ends, delivered
    or not) rolls back instead, shielded and bounded; a rollback that overruns warns
    :exc:`CleanupTimeoutWarning`. Nothing is ever committed from a cancelled block.

    Raises:
        TypeError: ``tx`` lacks ``commit``/``rollback``, or ``grace`` is not a number.
        ValueError: ``grace`` is negative or NaN.

    Not a checkpoint; never blocks (entering and leaving the block are).
    """
    for method in ("commit", "rollback"):
        if not callable(getattr(tx, method, None)):
            raise TypeError(
                f"commit_or_rollback() needs an object with async commit() and rollback(); "
                f"{type(tx).__name__} has no {method}()"
            )
    return TransactionGuard._create(tx, check_grace(grace))


@final
@attrs.define(eq=False, repr=False)
class DropGuard(metaclass=NoPublicConstructor):
    """Cancels its token when its ``with`` / ``async with`` block exits, unless disarmed.

    The counterpart of tokio-util's ``DropGuard``, made explicit because Python has no
    ``Drop``. States: *armed*, then *disarmed* (by :meth:`disarm`) or *fired* (at exit).
    Built by :meth:`CancellationToken.drop_guard`.
    """

    _token: CancellationToken
    _reason: str | None
    _armed: bool = attrs.field(default=True, init=False)

    @property
    def token(self) -> CancellationToken:
        """The guarded token."""
        return self._token

    def disarm(self) -> CancellationToken:
        """Keep the token live when the block exits; returns the token.

        Not a checkpoint; never blocks.
        """
        self._armed = False
        return self._token

    def _fire(self, exc: BaseException | None) -> None:
        if not self._armed:
            return
        self._armed = False
        try:
            self._token.cancel(self._reason)
        except BaseException as cb_error:
            if exc is None:
                raise
            # Both travel on; a trio.Cancelled inside the group is still handled by its scope.
            raise BaseExceptionGroup(  # noqa: ASYNC104
                "drop guard block and on_cancel callbacks raised", [exc, cb_error]
            ) from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._fire(exc)

    async def __aenter__(self) -> Self:
        """Cancellation: a checkpoint; if it raises, the block never ran and the token is
        cancelled, as for any other exit."""
        try:
            await trio.lowlevel.checkpoint()
        except BaseException as exc:
            self._fire(exc)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancellation: cancels the token, then a schedule point that never raises, so it
        cannot replace the block's own exception."""
        self._fire(exc)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def __repr__(self) -> str:
        return f"<DropGuard {'armed' if self._armed else 'disarmed'} {self._token!r}>"
