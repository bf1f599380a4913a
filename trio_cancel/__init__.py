"""trio_cancel: precise cancellation for Trio.

Hierarchical cancellation tokens, abortable task handles, signal channels, drop guards and
graceful shutdown, built on Trio's cancel scopes and nurseries. Import it as
``import trio_cancel as tc``.
"""

from __future__ import annotations

from ._exceptions import OperationCancelledError as OperationCancelledError
from ._task import (
    Aborted as Aborted,
    AbortHandle as AbortHandle,
    Completed as Completed,
    Failed as Failed,
    JoinSet as JoinSet,
    Outcome as Outcome,
    TaskHandle as TaskHandle,
    spawn as spawn,
)
from ._tasktree import (
    TaskTree as TaskTree,
    TaskTreeNode as TaskTreeNode,
    current_task_tree as current_task_tree,
)
from ._token import (
    CancellationToken as CancellationToken,
    DropGuard as DropGuard,
    Registration as Registration,
)
from ._util import fixup_module_metadata as _fixup_module_metadata

__version__ = "0.1.0.dev0"

__all__ = [
    "AbortHandle",
    "Aborted",
    "CancellationToken",
    "Completed",
    "DropGuard",
    "Failed",
    "JoinSet",
    "OperationCancelledError",
    "Outcome",
    "Registration",
    "TaskHandle",
    "TaskTree",
    "TaskTreeNode",
    "current_task_tree",
    "spawn",
]

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
