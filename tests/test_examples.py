"""Runs every script in examples/ as a user would, and checks the lines each must print.

Each entry maps a script to the regular expressions its output must match, in order, and those
it must never match. A script added to examples/ without an entry here fails
``test_every_example_is_checked``. A live run asserts the lines and the events they report, not
how long things took (measured durations in the patterns accept any number: see ``_untimed``);
the recorded runs shown in the docs are held to the exact patterns. A script that needs an
optional program (``wrk``) is skipped without it, saying how to install it; CI installs it
and sets ``TRIO_CANCEL_REQUIRE_WRK=1``.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# What each script printed, as the docs' examples page shows it (tests/record_example_outputs.py).
OUTPUTS = Path(__file__).resolve().parent.parent / "docs" / "example_output"


@attrs.frozen
class Expect:
    lines: tuple[str, ...]  # regexes that must match, in this order
    never: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    # A guard against a hung script, not a speed requirement: generous for a loaded machine.
    timeout: float = 600
    needs: tuple[str, ...] = ()  # optional programs the script runs: skipped (saying so) without


# How to install each optional program a script needs (CI installs them: .ci/run).
INSTALL = {"wrk": "sudo apt-get install -y wrk (Debian, Ubuntu) or brew install wrk (macOS)"}


TX_GUARD_ROWS = (
    r"^  row 1: clean exit\s+-> committed$",
    r"^  row 2: early return\s+-> committed$",
    r"^  row 3: raised ValueError\s+-> rolled back$",
    r"^  row 4: cancelled after its write \(True\)\s+-> rolled back$",
    r"^  row 5: commit\(\) then clean exit\s+-> committed$",
    r"^  row 6: clean exit without commit\(\)\s+-> rolled back$",
    r"^  row 7: early return\s+-> rolled back$",
    r"^rows in the table: \[1, 2, 5\]$",
    r"^connection in a transaction afterwards: False$",
)
TRANSFER_LINES = (
    r"^naive transfer, cancelled between debit and credit:$",
    r"^  balances after the cancel: \{'alice': 100, 'bob': 50, 'carol': 0\}$",
    r"^  another writer meanwhile: failed, the row is locked",
    r"^  the cancelled connection still in a transaction: True$",
    r"^guarded transfer, cancelled at the same place:$",
    r"^  balances after the cancel: \{'alice': 100, 'bob': 50, 'carol': 0\}$",
    r"^  another writer meanwhile: ok$",
    r"^  the cancelled connection still in a transaction: False$",
    r"^guarded transfer cancelled at each of its \d+ cancellation points: "
    r"[1-9]\d* runs moved nothing, [1-9]\d* moved all 10, none moved part; total still 150$",
    r"^200 transfers with random deadlines: \d+ moved all, \d+ moved nothing, none moved part; "
    r"total still 150$",
)

CHECKS: dict[str, Expect] = {
    "http_server_shutdown.py": Expect(
        lines=(
            r"^20 in-flight requests, SIGTERM, 0\.5 s grace: exit code 0 after [\d.]+ s; "
            r"0 landed, 20 forced$",
        ),
        args=("--measure", "20", "--grace", "0.5"),
    ),
    "observe_cancellation.py": Expect(
        lines=(
            r"^Server spans exported \(one per request\):$",
            r"^  request +HTTP +trio_cancel\.source +status +trio_cancel\.reason$",
            r"^  /ok +200 +- +UNSET +-$",
            r"^  /slow +504 +request_timeout +ERROR +request timeout$",
            r"^  /hurried +504 +caller_deadline +ERROR +caller deadline$",
            r"^  /left +- +client_disconnect +UNSET +client disconnected$",
            r"^  /stuck +503 +shutdown_forced +ERROR +deploy: forced after the grace period$",
            r"^The app's own spans \(tc_otel\.span\):$",
            r"^  work /hurried: trio_cancel\.source = caller_deadline$",
            r"^  work /left: trio_cancel\.source = client_disconnect$",
            r"^  work /slow: trio_cancel\.source = request_timeout$",
            r"^  work /stuck: trio_cancel\.source = shutdown_forced$",
        ),
        never=(r"secret", r"Traceback"),
    ),
    "bench_otel.py": Expect(
        lines=(
            r"^bench_cancel\.py token-scope, 2,000 tasks: cancel to last join, elapsed "
            r"\(median of 1\)$",
            r"^  off +[\d.e+-]+ s +[+-]\d+\.\d % cost$",
            r"^  instrumented +[\d.e+-]+ s ",
            r"^  sdk +[\d.e+-]+ s ",
            r"^bench_cancel\.py token-scope, 2,000 tasks: cancel to last join, CPU time "
            r"\(median of 1\)$",
            r"^bench_cancel\.py joinset, 2,000 tasks: cancel to last join, elapsed "
            r"\(median of 1\)$",
        ),
        args=("--tasks", "2000", "--runs", "1", "--no-http"),
    ),
    "cancel_bus.py": Expect(
        lines=(
            r"^(cancel_bus\.py needs a PostgreSQL server|20 jobs: 5 of 5 cancelled jobs landed "
            r"aborted \(confirmed through the bus\), 15 completed untouched$)",
        ),
        never=(r"SOME OTHER JOB WAS TOUCHED", r"Traceback"),
    ),
    "bench_middleware.py": Expect(
        lines=(
            r"^plain app: +\d+ requests/s",
            r"^with middleware: +\d+ requests/s",
            r"^ratio: \d+\.\d\d ",
        ),
        args=("--seconds", "1", "--runs", "1"),
        needs=("wrk",),
    ),
    "deadline_chain.py": Expect(
        lines=(
            r"^1\. the client gives A a 0\.5 s budget; C has 2 s of work:$",
            r'^  the client got 504 \{"code": "deadline_exceeded", "message": "caller deadline"\}$',
            r"^  budgets received: A 500 ms > B [34]\d\d ms > C [23]\d\d ms$",
            r"^  each hop saw a smaller budget than the one before: True$",
            r"^  C: handler cancelled at 0\.[2-4]\d s: caller deadline$",
            # Each caller passes its callee's 504 on; on a loaded machine its own deadline
            # may come first, and its middleware answers the same 504 itself.
            r"^  B: (?:passed its callee's 504 on at \S+ s"
            r"|handler cancelled at \S+ s: caller deadline)$",
            r"^  A: (?:passed its callee's 504 on at \S+ s"
            r"|handler cancelled at \S+ s: caller deadline)$",
            r"^2\. no deadline; the client goes away after 0\.2 s:$",
            r"^  A: handler cancelled at 0\.2\d s: client disconnected$",
            r"^  B: handler cancelled at 0\.2\d s: client disconnected$",
            r"^  C: handler cancelled at 0\.2\d s: client disconnected$",
        ),
    ),
    "worker_pool_shutdown.py": Expect(
        lines=(
            r"^pool running: press Ctrl\+C",
            r"^\(sending SIGINT to this process after 0\.5 s\)$",
            r"^shutting down: signal SIGINT$",
            r"^  worker-\d: finished [1-9]\d* jobs, then stopped waiting for work$",
            r"^  produced \d+ jobs$",
            r"^  \d+ jobs still queued",
            r"^shutdown 'signal SIGINT': 5 of 5 tasks landed within the 2 s grace period, "
            r"0 forced$",
        ),
        args=("--interrupt-after", "0.5"),
    ),
    "interrupt_blocking.py": Expect(
        lines=(
            r"^waited\s+caller back after\s+(0\.[3-9]\d|[1-9]\d*\.\d\d) s; thread done then",
            r"^abandoned\s+caller back after\s+0\.[23]\d s; thread still running then",
            r"^interrupted\s+caller back after\s+0\.[23]\d s; thread done then, "
            r"done after\s+0\.[23]",
            r"^grace out\s+caller back after\s+0\.[3-5]\d s; thread still running then",
            r"^  \(the interrupt was ignored: CleanupTimeoutWarning named the call\)$",
            r"^thread_call_statistics: 2 interrupted, 1 abandoned, 0 still running$",
            r"^SQLite, deadline to the interrupted query's return, 100 runs: p50 ",
            r"^1000 interrupted calls: threads \d+ -> \d+, RSS [\d.]+ -> [\d.]+ MB$",
        ),
        args=("--measure",),
    ),
    "bench_tasks.py": Expect(
        lines=(
            r"^2000 tasks, median of 1 runs, each in a fresh process$",
            r"^variant\s+start\s+cancel\+join\s+in cancel\s+bytes/task\s+start x\s+cancel x",
            r"^nursery\s+[\d.]+s\s+[\d.]+s\s+[\d.]+s\s+\d+\s+1\.00\s+1\.00\s+1\.00$",
            r"^token\s+[\d.]+s\s+[\d.]+s\s+[\d.]+s\s+\d+(\s+[\d.]+){3}$",
            r"^spawn\s+[\d.]+s\s+[\d.]+s\s+[\d.]+s\s+\d+(\s+[\d.]+){3}$",
            r"^spawn\+token\s+[\d.]+s\s+[\d.]+s\s+[\d.]+s\s+\d+(\s+[\d.]+){3}$",
        ),
        args=("--tasks", "2000", "--repeat", "1"),
    ),
    "abort_cpu_task.py": Expect(
        lines=(
            r"^--- 1\. cooperative",
            r"^Task was aborted$",
            r"the loop then stopped [\d.]+ ms after abort\(\), at its next checkpoint$",
            r"^--- 2\. no checkpoints",
            r"^Task was aborted: True$",
            r"^\s+worker process \d+ stopped burning CPU \d+ ms after abort\(\) \(killed\)$",
            r"^--- 3\. a thread can only be abandoned$",
            r"^Task was aborted: True$",
            r"^\s+but the abandoned thread still runs 200 ms later: True$",
        ),
        never=(r"^Completed:",),
    ),
    "drop_handle.py": Expect(
        lines=(
            r"^both handles are gone; the tasks are still running$",
            # both tasks wake in the same scheduling batch, in either order
            r"^Task completed \(handle (went out of scope|dropped with del)\)$",
            r"^Task completed \(handle (went out of scope|dropped with del)\)$",
            r"^nursery joined after 1\.\d s: dropping a handle cancels nothing$",
        ),
    ),
    "abort.py": Expect(
        lines=(r"^Task was cancelled$", r"^join\(\) -> Aborted\(reason='aborted by main'\)$"),
        never=(r"Task completed",),
    ),
    "task_outcomes.py": Expect(
        lines=(
            r"^compute: Completed\(42\)$",
            r"^crash: Failed\(ValueError\('disk on fire'\)\)$",
            r"^long_job: Aborted\('user pressed stop'\)$",
        ),
    ),
    "async_guard.py": Expect(
        lines=(
            r"^normal exit:$",
            r"^  s1: released$",
            r"^  open after the block: False$",
            r"^  s2: released$",
            r"^  the block's error still propagates: RuntimeError\('query failed'\); open: False$",
            r"^cancelled mid-await:$",
            r"^  s3: released$",
            r"^  cancelled: True; open: False$",
            r"^  s4: graceful shutdown$",
            r"^  s4: released$",
            r"^  releases: 1, guard armed: False$",
            r"^  gave up after 0\.1 s: timed_out=True; open: True$",
            r"^  CleanupTimeoutWarning: cleanup Session\.release overran its grace period "
            r"of 0\.1 s",
        ),
    ),
    "transfer_money.py": Expect(lines=(r"^database: SQLite file$", *TRANSFER_LINES)),
    "graceful_shutdown.py": Expect(
        lines=(
            r"^shutdown 'deploy v2': 990 of 1000 tasks landed within the 2 s grace period, "
            r"10 forced$",
            r"^cooperative tasks landed after 0\.\d\d to 1\.\d\d s$",
            r"^did not land in time: (legacy-\d, ){9}legacy-\d$",
            r"^  task\s+seconds\s+how\s+outcome$",
            r"^  legacy-\d\s+2\.\d{3}\s+forced\s+Aborted\(reason='deploy v2: forced after",
        ),
        never=(r"worker-\d+ .*forced",),
    ),
    "may_cancel_read.py": Expect(
        lines=(
            r"^with the token: \d+ of 40 bytes before it fired: b'the",
            r"^  partial: True; token reason: '0\.25 s is all we wait'$",
            r"^plain await: the remaining \d+ bytes, read to completion$",
            r"^buffer == message: True \(40 bytes, none lost or doubled\)$",
        ),
    ),
    "raii_connection.py": Expect(
        lines=(
            r"^free at start: 2$",
            r"^  conn-\d returned to the pool$",
            r"^  free: 2$",
            r"^cancelled mid-await:$",
            r"^  in use: conn-\d, free: 1$",
            r"^  conn-\d returned to the pool$",
            r"^  cancelled: True; free: 2$",
            r"^  conn-\d returned to the pool$",
            r"^  ValueError\('bad SQL'\) propagated; free: 2$",
        ),
        never=(r"never printed",),
    ),
    "cleanup_strategies.py": Expect(
        lines=(
            r"^  spawned: exit \(cancelled\), cleanup scheduled$",
            r"^  queued: exit \(cancelled\), cleanup scheduled$",
            r"^  threaded: exit \(cancelled\), cleanup scheduled$",
            r"^all three completed: True$",
        ),
    ),
    "blocking_cleanup.py": Expect(
        lines=(
            r"^blocking write in the cleanup: longest heartbeat gap \d+ ms$",
            r"^  file written: b'state v1'$",
            r"^write in a worker thread: +longest heartbeat gap \d+ ms$",
            r"^  file written: b'state v2'$",
            r"^the blocking version stalled every task: True$",
        ),
    ),
    "http_call_timeout.py": Expect(
        lines=(
            r"^Didn't receive a value within 10 ms$",
            r"^server received \d+ of 126 bytes, then the connection dropped$",
            r"^  body bytes: \d+ of 64 \(a partial request\)$",
            r"^  a prefix of the request, nothing else: True$",
        ),
        never=(r"received 126 of 126",),
    ),
    "timeout_middleware.py": Expect(
        lines=(
            r'^GET /fast -> 200 \{"path": "/fast", "took": 0\.01\}$',
            r'^GET /slow -> 408 \{"code": "deadline_exceeded", "message": "request timeout"\}$',
            r"^/fast: handler finished$",
            r"^/slow: handler cancelled after 0\.2 s \(request timeout\)$",
        ),
        never=(r"/slow: handler finished",),
    ),
    "rpc_long_running.py": Expect(
        lines=(
            r"^a call given 0\.35 s by its client \(Connect-Timeout-Ms: 350\):$",
            # connectrpc answers at the budget sent (350 ms), a little after it
            r"^   2\.0 s of work -> 504 deadline_exceeded after 0\.(3[5-9]|4\d) s$",
            r"^three calls in flight; the service token is cancelled after 0\.3 s:$",
            r"^  0\.05 s of work -> 200 ok +after 0\.\d\d s: worked 0\.05 s$",
            r"^ +[12]\.0 s of work -> 499 canceled +after 0\.\d\d s$",
            r"^      Request cancelled: server shutting down$",
            r"^ +[12]\.0 s of work -> 499 canceled +after 0\.\d\d s$",
            r"^a call made after the cancel:$",
            r"^  0\.05 s of work -> 499 canceled +after 0\.\d\d s$",
        ),
        never=(r"^ +[12]\.0 s of work -> 200",),
    ),
    "tx_guard.py": Expect(lines=(r"^database: SQLite file$", *TX_GUARD_ROWS)),
    "bench_cancel.py": Expect(
        lines=(
            r"^Cancel N tasks at once, until all are joined \(median; \d+ CPUs\)$",
            r"^variant\s+tasks\s+cancel\+join\s+per task\s+peak mem\s+bytes/task\s+CPU",
            r"^token\s+10,000\s+[\d.]+s\s+[\d.]+us\s+\d+MB\s+-?\d+\s+\d+%\s+[\d.]+$",
            r"^token-scope\s+10,000\s",
            r"^trio-nursery\s+10,000\s.*\s1\.00$",
            r"^trio-event\s+10,000\s",
            r"^asyncio\s+10,000\s",
            r"^  token-scope\s+gc on [\d.]+s, off [\d.]+s "
            r"\(GC share (\d+%|~0%: within the noise)\), gc\.freeze\(\)"
            r".*gc\.set_threshold\(100_000, 50, 100\) [\d.]+s",
            r"^  the cancel\(\) call alone \(token\): [\d.]+s with the collector on",
            r"^Cancel latency, token variant at 10,000 tasks .*\(10,000 landed\)$",
            r"^Memory: \d+ bytes per child token; a root that created and dropped 2,000 children",
            r"^Targets \(set for 100,000 tasks; at 10,000 the ratios are shown, not judged\):$",
            r"^  seed shape \(token\) <= 0\.35x trio-nursery\s+[\d.]+  n/a at this size$",
            r"^  JoinSet\.shutdown\(\) <= 1\.1x trio-nursery\s+[\d.]+  n/a at this size$",
            r"^  joinset\s+[+-]\d+$",
        ),
        never=(r"NOT met", r"GC share -"),
        args=("--quick", "--churn", "2000", "--results", "/dev/null"),
    ),
    "bench_channels.py": Expect(
        lines=(
            r"^\s*receivers variant\s+send\(\)\s+all woken\s+ns/receiver\s+ratio$",
            r"^\s+100 trio\.Event\s",
            r"^\s+100 broadcast\s",
            r"^\s+100 watch\s",
            r"^\s+100 Notify\s",
            r"^\s+1000 Notify\s",
        ),
        args=("--sizes", "100", "1000"),
    ),
    "bench_everyday.py": Expect(
        lines=(
            r"^Everyday calls \(median of 1; ratios against the first line of each row\)$",
            r"^row\s+variant\s+n\s+wall\s+per op\s+CPU\s+ratio\s+CPU ratio\s+target$",
            r"^spawn\s+floor\s+500\s+[\d.]+s\s+[\d.]+us\s+[\d.]+s\s+1\.00\s+1\.00$",
            r"^spawn\s+tc\.spawn\s+500\s.*\s1\.20[ !]$",
            r"^joinset\s+JoinSet\s+500\s.*\s1\.30[ !]$",
            r"^start\s+tc\.start\s+100\s",
            r"^cancel_scope\s+token\.cancel_scope\(\)\s+500\s",
            r"^child_token\s+child_token\(\)\s+500\s",
            r"^oneshot\s+oneshot\s+500\s",
            r"^watch\s+watch\s+500\s",
            r"^broadcast\s+broadcast\s+500\s",
            r"^select\s+tc\.select\s+100\s",
            r"^run_sync\s+run_sync_interruptible\s+100\s.*\s1\.05[ !]$",
            r"^sqlite\s+tc\.sqlite\s+100\s.*\s1\.10[ !]$",
            r"^postgres\s+(?:tc\.postgres\s+100|not run: TRIO_CANCEL_PG_DSN is not set)\b",
            r"^Bytes per handle kept after its task ended",
            r"^  tc\.spawn\s+\d+ bytes  \(500 tasks\)$",
            r"^JoinSet spawn \+ join_all, per task",
            r"^\s+5,000 tasks\s+[\d.]+s\s+[\d.]+us/task",
            r"^  spawn\s+[\d.]+ <= 1\.2\s+(met|NOT met)$",
            r"^  joinset per-task 5,000 vs 500\s+[\d.]+ <= 1\.2\s+(met|NOT met)$",
        ),
        never=(r"Traceback",),
        args=("--quick", "--results", "/dev/null"),
    ),
    "cancel_safety_sweep.py": Expect(
        lines=(
            r"^naive reader: NOT cancel-safe at checkpoint 2$",
            r"^\s+cancelled at cancel_safety_sweep\.py:\d+ in read_frame_naive$",
            r"^\s+chunks accounted for: \['hello'\]$",
            r"^fixed reader: cancel-safe at all 2 checkpoints$",
            r"^heartbeat loop with the fixed reader got \[\('5', 'hello'\), \('3', 'abc'\)\]$",
        ),
    ),
    "control_worker.py": Expect(
        lines=(
            r"^Processing: a$",
            r"^Processing: b$",
            r"^Worker paused$",
            r"^main: sent c and d while paused$",
            r"^main: after 200 ms, 2 items still wait$",
            r"^Worker resumed$",
            r"^Processing: c$",
            r"^Processing: d$",
            r"^Worker shutting down$",
        ),
    ),
    "task_pool.py": Expect(
        lines=(
            r"^quick: finished its work$",
            *(rf"^worker-{i}: stopped by shutdown$" for i in range(4)),
            r"^late: never started$",
            r"^shutdown returned after all 6 tasks ended$",
        ),
    ),
    "oneshot_cancel.py": Expect(
        lines=(
            r"^Task is cancelling\.\.\. \(signal received\)$",
            r"^Task is cleaning up$",
            r"^Task is cancelling\.\.\. \(sender closed without sending\)$",
            r"^Task is cleaning up$",
        ),
        never=(r"completed normally",),
    ),
    "broadcast_cancel.py": Expect(
        lines=(
            r"^sent to 2 receivers$",
            r"^Task [12] is cancelling\.\.\.$",
            r"^Task [12] is cleaning up$",
            r"^Task [12] is cancelling\.\.\.$",
            r"^Task [12] is cleaning up$",
            r"^slow consumer: saw [1-9]\d* of 100 values, skipped [1-9]\d*, last 100$",
        ),
        never=(r"completed normally",),
    ),
    "watch_cancel.py": Expect(
        lines=(
            r"^Task [12] is cancelling\.\.\.$",
            r"^Task [12] is cleaning up$",
            r"^Task [12] is cancelling\.\.\.$",
            r"^Task [12] is cleaning up$",
            r"^late subscriber: wait_changed\(\) missed the cancel \(gave up after 200 ms\)$",
            r"^late subscriber: wait_for\(\) sees the current value at once: True$",
        ),
        never=(r"completed normally",),
    ),
    "race.py": Expect(
        lines=(
            r"^parent: dropped an un-polled cancel_me\(\); it printed nothing$",
            r"^or_maybe_cancel_me: finished$",
            r"^cancel_me: cleaned up$",
            r"^parent2: race won by or_maybe_cancel_me; the loser had finished before this line$",
        ),
        never=(r"^cancel_me: finished$",),
    ),
    "merge_streams.py": Expect(
        lines=(
            r"^select loop, local-buffer reader: 5 of 5 channel messages, 0 of 5 socket lines "
            r"intact$",
            r"^  the socket lines it got: \['0', '1', '2', '3', '4'\] \(each line's first bytes",
            r"^select loop, LineChannel: 5 of 5 channel messages, 5 of 5 socket lines intact$",
            r"^tc\.merge: 5 of 5 channel messages, 5 of 5 socket lines intact$",
            r"^  in order: chan-0, sock-0, chan-1, sock-1, chan-2, sock-2, chan-3, sock-3, chan-4, "
            r"sock-4$",
            r"^cancel_at_each_checkpoint\(read_line_naive\): NOT cancel-safe at checkpoint \d+$",
            r"^  cancelled at merge_streams\.py:\d+ in read_line_naive: "
            r"byte = await stream\.receive_some\(1\)  # a cancellation here drops `line`$",
            r"^  check: b'sock-0\\n' sent, only b'ock-0\\n' left: the rest was lost$",
            r"^cancel_at_each_checkpoint\(LineChannel\.receive\): cancel-safe at all \d+ "
            r"checkpoints$",
        ),
        never=(r"Traceback",),
    ),
    "token_tree.py": Expect(
        lines=(
            r"^1000 leaf workers running under 1111 tokens$",
            r"^\d+ ticks in 2\.0 s$",
            r"^root\.cancel\(\): 1000 of 1000 leaves cancelled$",
            r"^the whole tree was joined [\d.]+ ms after cancel\(\)$",
        ),
    ),
    "token_cancel.py": Expect(
        lines=(
            r"^Task [12] is cancelling\.\.\.$",
            r"^Task [12] is cleaning up$",
            r"^Task [12] is cancelling\.\.\.$",
            r"^Task [12] is cleaning up$",
            r"^Task 3 is cancelling\.\.\.$",
            r"^child cancelled: True; parent cancelled: False$",
            r"^Task 4 still running under the parent token$",
            r"^Task 4 is cancelling\.\.\.$",
        ),
        never=(r"completed normally",),
    ),
    "cancel_me.py": Expect(
        lines=(
            r"^--- cancelled while pending at the await$",
            r"^1$",
            r"^cancelled at the await: True",
            r"^run_until_cancelled returned None; cancel_me never started$",
            r"^1$",
            r"^cancelled at its first checkpoint: True$",
        ),
        never=(r"^2$",),
    ),
    "query_timeout.py": Expect(
        lines=(
            r"^slow query stopped after 0\.1\d s \(not left running\)$",
            r"^Query timed out$",
            r"^Error: Query timeout \(after 0\.1\d s\)$",
            r"^slow query stopped after 0\.1\d s",
            r"^Error: Query timeout$",
            r"^Query timed out after 0\.[12]\d s; its thread had returned$",
        ),
        never=(r"rows:",),
    ),
    "state_machine.py": Expect(
        lines=(
            r"^\s+\[m1\] reached C$",
            r"^\s+\[m1\] finished without being cancelled$",
            r"^\s+\[m2\] cancel requested in state A: accepted$",
            r"^\s+\[m2\] cancelled \(state A\)$",
            r"^\s+\[m3\] cancel requested in state B: refused here$",
            r"^\s+\[m3\] -> C$",
            r"^\s+\[m3\] reached C$",
            r"^\s+\[m3\] cancelled \(state C\)$",
        ),
        never=(r"\[m2\] -> B", r"\[m3\] finished without being cancelled"),
    ),
    "runtime_view.py": Expect(
        lines=(
            r"^runner: step worker-\d: poll$",
            r"^main: cancelling worker-2's token$",
            r"^runner: step worker-2: woken to receive Cancelled\(reason='worker 2 not needed', "
            r"source='explicit'\) instead of a poll$",
            r"^worker-2: unwinding \(finally\)$",
            r"^runner: worker-2 exited after \d+ steps$",
            r"^worker-1: finished its three ticks$",
        ),
        never=(r"worker-2: finished",),
    ),
}


def test_every_example_is_checked() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(CHECKS)


@pytest.mark.parametrize("script", sorted(CHECKS))
def test_example_prints_expected_lines(script: str) -> None:
    for program in CHECKS[script].needs:
        _require_program(program, script)
    _run_and_check(script, CHECKS[script])


def _require_program(program: str, script: str) -> None:
    """Skip, saying why and how to install it, unless ``program`` is on the PATH; with
    ``TRIO_CANCEL_REQUIRE_<PROGRAM>=1`` (as CI sets it) a missing program is a failure."""
    if shutil.which(program) is not None:
        return
    why = f"{script} needs {program}, which is not installed: {INSTALL[program]}"
    if os.environ.get(f"TRIO_CANCEL_REQUIRE_{program.upper()}") == "1":
        pytest.fail(f"TRIO_CANCEL_REQUIRE_{program.upper()}=1 but {why}")
    pytest.skip(why)


def _path_without(program: str) -> str:
    """The PATH with every directory holding ``program`` left out."""
    return os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not (Path(entry) / program).exists()
    )


def test_bench_middleware_without_wrk_says_how_to_install_it() -> None:
    env = {**os.environ, "PATH": _path_without("wrk")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "bench_middleware.py"), "--seconds", "1", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"wrk is not installed: {INSTALL['wrk']}"]


def test_a_missing_program_skips_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", _path_without("wrk"))
    monkeypatch.delenv("TRIO_CANCEL_REQUIRE_WRK", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"needs wrk.*apt-get install -y wrk"):
        _require_program("wrk", "bench_middleware.py")
    monkeypatch.setenv("TRIO_CANCEL_REQUIRE_WRK", "1")
    with pytest.raises(pytest.fail.Exception, match="TRIO_CANCEL_REQUIRE_WRK=1 but"):
        _require_program("wrk", "bench_middleware.py")


@pytest.mark.parametrize(
    ("pattern", "slow_line", "wrong_line"),
    [
        (
            r"^C: cancelled at 0\.(4\d|5[0-5]) s: deadline$",
            "C: cancelled at 1.73 s: deadline",
            "C: cancelled at 0.45 s: disconnect",
        ),
        (
            r"^budgets: A 500 ms > B 4\d\d ms$",
            "budgets: A 500 ms > B 312 ms",
            "budgets: A 400 ms > B 312 ms",
        ),
        (
            r"^back after\s+0\.[23]\d s; done after\s+0\.[23]",
            "back after  2.01 s; done after 3.5",
            "back after 0.25 s; gone",
        ),
        (
            r"^landed after 0\.\d\d to 1\.\d\d s$",
            "landed after 0.80 to 2.35 s",
            "landed after 0.80 to s",
        ),
    ],
)
def test_live_runs_assert_lines_not_durations(
    pattern: str, slow_line: str, wrong_line: str
) -> None:
    assert not re.search(pattern, slow_line)  # the exact pattern (kept for recorded runs)
    assert re.search(_untimed(pattern), slow_line)  # a slow machine still passes
    assert not re.search(_untimed(pattern), wrong_line)  # a wrong line still fails


def test_settings_in_patterns_stay_exact() -> None:
    pattern = r"^20 requests, 0\.5 s grace: within the 2 s grace period after 0\.25 s of work$"
    assert _untimed(pattern) == pattern


def _run_and_check(script: str, expect: Expect) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *expect.args],
        capture_output=True,
        text=True,
        timeout=expect.timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    _check_lines(script, expect, proc.stdout, timed=False)


# A measured duration in a pattern: a number written with regex syntax (``0\.2\d``,
# ``4\d\d``, ``0\.(4\d|5[0-5])``, ``[\d.]+``) followed by a unit (`` s``, `` ms``), by
# `` to`` (the start of a range) or ending the pattern. A plain literal (``0\.5 s``: an
# argument or a setting) is not.
_MEASURED = re.compile(
    r"(?:\\d|[0-9]|\[[^\]]*\]|\([^()]*\))"
    r"(?:\\d|\\\.|[0-9]|\[[^\]]*\]|\([^()]*\)|[+*?]|\{\d+(?:,\d*)?\})*"
    r"(?=(?: |\\s\+| \+)(?:m?s\b|to\b)|\Z)"
)
_ANY_DURATION = r"\d+(?:\.\d+)?"


def _untimed(pattern: str) -> str:
    """``pattern`` with every measured duration accepting any number: a live run on a loaded
    machine takes as long as it takes. The line and its events are still asserted; how fast
    they came is for the benchmarks (and the recorded runs shown in the docs keep the exact
    patterns)."""

    def loosen(match: re.Match[str]) -> str:
        fragment = match[0]
        literal = re.fullmatch(r"[0-9]+(?:\\\.[0-9]+)?", fragment)
        return fragment if literal else _ANY_DURATION

    return _MEASURED.sub(loosen, pattern)


def _check_lines(script: str, expect: Expect, stdout: str, *, timed: bool = True) -> None:
    out = stdout.splitlines()
    pos = 0
    for pattern in expect.lines:
        if not timed:
            pattern = _untimed(pattern)  # the pattern as checked, for the message
        regex = re.compile(pattern)
        for i in range(pos, len(out)):
            if regex.search(out[i]):
                pos = i + 1
                break
        else:
            pytest.fail(f"{script}: no line matching {pattern!r} after line {pos}:\n{stdout}")
    for pattern in expect.never:
        bad = [line for line in out if re.search(pattern, line)]
        assert not bad, f"{script} printed {bad}"


def test_bench_cancel_json_output_parses_and_plot_is_written(tmp_path: Path) -> None:
    plot = tmp_path / "bench.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "bench_cancel.py"),
            *("--sizes", "200", "--repeat", "1", "--churn", "2000", "--json", "--plot", str(plot)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # nothing else on stdout
    variants = {(row["variant"], row["gc"]) for row in report["rows"] if row["tasks"] == 200}
    assert {
        ("token", "default"),
        ("token-scope", "off"),
        ("trio-nursery", "freeze"),
        ("trio-nursery", "threshold"),
    } <= variants
    assert report["latency"]["landed"] == 200
    assert report["memory"]["churn"] == 2000
    assert report["memory"]["churn_retained_bytes"] < 50_000  # 2,000 retained children: ~500 KB
    assert plot.stat().st_size > 1000
    assert "plot written to" in proc.stderr


PG_DSN = os.environ.get("TRIO_CANCEL_PG_DSN")


@pytest.mark.parametrize(
    ("script", "lines"), [("tx_guard.py", TX_GUARD_ROWS), ("transfer_money.py", TRANSFER_LINES)]
)
def test_database_examples_against_postgresql(script: str, lines: tuple[str, ...]) -> None:
    if PG_DSN is None:
        if os.environ.get("TRIO_CANCEL_REQUIRE_PG") == "1":
            pytest.fail("TRIO_CANCEL_REQUIRE_PG=1 but no TRIO_CANCEL_PG_DSN")
        pytest.skip(
            "no PostgreSQL server: run the tests through make test or .ci/with-postgres "
            "(e.g. .ci/with-postgres .venv/bin/pytest tests/test_examples.py), which starts a "
            "throwaway server; to install PostgreSQL: sudo apt-get install -y postgresql"
        )
    _run_and_check(
        script, Expect(lines=(r"^database: PostgreSQL$", *lines), args=("--postgres", PG_DSN))
    )


def test_worker_pool_shutdown_drains_on_a_sigint_from_outside() -> None:
    """The README's shape: run until Ctrl+C, drain, report; driven by a real SIGINT."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "worker_pool_shutdown.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("pool running")
        time.sleep(0.3)  # let the pool do some work
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "shutting down: signal SIGINT" in out
    done = [int(n) for n in re.findall(r"^  worker-\d: finished (\d+) jobs", out, re.MULTILINE)]
    assert len(done) == 4
    assert sum(done) > 0  # it ran until the signal, not 0 jobs
    assert "5 of 5 tasks landed within the 2 s grace period, 0 forced" in out


@pytest.mark.parametrize("script", sorted(CHECKS))
def test_recorded_output_passes_the_checks(script: str) -> None:
    """The docs show a recorded run of each example; it must pass the same checks as a live
    run (re-record with tests/record_example_outputs.py when a script changes)."""
    recorded = OUTPUTS / f"{Path(script).stem}.txt"
    assert recorded.exists(), f"no recorded output for {script}: run record_example_outputs.py"
    command, _, output = recorded.read_text().partition("\n")
    assert command == "$ " + " ".join(["python", f"examples/{script}", *CHECKS[script].args])
    _check_lines(script, CHECKS[script], output)


def _start_server(grace: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "http_server_shutdown.py"), "--grace", str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
    assert "Ctrl+C" in proc.stdout.readline()  # says how to stop it
    return proc, port


def _get(port: int, path: str, results: dict[str, str]) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except (ConnectionRefusedError, ConnectionResetError):
        results[path] = "refused"  # the listener had closed (the trigger closes it)
        return
    results[path] = data.split(b"\r\n", 1)[0].decode()


def test_server_lands_in_flight_requests_on_sigterm_and_reports_json() -> None:
    proc, port = _start_server(grace=1.0)
    results: dict[str, str] = {}
    try:
        threads = [
            threading.Thread(target=_get, args=(port, path, results))
            for path in ("/sleep/0.5", "/sleep/10")
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.2)  # both in flight
        proc.send_signal(signal.SIGTERM)
        _get(port, "/sleep/0", results)  # arrives after the trigger
        for thread in threads:
            thread.join(10)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert results["/sleep/0.5"].startswith("HTTP/1.1 200")  # finished within the grace
    assert results["/sleep/10"].startswith("HTTP/1.1 503")  # forced
    # Arrives after the trigger: answered 503 at once, or refused when the listener has closed.
    assert results["/sleep/0"].startswith("HTTP/1.1 503") or results["/sleep/0"] == "refused"
    report = json.loads(err.strip().splitlines()[-1])
    assert report["reason"] == "signal SIGTERM"
    rows = {row["name"]: row for row in report["tasks"]}
    assert not rows["GET /sleep/0.5"]["forced"]
    assert rows["GET /sleep/10"]["forced"]


def test_a_second_sigint_forces_the_shutdown_at_once() -> None:
    proc, port = _start_server(grace=30.0)
    results: dict[str, str] = {}
    try:
        thread = threading.Thread(target=_get, args=(port, "/sleep/10", results))
        thread.start()
        time.sleep(0.2)
        started = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # impatient: phase 2 now, not in 30 s
        _, err = proc.communicate(timeout=10)
        elapsed = time.perf_counter() - started
        thread.join(10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert elapsed < 5
    report = json.loads(err.strip().splitlines()[-1])
    (row,) = report["tasks"]
    assert row["forced"]
    assert "forced by a second signal (SIGINT)" in row["reason"]
    assert results["/sleep/10"].startswith("HTTP/1.1 503")


def _bench_cancel_module() -> Any:  # noqa: ANN401 - the example script, imported
    spec = importlib.util.spec_from_file_location("bench_cancel", EXAMPLES / "bench_cancel.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "variants",
    [
        subset
        for k in range(1, 8)
        for subset in itertools.combinations(
            (
                "token",
                "token-scope",
                "trio-nursery",
                "trio-event",
                "asyncio",
                "joinset",
                "graceful",
            ),
            k,
        )
    ],
)
def test_bench_cancel_report_prints_every_variants_subset(
    variants: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """The report prints only the rows that were run (a 13-minute run once crashed printing a
    row of the GC study that its --variants had not asked for)."""
    bench = _bench_cancel_module()
    sizes = [200, 1_000_000]
    rows = []
    # The runs: every asked-for variant at every size; and, as the crashing version planned
    # it, the GC study's rows of token-scope and trio-nursery whatever --variants said.
    runs = [(v, n, "default") for n in sizes for v in variants]
    runs += [(v, 200, m) for v in ("token-scope", "trio-nursery") for m in ("off", "freeze")]
    for v, n, mode in runs:
        rows.append(
            {
                "variant": v,
                "tasks": n,
                "gc": mode,
                "cancel_s": 0.01,
                "per_task_us": 5.0,
                "call_s": 0.001,
                "spawn_s": 0.01,
                "peak_mb": 10.0,
                "bytes_per_task": 3000.0,
                "cpu_pct": 90.0,
                "vs_trio_nursery": 1.0,
            }
        )
    latency = {"p50_ms": 1.0, "p99_ms": 2.0, "max_ms": 3.0, "landed": 200}
    memory = {"bytes_per_child_token": 100.0, "churn": 10, "churn_retained_bytes": 0}
    report = {
        "rows": rows,
        "latency": latency if "token" in variants else None,
        "memory": memory,
        "cpus": 2,
    }
    bench._print_report(report, sizes, 200)
    out = capsys.readouterr().out
    for v in variants:
        assert re.search(rf"^{re.escape(v)}\s+200\s", out, re.MULTILINE), out


def test_bench_cancel_saves_each_result_as_it_is_measured(tmp_path: Path) -> None:
    saved = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "bench_cancel.py"),
            "--sizes",
            "200",
            "--repeat",
            "1",
            "--variants",
            "token",
            "trio-nursery",
            "--churn",
            "100",
            "--results",
            str(saved),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in saved.read_text().splitlines()]
    assert {(r["variant"], r["gc"]) for r in records} >= {
        ("token", "default"),
        ("trio-nursery", "default"),
        ("trio-nursery", "off"),
    }
    assert "token-scope" not in proc.stdout


def _demo_scripts() -> list[str]:
    makefile = (EXAMPLES.parent / "Makefile").read_text()
    match = re.search(r"^DEMOS := ((?:.*\\\n)*.*)$", makefile, re.MULTILINE)
    assert match is not None
    return [spec.split(":")[0] for spec in match.group(1).replace("\\\n", " ").split()]


def test_demo_scripts_import_only_what_the_examples_extra_installs() -> None:
    """`make demo` installs the library and its `examples` extras only (.venv-demo): every
    module a demo imports at its top level must come from those (or the standard library)."""
    requirements = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())
    extras = requirements["project"]["optional-dependencies"]["examples"]
    dists = {re.split(r"[\[<>=!~ ]", req, maxsplit=1)[0].replace("-", "_") for req in extras}
    # The library, its own dependencies, and what the extras' packages install under another
    # top-level name (connectrpc's generated messages).
    allowed = dists | {"trio_cancel", "trio", "attrs", "outcome", "protobuf"}
    scripts = _demo_scripts()
    assert "merge_streams" in scripts
    for name in scripts:
        tree = ast.parse((EXAMPLES / f"{name}.py").read_text())
        for node in tree.body:  # top-level imports: what runs when the demo starts
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top == "__future__" or top in sys.stdlib_module_names:
                    continue
                assert top in allowed, f"{name}.py imports {module}, not in the examples extra"
