"""A printable snapshot of the running task tree, with cancellation state (a debugging aid).

Public Trio API gives the shape (``Task.child_nurseries``, ``Nursery.child_tasks``) and each
nursery's ``cancel_scope.cancel_called``. Two facts come from Trio internals, read defensively
(``None`` when unavailable): whether a task is *effectively* cancelled (some enclosing scope is),
and the reason a nursery's scope was cancelled with. Tasks started with :func:`spawn` also show
their handle's state and bound token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, final

import attrs
import trio

from ._task import CURRENT_HANDLE
from ._trio_internals import effectively_cancelled, scope_reason

if TYPE_CHECKING:
    from collections.abc import Iterator


@final
@attrs.frozen
class TaskTreeNode:
    """One task or nursery in a :class:`TaskTree`.

    Attributes:
        kind: ``"task"`` or ``"nursery"``.
        name: The task's name (for a nursery, the name of the task that opened it).
        cancelled: For a nursery, whether its scope was cancelled; for a task, whether it is
            effectively cancelled (``None`` if Trio did not say).
        reason: The reason of a nursery scope's cancellation, when known.
        handle: For a task started by :func:`spawn`, its handle's state
            (``pending``, ``running``, ``aborting``, ``finished ...``).
        token: For such a task bound to a token, the token's repr.
        children: Nurseries of a task; tasks of a nursery.
    """

    kind: Literal["task", "nursery"]
    name: str
    cancelled: bool | None
    reason: str | None = None
    handle: str | None = None
    token: str | None = None
    children: tuple[TaskTreeNode, ...] = ()

    def label(self) -> str:
        """One line describing this node."""
        if self.kind == "nursery":
            state = "cancelled" if self.cancelled else "open"
            if self.cancelled and self.reason:
                state += f" ({self.reason!r})"
            return f"nursery [{state}]"
        parts = [f"task {self.name!r}"]
        if self.cancelled:
            parts.append("[cancelled]")
        if self.handle is not None:
            parts.append(f"handle: {self.handle}")
        if self.token is not None:
            parts.append(f"token: {self.token}")
        return " ".join(parts)


@final
@attrs.frozen
class TaskTree:
    """A snapshot of the task tree, from :func:`current_task_tree`. ``str()`` renders it."""

    root: TaskTreeNode

    def walk(self) -> Iterator[TaskTreeNode]:
        """Every node, parents before children."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def tasks(self) -> list[TaskTreeNode]:
        """Every task node, parents before children."""
        return [n for n in self.walk() if n.kind == "task"]

    def __str__(self) -> str:
        lines: list[str] = []
        stack: list[tuple[TaskTreeNode, str, str]] = [(self.root, "", "")]
        while stack:
            node, first, rest = stack.pop()
            lines.append(first + node.label())
            kids = node.children
            for i in range(len(kids) - 1, -1, -1):
                last = i == len(kids) - 1
                stack.append(
                    (kids[i], rest + ("└─ " if last else "├─ "), rest + ("   " if last else "│  "))
                )
        return "\n".join(lines)


def _task_name(task: trio.lowlevel.Task) -> str:
    return task.name


def _task_node(task: trio.lowlevel.Task, children: tuple[TaskTreeNode, ...]) -> TaskTreeNode:
    handle = task.context.get(CURRENT_HANDLE)
    handle_state = token_repr = None
    if handle is not None and handle._task is task:
        handle_state = handle._state()
        if handle.token is not None:
            token_repr = repr(handle.token)
    return TaskTreeNode(
        kind="task",
        name=task.name,
        cancelled=effectively_cancelled(task),
        handle=handle_state,
        token=token_repr,
        children=children,
    )


def current_task_tree(root: trio.lowlevel.Task | None = None) -> TaskTree:
    """A snapshot of the tasks below ``root`` (default: the whole run, from Trio's root task).

    Reach for it when "who is still running after I cancelled?" matters: ``print()`` it, or
    filter ``tree.tasks()``. Pass ``trio.lowlevel.current_task()`` to see only what the
    current task started. Built iteratively; the snapshot does not change afterwards.

    Not a checkpoint; never blocks.

    Raises:
        RuntimeError: Called outside :func:`trio.run`.
    """
    if root is None:
        root = trio.lowlevel.current_root_task()
        if root is None:  # pragma: no cover - only during run start-up
            raise RuntimeError("current_task_tree() needs a running trio.run")
    # Post-order without recursion: visit, then build a node once all its children are built.
    built: dict[int, TaskTreeNode] = {}
    stack: list[tuple[trio.lowlevel.Task | trio.Nursery, bool]] = [(root, False)]
    while stack:
        obj, expanded = stack.pop()
        kids: list[trio.lowlevel.Task | trio.Nursery]
        if isinstance(obj, trio.lowlevel.Task):
            kids = list(obj.child_nurseries)
        else:
            tasks: list[trio.lowlevel.Task] = sorted(obj.child_tasks, key=_task_name)
            kids = [*tasks]
        if not expanded:
            stack.append((obj, True))
            stack.extend((k, False) for k in reversed(kids))
            continue
        children = tuple(built.pop(id(k)) for k in kids)
        if isinstance(obj, trio.lowlevel.Task):
            built[id(obj)] = _task_node(obj, children)
        else:
            built[id(obj)] = TaskTreeNode(
                kind="nursery",
                name=obj.parent_task.name,
                cancelled=obj.cancel_scope.cancel_called,
                reason=scope_reason(obj.cancel_scope),
                children=children,
            )
    return TaskTree(built[id(root)])
