"""Hierarchical cancellation tokens built on Trio cancel scopes.

A :class:`CancellationToken` is a node in a directed acyclic graph: ``child_token()`` adds one
edge, :meth:`CancellationToken.any` adds one edge from each input. ``cancel()`` marks the node
and every node reachable from it.

Invariants (every method keeps them; the tests check them):

1. A node's parent set is fixed at creation. A node is cancelled iff ``cancel()`` was called on
   it or on one of its ancestors; once cancelled it never changes again, and its reason and
   cause are those of the first ``cancel()`` that reached it.
2. A cancelled node owns nothing: no children, no scopes, no waiters, no callbacks, no timer.
   Everything is released by the ``cancel()`` that marked it. A child created from a cancelled
   node is born cancelled and is not linked to it.
3. Parents hold children weakly (``_children``: plain weak references, in creation order),
   except *pinned* children (``_pinned``): a node is pinned in each parent while it, or a
   descendant of it, has a registered ``on_cancel`` callback. ``_pins`` counts the node's own
   callbacks plus its pinned children. Pinning is what keeps a callback alive when nobody holds
   its token any more; nothing else keeps a child alive, so a root that hands out and drops a
   million children keeps flat memory. Bound scopes and waiters need no pin: the task using them
   holds the token.
4. Every live (uncancelled) node has only live parents.
5. ``cancel()`` never recurses: one iterative walk marks the newly cancelled nodes and lists
   them in pre-order (a node before its descendants), then two flat passes act on that list:
   release ownership, cancel scopes and wake waiters; then run callbacks. Its cost is linear
   in nodes + scopes + callbacks reached.
6. Registering and unregistering a child, a scope, a waiter or a callback is O(1) (amortised
   for a child), except that the first callback in a subtree pins the chain of uncancelled
   ancestors once.
7. *Run marks.* ``_run`` identifies a Trio run (a weak reference to its root task, the same
   object for every lookup in that run). Before a scope is bound, a task parks in
   ``wait_cancelled()``, a ``cancel_after`` timer is set or an ``on_cancel`` callback is
   registered inside a run, ``_mark_used()`` gives that node and every ancestor the run's mark
   (the walk stops at a node that already has it: once per node and run, so amortised O(1),
   and ``child_token()`` and ``cancel()`` never walk). Hence: if any node of a subtree was used
   in run R, its root carries R's mark, unless a later run re-marked it (then R has ended, or
   the tree is shared between two live runs, which is outside the contract). ``cancel()``
   reads one field first: a token marked by a run that is still running (its root task's
   coroutine has not finished) and that is not the caller's own run raises ``RuntimeError``
   before any write. So a ``cancel()`` from a foreign thread either is refused before it marks
   anything, or reaches a tree that no live run uses, where no task can observe it; no mark is
   ever undone, so no task sees a token cancelled and then live again, and no child is born
   cancelled under a live parent (a child is born cancelled only from a cancelled parent, and
   a cancellation is final). The decision depends on the tree's history, not on what happens to be
   registered at the moment of the call. A tree whose first use races a foreign ``cancel()``
   that already passed the check is the caller's race, like any unsynchronised sharing.
8. ``cancel()`` writes only from the Trio thread of the run that uses the tree, or to a tree no
   live run uses; the collector pause (``_collector``) happens only in the first case, as one
   synchronous section with no ``await`` inside.
9. ``Ctrl+C``: every method that changes state is ``KeyboardInterrupt``-protected, and so are
   a bound scope's ``__enter__`` (register with the token, then enter the ``CancelScope``) and
   ``__exit__`` (unregister, then leave): each pair is one change, as in Trio's own
   ``CancelScope``.
10. A raising callback keeps nothing alive: ``cancel()``'s frames drop their references to the
    subtree (``order`` and the loop variables) before a group is raised, so the tracebacks of
    the raised exceptions hold no token (no reference cycle for the collector to find).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Self, TypeVar, TypeVarTuple, final

import attrs
import outcome
import trio

from . import _hooks
from ._checks import check_reason, check_seconds, check_sync_callable
from ._collector import GC_PAUSE_AT, pause_collector, resume_collector
from ._debug import track_registration
from ._exceptions import OperationCancelledError
from ._guard import DropGuard
from ._timers import TimerEntry, timer_service
from ._trio_internals import cancel_scopes
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractContextManager
    from types import TracebackType


T = TypeVar("T")
_B = TypeVar("_B", bound="_BoundScope")
PosArgsT = TypeVarTuple("PosArgsT")


@final
@attrs.define(eq=False, repr=False)
class CancellationToken:
    """A cancellation signal that can be shared, nested and bound to Trio cancel scopes.

    The counterpart of tokio-util's ``CancellationToken``, .NET's ``CancellationTokenSource``
    and Go's ``context.WithCancelCause``. A token is plain data until code binds it to a
    :class:`trio.CancelScope` (:meth:`cancel_scope`, :meth:`fail_scope`,
    :meth:`run_until_cancelled`) or waits on it (:meth:`wait_cancelled`), so it can be created
    and cancelled outside :func:`trio.run`.

    Lifecycle: a token is *live* until the first :meth:`cancel` that reaches it (its own or an
    ancestor's), then *cancelled* forever, with that call's reason and cause. Cancelling is
    synchronous: when :meth:`cancel` returns, every descendant reads as cancelled, every bound
    scope has been cancelled with the reason, every waiter has been woken and every callback has
    run.

    Python has no ``clone()``: share the same object between tasks. Use :meth:`child_token` for
    a token that the parent cancels but that can also be cancelled alone.
    """

    _cancelled: bool = attrs.field(default=False, init=False)
    _reason: str | None = attrs.field(default=None, init=False)
    _cause: object | None = attrs.field(default=None, init=False)
    # The parent of a child_token() is stored as itself (no tuple per child); any() stores a
    # tuple. Read it through _parents_of().
    _parents: CancellationToken | tuple[CancellationToken, ...] = attrs.field(
        default=(), init=False
    )
    # Weak references to the children, in creation order. Dead references are dropped when the
    # list reaches ``_children_limit`` (then twice the live count): amortised O(1) per child,
    # and a parent that creates and drops children keeps flat memory. Plain references, not a
    # WeakSet: no callback runs when a child dies, and each child costs ~90 bytes, not ~190.
    _children: list[weakref.ref[CancellationToken]] | None = attrs.field(default=None, init=False)
    _children_limit: int = attrs.field(default=8, init=False)
    _pinned: set[CancellationToken] | None = attrs.field(default=None, init=False)
    _pins: int = attrs.field(default=0, init=False)
    # One bound scope is stored as itself; more go in a set (most tokens bind one scope).
    _scopes: trio.CancelScope | set[trio.CancelScope] | None = attrs.field(default=None, init=False)
    # Tasks parked in wait_cancelled(): one as itself, more in a dict (insertion-ordered).
    _waiters: trio.lowlevel.Task | dict[trio.lowlevel.Task, None] | None = attrs.field(
        default=None, init=False
    )
    _callbacks: dict[Registration, Callable[[], object]] | None = attrs.field(
        default=None, init=False
    )
    _timer: TimerEntry | None = attrs.field(default=None, init=False)
    # The run this token, or a descendant, was last used in (a scope bound, a task waiting, a
    # timer, a callback registered inside trio.run): see invariant 7 and _mark_used().
    _run: weakref.ref[trio.lowlevel.Task] | None = attrs.field(default=None, init=False)
    # Why this token was cancelled (its own cancel()'s source or the ancestor's whose cancel
    # reached it: "shutdown", "remote", ...), kept only while trio_cancel.otel is imported.
    _source: str | None = attrs.field(default=None, init=False)

    # ------------------------------------------------------------------ queries

    def is_cancelled(self) -> bool:
        """Whether a ``cancel()`` has reached this token. Not a checkpoint; never blocks."""
        return self._cancelled

    @property
    def reason(self) -> str | None:
        """The reason of the ``cancel()`` that reached this token; ``None`` while live."""
        return self._reason

    @property
    def cause(self) -> object | None:
        """The structured cause of the ``cancel()`` that reached this token, or ``None``.

        Lets code tell a timeout from a shutdown from a peer failure without parsing strings
        (Go's ``context.Cause``).
        """
        return self._cause

    def __bool__(self) -> bool:
        """Not allowed: a token's truth would read as "cancelled?" or "exists?" depending on who
        reads it. Write ``token.is_cancelled()`` (as :class:`trio.Event` forbids ``bool()``)."""
        raise TypeError(
            "the truth value of a CancellationToken is ambiguous; use token.is_cancelled()"
        )

    def __repr__(self) -> str:
        if self._cancelled:
            return f"<CancellationToken cancelled {self._reason!r}>"
        parts = ["live"]
        n_children = len(_live(self._children))
        if n_children:
            parts.append(f"{n_children} child{'ren' if n_children != 1 else ''}")
        n_scopes = _count(self._scopes)
        if n_scopes:
            parts.append(f"{n_scopes} scope{'s' if n_scopes != 1 else ''}")
        if self._callbacks:
            n = len(self._callbacks)
            parts.append(f"{n} callback{'s' if n != 1 else ''}")
        return f"<CancellationToken {', '.join(parts)}>"

    # ------------------------------------------------------------------ tree

    @trio.lowlevel.enable_ki_protection
    def child_token(self) -> CancellationToken:
        """A new token that is cancelled when this one is.

        Cancelling the child never touches this token or its other children. A child of a
        cancelled token is born cancelled with the same reason and cause. This token holds the
        child only weakly: a child nobody references any more (and that has no ``on_cancel``
        callback) is freed.

        Not a checkpoint; never blocks.
        """
        child = CancellationToken()
        if self._cancelled:
            _born_cancelled(child, self)
            return child
        child._parents = self
        self._link_child(child)
        if self._cancelled:
            # A cancel() from another thread (a tree no run uses) marked this token while the
            # child was being linked, and may have listed the children before it: the child
            # is born cancelled instead (pass 1 writes the reason before the mark).
            _born_cancelled(child, self)  # type: ignore[unreachable]  # another thread
        return child

    @staticmethod
    @trio.lowlevel.enable_ki_protection
    def any(*tokens: CancellationToken) -> CancellationToken:
        """A linked token, cancelled as soon as any of ``tokens`` is, with that token's reason.

        The counterpart of JavaScript's ``AbortSignal.any`` and .NET's
        ``CreateLinkedTokenSource``. If inputs are already cancelled, the result is born
        cancelled with the reason of the first cancelled input in argument order (as
        ``AbortSignal.any`` does). With no inputs, only the result's
        own :meth:`cancel` cancels it. The inputs hold the result weakly, as a child.

        Not a checkpoint; never blocks.
        """
        for i, tok in enumerate(tokens):
            if not isinstance(tok, CancellationToken):
                raise TypeError(
                    f"CancellationToken.any() takes CancellationTokens; argument {i} is "
                    f"{type(tok).__name__}"
                )
        for tok in tokens:
            if tok._cancelled:
                return tok.child_token()
        linked = CancellationToken()
        unique = tuple(dict.fromkeys(tokens))
        linked._parents = unique
        for tok in unique:
            tok._link_child(linked)
        for tok in unique:  # as child_token(): an input cancelled meanwhile by another thread
            if tok._cancelled:
                _born_cancelled(linked, tok)
                break
        return linked

    def _link_child(self, child: CancellationToken) -> None:
        refs = self._children
        if refs is None:
            self._children = [weakref.ref(child)]
            return
        if len(refs) >= self._children_limit:
            # A new list, not an in-place rewrite: a cancel() in another thread (a tree no run
            # uses) may be iterating the old one, and would skip the entries that move.
            refs = [ref for ref in refs if ref() is not None]
            self._children = refs
            self._children_limit = max(8, 2 * len(refs))
        refs.append(weakref.ref(child))

    # ------------------------------------------------------------------ cancel

    @trio.lowlevel.enable_ki_protection
    def cancel(self, reason: str | None = None, *, cause: object | None = None) -> None:
        """Cancel this token and every descendant.

        Idempotent: the first call wins and its reason and cause stay. When only ``cause`` is
        given, the reason is ``str(cause)``. Before returning, in this order: every token of the
        subtree reads as cancelled; every bound scope is cancelled with
        ``CancelScope.cancel(reason=...)`` and every waiter is woken; every ``on_cancel``
        callback has run (a token's own in registration order, a token's before its
        descendants', siblings in the order they were created). A callback that raises never
        stops the others: the exceptions are raised afterwards, together, as one
        :exc:`ExceptionGroup`.

        Iterative, never recursive; linear in the tokens, scopes and callbacks reached.

        Not a checkpoint; never blocks. ``KeyboardInterrupt``-protected, as Trio's own
        ``CancelScope.cancel`` is: a Ctrl+C is delivered after the whole subtree is done, never
        halfway. Call it from the Trio thread. A tree that no running :func:`trio.run` has used
        (no scope bound, no task waiting, no timer, no callback registered inside a run, on
        this token or a descendant) is plain data and may be cancelled from any thread; once a
        live run has used it, call it from another thread through
        ``trio.from_thread.run_sync(token.cancel, reason)``.

        Args:
            reason: A string carried by the resulting :exc:`trio.Cancelled` exceptions.
            cause: Any object describing why (an exception, an enum member...).

        Raises:
            TypeError: ``reason`` is not a string or None.
            RuntimeError: Called from another thread than the one of a still-running
                :func:`trio.run` in which this token or a descendant was used (whatever is
                registered at this moment); nothing was changed, so the same call through
                ``trio.from_thread.run_sync`` does the whole job.
            ExceptionGroup: One or more ``on_cancel`` callbacks raised.
        """
        check_reason(reason)
        if self._cancelled:
            return
        run = self._run
        if run is not None:
            _check_run(run)  # used in a run: only that run's thread, and only while it runs
        if reason is None and cause is not None:
            reason = str(cause)
        order = self._mark_and_wake(reason, cause)
        errors = _run_callbacks(order)
        del order  # the frame of this call holds nothing of the subtree while a group unwinds
        if errors:
            try:
                raise BaseExceptionGroup(
                    f"{len(errors)} on_cancel callback{'s' if len(errors) != 1 else ''} raised",
                    errors,
                )
            finally:
                del errors

    def _mark_and_wake(self, reason: str | None, cause: object | None) -> list[CancellationToken]:
        """Passes 1 and 2 of ``cancel()``: mark the subtree (returned in pre-order), release
        what it owns, cancel its scopes and wake its waiters."""
        # A large cancel allocates as it goes (lists, outcomes, cancel statuses); with many
        # long-lived objects in the heap, the cyclic collector would run inside this call
        # again and again. From the Trio thread it is paused (by thresholds, never by
        # disabling it) while the subtree is marked and woken (not during the callbacks, which
        # are user code); the program's setting comes back on every path.
        pausable = trio.lowlevel.in_trio_run()
        paused = False
        try:
            # Pass 1: mark the subtree, in pre-order.
            order: list[CancellationToken] = []
            stack = [self]
            while stack:
                node = stack.pop()
                if node._cancelled:
                    continue
                # The reason first: child_token() in another thread reads it once it sees
                # the mark (see _born_cancelled).
                node._reason = reason
                node._cause = cause
                node._cancelled = True
                order.append(node)
                children = node._children
                if children:
                    if pausable and not paused and len(children) >= GC_PAUSE_AT:
                        pause_collector()
                        paused = True
                    # reversed so that children are visited in creation order
                    stack.extend(reversed(_live(children)))

            # Pass 2: release ownership, wake waiters, collect the bound scopes; then cancel them
            # all in one cancel_scopes() call (one cancel reason, one Python frame for all).
            scopes_to_cancel: list[trio.CancelScope] = []
            wake: TokenWake | None = None
            for node in order:
                if node._pins:
                    # Only a linked token (any()) can have a live parent outside the subtree.
                    for parent in _parents_of(node):
                        if not parent._cancelled:
                            parent._unpin_child(node)
                    node._pins = 0
                node._parents = ()
                node._children = None
                node._pinned = None
                if node._timer is not None:
                    node._timer.release()
                    node._timer = None
                scopes = node._scopes
                if scopes is not None:
                    node._scopes = None
                    if type(scopes) is set:
                        scopes_to_cancel.extend(scopes)
                    else:
                        scopes_to_cancel.append(scopes)  # type: ignore[arg-type]
                waiters = node._waiters
                if waiters is not None:
                    node._waiters = None
                    if wake is None:
                        wake = TokenWake(reason)
                    if type(waiters) is dict:
                        if pausable and not paused and len(waiters) >= GC_PAUSE_AT:
                            pause_collector()
                            paused = True
                        for task in waiters:
                            trio.lowlevel.reschedule(task, outcome.Value(wake))
                    else:
                        trio.lowlevel.reschedule(waiters, outcome.Value(wake))  # type: ignore[arg-type]

            created: tuple[object, ...] = ()
            if scopes_to_cancel:
                created = cancel_scopes(scopes_to_cancel, reason)
            if _hooks.active:  # trio_cancel.otel: why these scopes were cancelled
                _hooks.token_cancelled(self, created, order)
        finally:
            if paused:
                resume_collector()
        return order

    def _add_pin(self) -> None:
        stack = [self]
        while stack:
            node = stack.pop()
            node._pins += 1
            if node._pins == 1:
                for parent in _parents_of(node):
                    if parent._pinned is None:
                        parent._pinned = set()
                    parent._pinned.add(node)
                    stack.append(parent)

    def _remove_pin(self) -> None:
        stack = [self]
        while stack:
            node = stack.pop()
            if node._cancelled:
                continue
            node._pins -= 1
            if node._pins == 0:
                for parent in _parents_of(node):
                    if parent._pinned is not None:
                        parent._pinned.discard(node)
                    stack.append(parent)

    def _unpin_child(self, child: CancellationToken) -> None:
        if self._pinned is not None:
            self._pinned.discard(child)
        self._remove_pin()

    def _add_scope(self, cs: trio.CancelScope) -> None:
        """Bind an existing (possibly not yet entered) scope: O(1)."""
        if self._cancelled:
            cs.cancel(reason=self._reason)
            _hooks.bound_late(self, cs)  # trio_cancel.otel: the source
            return
        # _mark_used(), its common case inline (this runs for every bound scope).
        try:
            root = _current_root_task()
        except RuntimeError:  # outside trio.run: plain data
            root = None
        if root is not None:
            run = _weak(root)  # the same object for every call in this run
            if self._run is not run:
                self._mark_run(run)
        scopes = self._scopes
        if scopes is None:
            self._scopes = cs
        elif type(scopes) is set:
            scopes.add(cs)
        else:
            self._scopes = {scopes, cs}  # type: ignore[arg-type]

    def _mark_used(self) -> None:
        """Record, on this token and every ancestor, that the tree is used in the current run
        (invariant 7). Amortised O(1): the walk stops at a node that already has the mark."""
        try:
            root = _current_root_task()
        except RuntimeError:  # outside trio.run: plain data
            return
        if root is None:  # pragma: no cover - a run always has its root task
            return
        run = _weak(root)  # the same object for every call in this run
        if self._run is not run:
            self._mark_run(run)

    def _mark_run(self, run: weakref.ref[trio.lowlevel.Task]) -> None:
        """Give this token and its ancestors the mark ``run`` (see :meth:`_mark_used`)."""
        self._run = run
        parents = self._parents
        if type(parents) is not tuple and parents._run is run:  # type: ignore[union-attr]
            return  # the common case: a child of a marked parent
        stack = list(_parents_of(self))
        while stack:
            node = stack.pop()
            if node._run is not run:
                node._run = run
                stack.extend(_parents_of(node))

    def _discard_scope(self, cs: trio.CancelScope) -> None:
        scopes = self._scopes
        if scopes is cs:
            self._scopes = None
        elif type(scopes) is set:
            scopes.discard(cs)

    # ------------------------------------------------------------------ waiting

    async def wait_cancelled(self) -> None:
        """Wait until this token is cancelled (tokio ``cancelled()``).

        Cancellation:
            Always a checkpoint: returns at once (after a checkpoint) if the token is already
            cancelled. Cancelling the caller while it waits raises :exc:`trio.Cancelled` and
            changes nothing; waiting does not bind the token to the caller's scopes.
        """
        if self._cancelled:
            await trio.lowlevel.checkpoint()
            return
        # Park this task directly (lighter than an Event per token); cancel() reschedules it.
        self._mark_used()
        task = trio.lowlevel.current_task()
        waiters = self._waiters
        if waiters is None:
            self._waiters = task
        elif type(waiters) is dict:
            waiters[task] = None
        else:
            self._waiters = {waiters: None, task: None}  # type: ignore[dict-item]

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            current = self._waiters
            if current is task:
                self._waiters = None
            elif type(current) is dict:
                current.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def cancel_scope(self) -> AbstractContextManager[trio.CancelScope, bool]:
        """Bind a new :class:`trio.CancelScope` to this token: ``with token.cancel_scope() as cs:``.

        The body is cancelled when the token is (at once if it already is), with the token's
        reason on the :exc:`trio.Cancelled`. Like :func:`trio.move_on_after`, the scope absorbs
        that cancellation: execution continues after the block and ``cs.cancelled_caught``
        tells whether the body was cut short. The scope is unregistered from the token when the
        block exits.

        Cancellation:
            Entering and leaving are not checkpoints. A cancellation from outside (an enclosing
            scope, another token's scope) is not absorbed: it propagates as usual.
        """
        return _new_bound_scope(_BoundScope, self)

    def fail_scope(self) -> AbstractContextManager[trio.CancelScope, None]:
        """As :meth:`cancel_scope`, but fail when the token cut the body short.

        If the body was cut short by this scope (``cs.cancelled_caught``: the token cancelled
        it, or you cancelled ``cs`` yourself), the exit raises :exc:`OperationCancelledError`
        with the token's ``reason`` and ``cause``, as :func:`trio.fail_after` raises
        :exc:`trio.TooSlowError`; so the block never ends quietly half-done, and
        ``return await ...`` inside it type-checks. A body that finishes before a checkpoint
        delivers the cancellation raises nothing.

        Cancellation:
            Entering and leaving are not checkpoints. A cancellation from outside propagates
            unchanged and is never turned into :exc:`OperationCancelledError`.
        """
        return _new_bound_scope(_BoundFailScope, self)

    async def run_until_cancelled(
        self, async_fn: Callable[[*PosArgsT], Awaitable[T]], *args: *PosArgsT
    ) -> T | None:
        """Run ``async_fn(*args)`` in a scope bound to this token.

        Returns:
            What ``async_fn`` returned, or ``None`` if the token cancelled it first. If the
            token is already cancelled, ``async_fn`` is never started. A value returned after
            the token fired but before a checkpoint delivered the cancellation is kept.

        Cancellation:
            Always a checkpoint. A cancellation from outside propagates as
            :exc:`trio.Cancelled` as usual; exceptions of ``async_fn`` propagate unchanged.
        """
        if self._cancelled:
            await trio.lowlevel.checkpoint()
            return None
        await trio.lowlevel.checkpoint_if_cancelled()
        with self.cancel_scope():
            result = await async_fn(*args)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return result
        # The token's cancellation was delivered (at a checkpoint) and absorbed.
        return None

    # ------------------------------------------------------------------ guards, callbacks

    def drop_guard(self, reason: str | None = None) -> DropGuard:
        """A guard that cancels this token when its block exits, by any route.

        ``with token.drop_guard():`` and ``async with token.drop_guard():`` both work (tokio
        ``drop_guard()``). Call :meth:`DropGuard.disarm` inside the block to keep the token
        live. Not a checkpoint; never blocks.

        Args:
            reason: The reason the guard cancels with.
        """
        check_reason(reason)
        return DropGuard._create(self, reason)

    @trio.lowlevel.enable_ki_protection
    def on_cancel(self, callback: Callable[[], object]) -> Registration:
        """Run ``callback()`` synchronously inside the ``cancel()`` that reaches this token.

        If the token is already cancelled, the callback runs now, inside this call, and its
        exception (if any) propagates bare from here. Otherwise the returned
        :class:`Registration` can :meth:`~Registration.unregister` it, or be used as a context
        manager that unregisters on exit. A registered callback keeps its token alive (it is
        held by the token's ancestors) until it runs or is unregistered.

        Not a checkpoint; never blocks.

        Raises:
            TypeError: ``callback`` is not callable, or is an async function (its call would
                only build a coroutine that nobody awaits).
        """
        check_sync_callable(callback, "on_cancel()")
        registration = Registration._create(self, callback)
        if self._cancelled:
            registration._done = True
            callback()
            return registration
        self._mark_used()
        if self._callbacks is None:
            self._callbacks = {}
        self._callbacks[registration] = callback
        self._add_pin()
        track_registration(registration)
        return registration

    @trio.lowlevel.enable_ki_protection
    def cancel_after(self, seconds: float, reason: str | None = None) -> None:
        """Cancel this token ``seconds`` from now on Trio's clock.

        Works with :class:`trio.testing.MockClock` and autojump. A later call replaces the
        pending timer. No timer outlives :func:`trio.run` or keeps it from returning: a pending
        timer is dropped when the run ends. ``0`` cancels promptly (within the current
        scheduling round, not inside this call). A no-op on a cancelled token. A timer costs
        nothing once it no longer matters: one that is replaced, or whose token is cancelled
        first, is released at once (amortised O(1)), and a fired timer keeps no token alive.
        If a callback raises an ``Exception`` when the timer fires, the error is logged on the
        ``trio_cancel`` logger (nobody is there to raise it to); a ``BaseException``
        (``KeyboardInterrupt``, ``SystemExit``) propagates out of :func:`trio.run` as itself.

        Not a checkpoint; never blocks.

        Raises:
            RuntimeError: Called outside :func:`trio.run`.
            ValueError: ``seconds`` is negative, NaN, or too large for a float.
        """
        seconds = check_seconds(seconds, "seconds")
        check_reason(reason)
        try:
            now = trio.current_time()
        except RuntimeError:
            raise RuntimeError("cancel_after() must be called inside trio.run") from None
        if self._cancelled:
            return
        self._mark_used()
        if self._timer is not None:
            self._timer.release()
        self._timer = timer_service().schedule(self, now + seconds, reason)


def _run_callbacks(order: list[CancellationToken]) -> list[BaseException]:
    """Pass 3 of ``cancel()``: the callbacks. Each is taken out of its dict just before it runs,
    so that one callback can still unregister another that has not run yet (on any token).

    The errors' tracebacks hold this frame: it is emptied before it returns, so that a raised
    group keeps nothing of the subtree alive (no reference cycle).
    """
    errors: list[BaseException] = []
    for node in order:
        callbacks = node._callbacks
        if not callbacks:
            continue
        for registration in list(callbacks):
            callback = callbacks.pop(registration, None)
            if callback is None:
                continue  # unregistered by an earlier callback
            registration._done = True
            try:
                callback()
            except BaseException as exc:  # noqa: BLE001, ASYNC103 - re-raised by cancel() in a group
                errors.append(exc)
        node._callbacks = None
    order = node = callbacks = registration = callback = None  # type: ignore[assignment]
    try:
        return errors
    finally:
        del errors


def _current_run() -> weakref.ref[trio.lowlevel.Task] | None:
    """The identity of the Trio run of this thread (a weak reference to its root task, the
    same object every time), or ``None`` outside :func:`trio.run`."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return None
    return None if root is None else weakref.ref(root)


def _check_run(run: weakref.ref[trio.lowlevel.Task]) -> None:
    """For ``cancel()`` of a tree used in the run ``run``: raise ``RuntimeError`` unless the
    caller is that run's thread, or that run has ended."""
    if _current_run() is run:
        return
    root = run()
    if root is None or root.coro.cr_frame is None:  # that run has ended: plain data again
        return
    raise RuntimeError(
        "CancellationToken.cancel() must be called from the Trio thread of the run in which this "
        "token (or a descendant) is used, while that run lasts; nothing was changed: call it "
        "through trio.from_thread.run_sync(token.cancel, reason)"
    )


def release_timer(token: CancellationToken) -> None:
    """Drop ``token``'s pending ``cancel_after`` timer, if any (for a token whose work ended
    before its deadline: the timer would otherwise keep it alive until then)."""
    if token._timer is not None:
        token._timer.release()
        token._timer = None


@attrs.frozen
class TokenWake:
    """What a task parked in ``wait_cancelled()`` is woken with: one per ``cancel()`` call.

    ``CancellationLatency`` recognises these wake-ups (they are cancellations by a token, just
    delivered cooperatively rather than as a ``trio.Cancelled``).
    """

    reason: str | None


def _parents_of(node: CancellationToken) -> tuple[CancellationToken, ...]:
    parents = node._parents
    return parents if type(parents) is tuple else (parents,)  # type: ignore[return-value]


def _live(refs: list[weakref.ref[CancellationToken]] | None) -> list[CancellationToken]:
    if not refs:
        return []
    return [child for ref in refs if (child := ref()) is not None]


def _count(slot: object) -> int:
    if slot is None:
        return 0
    if isinstance(slot, set | dict):
        return len(slot)
    return 1


class _BoundScope(metaclass=NoPublicConstructor):
    """The context manager returned by ``cancel_scope()``: absorbs the token's cancellation."""

    __slots__ = ("_scope", "_token")
    # Set by _new_bound_scope() (the only constructor).
    _token: CancellationToken
    _scope: trio.CancelScope | None  # None until entered

    # Registering with the token and entering the scope (and leaving and unregistering) are one
    # change, protected as Trio protects CancelScope.__enter__/__exit__: no Ctrl+C in between.
    @trio.lowlevel.enable_ki_protection
    def __enter__(self) -> trio.CancelScope:
        if self._scope is not None:
            raise RuntimeError("this token scope was already entered; make a new one")
        cs = self._scope = trio.CancelScope()
        self._token._add_scope(cs)
        return cs.__enter__()

    @trio.lowlevel.enable_ki_protection
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        cs = self._scope
        assert cs is not None
        self._token._discard_scope(cs)
        return cs.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._token!r}>"


def _new_bound_scope(cls: type[_B], token: CancellationToken) -> _B:
    """A new ``cls`` bound to ``token``, built without the metaclass's ``_create`` (and its
    frames): ``cancel_scope()`` runs once per block."""
    bound: _B = _new_object(cls)
    bound._token = token
    bound._scope = None
    return bound


_new_object: Any = object.__new__


@final
class _BoundFailScope(_BoundScope):
    """The context manager returned by ``fail_scope()``: never swallows an exception."""

    __slots__ = ()

    @trio.lowlevel.enable_ki_protection
    def __exit__(  # type: ignore[override]
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        cs = self._scope
        assert cs is not None
        if cs.cancelled_caught:
            token = self._token
            raise OperationCancelledError(token._reason, token._cause) from None


@final
@attrs.define(eq=False, repr=False)
class Registration(metaclass=NoPublicConstructor):
    """An ``on_cancel`` callback's registration, returned by :meth:`CancellationToken.on_cancel`.

    States: *pending* (registered), then *done* (it ran, or was unregistered). As a context
    manager it unregisters on exit. Not constructed by users.
    """

    _token: CancellationToken
    _callback: Callable[[], object]
    _done: bool = attrs.field(default=False, init=False)

    @trio.lowlevel.enable_ki_protection
    def unregister(self) -> bool:
        """Remove the callback. Not a checkpoint; never blocks.

        Also works from inside another ``on_cancel`` callback while ``cancel()`` runs them:
        the callback then never runs if it had not yet.

        Returns:
            True if it was removed; False if it already ran or was already unregistered.
        """
        if self._done:
            return False
        token = self._token
        callbacks = token._callbacks
        if callbacks is None or callbacks.pop(self, None) is None:
            return False  # it ran (or is running) inside cancel()
        self._done = True
        token._remove_pin()
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unregister()

    def __repr__(self) -> str:
        state = "done" if self._done or self._token._cancelled else "pending"
        return f"<Registration {state} {self._callback!r}>"


def _born_cancelled(child: CancellationToken, parent: CancellationToken) -> None:
    """Mark ``child``, which nobody else has seen yet (it owns nothing), as cancelled by
    ``parent``: a child of a cancelled token, or one whose parent's mark a ``cancel()`` in
    another thread wrote while ``child`` was being linked (invariant 4). That ``cancel()`` may
    also have reached ``child`` (it was linked before the children were listed): the same
    values are written, and what it releases is already empty. The weak reference left in
    ``parent._children`` may outlive that ``cancel()``'s release; it points at a cancelled
    token and is never walked again."""
    child._reason = parent._reason
    child._cause = parent._cause
    child._cancelled = True
    child._parents = ()
    if _hooks.active:  # trio_cancel.otel: the parent's source
        _hooks.born_cancelled(child, parent)


# Looked up once: _add_scope() and _mark_used() run for every bound scope.
_current_root_task = trio.lowlevel.current_root_task
_weak = weakref.ref
