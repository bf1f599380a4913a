"""trio_cancel: precise cancellation for Trio.

Hierarchical cancellation tokens, abortable task handles, signal channels, drop guards and
graceful shutdown, built on Trio's cancel scopes and nurseries. Import it as
``import trio_cancel as tc``.
"""

from __future__ import annotations

from ._broadcast import (
    BroadcastReceiver as BroadcastReceiver,
    BroadcastSender as BroadcastSender,
    open_broadcast_channel as open_broadcast_channel,
)
from ._collector import deferred_full_collections as deferred_full_collections
from ._exceptions import (
    CommitOutcomeUnknownError as CommitOutcomeUnknownError,
    LaggedError as LaggedError,
    OperationCancelledError as OperationCancelledError,
    SelectError as SelectError,
)
from ._guard import (
    AsyncGuard as AsyncGuard,
    CleanupTimeoutWarning as CleanupTimeoutWarning,
    DropGuard as DropGuard,
    Transaction as Transaction,
    TransactionGuard as TransactionGuard,
    async_guard as async_guard,
    commit_or_rollback as commit_or_rollback,
)
from ._joinset import JoinSet as JoinSet
from ._latency import (
    CancellationLatency as CancellationLatency,
    LatencyRecord as LatencyRecord,
    SlowStep as SlowStep,
)
from ._maycancel import MayCancel as MayCancel, may_cancel as may_cancel
from ._notify import Notify as Notify
from ._oneshot import (
    OneshotReceiver as OneshotReceiver,
    OneshotSender as OneshotSender,
    open_oneshot_channel as open_oneshot_channel,
)
from ._outcome import (
    Aborted as Aborted,
    Completed as Completed,
    Failed as Failed,
    Outcome as Outcome,
)
from ._process import ProcessExit as ProcessExit
from ._select import Merge as Merge, Selected as Selected, merge as merge, select as select
from ._shutdown import (
    GracefulShutdown as GracefulShutdown,
    LandingReport as LandingReport,
    TaskLanding as TaskLanding,
)
from ._streams import receive_into as receive_into, send_all_from as send_all_from
from ._task import (
    AbortHandle as AbortHandle,
    TaskHandle as TaskHandle,
    spawn as spawn,
    start as start,
)
from ._tasktree import (
    TaskTree as TaskTree,
    TaskTreeNode as TaskTreeNode,
    current_task_tree as current_task_tree,
)
from ._threads import (
    ThreadCallStatistics as ThreadCallStatistics,
    run_sync_interruptible as run_sync_interruptible,
    thread_call_statistics as thread_call_statistics,
)
from ._token import (
    CancellationToken as CancellationToken,
    Registration as Registration,
)
from ._util import fixup_module_metadata as _fixup_module_metadata
from ._watch import (
    WatchReceiver as WatchReceiver,
    WatchSender as WatchSender,
    open_watch_channel as open_watch_channel,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "AbortHandle",
    "Aborted",
    "AsyncGuard",
    "BroadcastReceiver",
    "BroadcastSender",
    "CancellationLatency",
    "CancellationToken",
    "CleanupTimeoutWarning",
    "CommitOutcomeUnknownError",
    "Completed",
    "DropGuard",
    "Failed",
    "GracefulShutdown",
    "JoinSet",
    "LaggedError",
    "LandingReport",
    "LatencyRecord",
    "MayCancel",
    "Merge",
    "Notify",
    "OneshotReceiver",
    "OneshotSender",
    "OperationCancelledError",
    "Outcome",
    "ProcessExit",
    "Registration",
    "SelectError",
    "Selected",
    "SlowStep",
    "TaskHandle",
    "TaskLanding",
    "TaskTree",
    "TaskTreeNode",
    "ThreadCallStatistics",
    "Transaction",
    "TransactionGuard",
    "WatchReceiver",
    "WatchSender",
    "async_guard",
    "commit_or_rollback",
    "current_task_tree",
    "deferred_full_collections",
    "may_cancel",
    "merge",
    "open_broadcast_channel",
    "open_oneshot_channel",
    "open_watch_channel",
    "receive_into",
    "run_sync_interruptible",
    "select",
    "send_all_from",
    "spawn",
    "start",
    "thread_call_statistics",
]

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
