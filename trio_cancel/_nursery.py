"""The nursery that a ``JoinSet`` or a ``GracefulShutdown`` owns: one entry, spawn and exit.

Both owners keep their tasks' errors as outcomes instead of letting them cancel the nursery,
so both leave it the same way: the body's own exception propagates as itself, not wrapped in
an exception group (:meth:`OwnedNursery.exit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Self, TypeVar

import attrs
import trio

from ._excgroups import leaves, reraise_bare
from ._task import make_handle

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from ._task import TaskHandle
    from ._token import CancellationToken

T = TypeVar("T")


@attrs.define(eq=False, repr=False)
class OwnedNursery:
    """A nursery entered and left by its owner's ``async with``.

    States: *new*, *open* (between :meth:`enter` and :meth:`exit`: tasks can be spawned),
    *closed*. It can be entered only once.
    """

    owner: str
    state: Literal["new", "open", "closed"] = attrs.field(default="new", init=False)
    _cm: AbstractAsyncContextManager[trio.Nursery] | None = attrs.field(default=None, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)

    async def enter(self) -> None:
        """Open the nursery.

        Cancellation:
            Always a checkpoint, before the nursery opens: if it raises, nothing was opened and
            the owner is still new.
        """
        if self.state != "new":
            raise RuntimeError(f"a {self.owner} can be entered only once")
        await trio.lowlevel.checkpoint()
        cm = trio.open_nursery()
        self._nursery = await cm.__aenter__()
        self._cm = cm
        self.state = "open"

    def require_open(self, what: str) -> trio.Nursery:
        """The nursery; ``RuntimeError`` naming ``what`` if it is not open."""
        if self.state != "open" or self._nursery is None:
            raise RuntimeError(
                f"{what} works only inside its 'async with' (this {self.owner} is {self.state})"
            )
        return self._nursery

    def spawn(
        self,
        what: str,
        async_fn: Callable[..., Awaitable[T]],
        args: tuple[object, ...],
        name: str | None,
        token: CancellationToken | None,
        on_done: Callable[[TaskHandle[T]], None],
    ) -> TaskHandle[T]:
        """Start a task with a handle (as :func:`trio_cancel.spawn`), calling ``on_done(handle)``
        when it ends. Not a checkpoint; never blocks.

        Raises:
            RuntimeError: The nursery is not open; ``what`` names the caller.
        """
        return make_handle(self.require_open(what), async_fn, args, name, token, on_done, what)

    def start_soon(
        self, what: str, async_fn: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        """Start a helper task with no handle. Not a checkpoint; never blocks."""
        self.require_open(what).start_soon(async_fn, *args)

    async def exit(self, exc: BaseException | None) -> bool:  # noqa: ASYNC910 - see below
        """Close the nursery (waiting for its tasks); ``exc`` is the body's exception. That
        exception, alone or alongside nothing but cancellations, propagates as itself (the same
        object), not in a group.

        Cancellation:
            Trio's nursery exit (awaiting it is the checkpoint): it waits for every task, and a
            cancellation from outside cancels them.
        """
        self.state = "closed"
        cm = self._cm
        assert cm is not None
        tb = None if exc is None else exc.__traceback__
        try:
            return await cm.__aexit__(type(exc) if exc is not None else None, exc, tb)  # type: ignore[return-value]
        except BaseExceptionGroup as group:
            if exc is None:
                raise
            # Trio may hand on a copy of a group the body raised (split from its
            # cancellations): compare the leaves. Nothing but the body's own errors (and
            # cancellations) means the body's exception propagates as itself.
            body = {id(leaf) for leaf in leaves(exc)}
            if not all(
                id(leaf) in body or isinstance(leaf, trio.Cancelled) for leaf in leaves(group)
            ):
                raise
            reraise_bare(exc)
        finally:
            # What leaves here has this frame in its traceback: hold neither the exception
            # (a cycle through its own traceback) nor the owner's nursery (see _leave).
            del self, exc, tb, cm


class NurseryOwner:
    """Base of ``JoinSet`` and ``GracefulShutdown``: ``async with`` opens their
    :class:`OwnedNursery` (``_tasks``) and leaving it runs their ``_leave``, which ends by
    :meth:`OwnedNursery.exit`."""

    __slots__ = ()
    _tasks: OwnedNursery

    async def __aenter__(self) -> Self:
        """Cancellation: a checkpoint, before the nursery opens (see the owner's docstring)."""
        await self._tasks.enter()
        self._opened()
        return self

    async def __aexit__(  # noqa: ASYNC910 - the owner's _leave awaits the nursery exit
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Cancellation: see the owner's docstring (its ``_leave``)."""
        try:
            return await self._leave(exc)  # noqa: ASYNC102 - the exit waits for the tasks, by design
        finally:
            del self, exc, tb  # in the traceback of what leaves: no cycle (see _leave)

    def _opened(self) -> None:
        """Called once, when the nursery has opened."""

    async def _leave(self, exc: BaseException | None) -> bool:
        raise NotImplementedError
