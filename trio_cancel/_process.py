"""Subprocesses as tracked work of a GracefulShutdown: the whole process group gets SIGTERM,
then SIGKILL after its own grace period, and no reused process group is ever hit.

A process is started in a new session, so it leads a process group of its own and every
process it starts (a shell's children) belongs to it; signals go to the group.

Invariants, and how each is kept:

- *The group is never signalled after its leader was reaped.* The group id is the leader's
  pid, which the system may give to another process once the leader is reaped and the group
  is empty. The leader's exit is seen without reaping it (a pidfd; where there is none, a
  thread blocked in ``waitid(WNOWAIT)``): the exited, unreaped leader keeps its pid, and with
  it the group id, reserved. The leader is reaped (``Process.wait()``) as the very last step,
  after the group's last signal; nothing reads ``Process.returncode`` (which reaps) before.
- *Every member gets the full ``kill_grace`` between SIGTERM and SIGKILL* (or until phase 2,
  whichever comes first), whether or not the leader has exited: the SIGKILL is due at one
  deadline, set when the SIGTERM is sent, and the leader's exit does not move it.
- *A leader that exits on its own does not leave its group behind* (systemd's
  ``KillMode=control-group``): when it exits before any trigger, the group is looked at (Linux:
  ``/proc``); if no other member is left the leader is reaped at once, else what is left gets
  SIGTERM at once and SIGKILL ``kill_grace`` later. Once the leader has exited, the group is
  looked at again (at a growing interval up to 0.1 s) until it is empty or the SIGKILL is due.
- *Phase 2 ends the process and still reports how:* an abort of the task (phase 2, a second
  signal, ``force()``) sends SIGKILL at once, reaps the leader (shielded, bounded) and returns
  ``ProcessExit``; a cancellation from outside the task's own scope also kills and reaps, and
  then propagates.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._excgroups import only_cancelled
from ._task import CURRENT_HANDLE

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import outcome

    from ._token import CancellationToken

_log = logging.getLogger("trio_cancel")

# How long the leader may take to exit after a SIGKILL before it is left to be reaped later
# (a process in uninterruptible sleep, such as a hung NFS call, cannot die before it wakes).
_REAP_BOUND = 10.0
# The interval at which the group is looked at once the leader has exited, while members
# remain: doubles from the first to the last.
_POLL_FIRST = 0.005
_POLL_MAX = 0.1
# Where the processes of the system are listed (Linux); a test may point it elsewhere.
_PROC = "/proc"
# The bound of a wait for a census of /proc (a thread reading small files): if it runs out,
# the group is taken to have members left. It never delays a SIGKILL that is due.
_SCAN_BOUND = 5.0
# How long a census may keep scanning while new processes keep appearing on the system before
# it gives up (then every group is taken to have members left).
_SETTLE_BOUND = 0.5
# Threads blocked in waitid() (the fallback without pidfd), one per process: not limited,
# as Trio does for its own waitid() threads, so that they never hold up other thread work.
_WAITERS = trio.CapacityLimiter(math.inf)


@final
@attrs.frozen
class ProcessExit:
    """How a process spawned by :meth:`GracefulShutdown.spawn_process` ended (the value of its
    task's ``Completed`` outcome, shown in its :class:`TaskLanding`).

    Attributes:
        returncode: The exit status; negative: killed by that signal (``subprocess``'s rule).
        signal: The name of the signal that ended it (``"SIGTERM"``, ``"SIGKILL"``; a
            real-time signal as ``"SIGRTMIN+6"``; one with no name as ``"signal 70"``), or
            ``None`` if it exited on its own. Its number is :attr:`signum`.
        sent: The last signal the shutdown sent its process group (``"SIGTERM"`` or
            ``"SIGKILL"``), or ``None``.
    """

    returncode: int
    signal: str | None
    sent: str | None

    @property
    def signum(self) -> int | None:
        """The number of the signal that ended the process, or ``None`` if it exited."""
        return -self.returncode if self.returncode < 0 else None

    def __str__(self) -> str:
        how = f"killed by {self.signal}" if self.signal else f"exited {self.returncode}"
        return how if self.sent is None else f"{how} (sent {self.sent})"


def signal_name(signum: int) -> str:
    """The name of any signal number: ``SIGTERM``, ``SIGRTMIN+6``, else ``signal 70``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        pass
    low = getattr(signal, "SIGRTMIN", None)
    high = getattr(signal, "SIGRTMAX", None)
    if low is not None and high is not None and low < signum < high:
        return f"SIGRTMIN+{signum - low}"
    return f"signal {signum}"


def exit_of(returncode: int, sent: str | None) -> ProcessExit:
    return ProcessExit(returncode, signal_name(-returncode) if returncode < 0 else None, sent)


def _wait_exited(pid: int) -> None:
    """Block until ``pid`` has exited, without reaping it (run in a thread)."""
    with contextlib.suppress(ChildProcessError):  # reaped by someone else: it has exited
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def _last_pid() -> int | None:
    """The process id the system handed out last (``/proc/loadavg``), or ``None``."""
    try:
        with open(f"{_PROC}/loadavg", "rb") as f:
            return int(f.read().split()[4])
    except (OSError, IndexError, ValueError):
        return None


def _groups_with_members() -> frozenset[int] | None:
    """The process groups that have a live member other than their leader (run in a thread);
    ``None`` if the system does not say.

    One listing of ``/proc`` can miss a member that keeps forking (each process starts its
    successor and exits: the successor is born after the listing, its parent gone before its
    turn). So the census scans repeatedly and answers with two consecutive scans during
    which the system handed out no process id at all (``/proc/loadavg`` names the last one):
    a member alive after them either existed throughout the second scan (it was seen), or
    was being forked by a member that existed throughout the first (that one was seen). If
    processes keep being created for ``_SETTLE_BOUND`` seconds, or without ``/proc``, the
    members cannot be seen (``None``: every group is taken to have some, so that none is
    left behind).
    """
    deadline = time.monotonic() + _SETTLE_BOUND
    before = _last_pid()
    previous = _scan_groups()
    if before is None or previous is None:
        return None
    while True:
        middle = _last_pid()
        current = _scan_groups()
        after = _last_pid()
        if current is None or middle is None or after is None:
            return None
        if after == before:  # no process was created during either scan
            return frozenset(previous | current)
        if time.monotonic() > deadline:
            return None
        before, previous = middle, current


def _scan_groups() -> set[int] | None:
    """One listing of ``/proc``: the groups with a live member other than their leader.

    Reads ``/proc/<pid>/stat`` (after the command's closing parenthesis come the state, the
    parent's pid and the group id); ``None`` without ``/proc``.
    """
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return None
    found = set()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{_PROC}/{entry}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            pgid = int(fields[2])
        except (OSError, IndexError, ValueError):  # it has gone since the listing
            continue
        if pgid != int(entry) and fields[0] not in (b"Z", b"X"):
            found.add(pgid)
    return found


@attrs.define(eq=False)
class _Scan:
    done: trio.Event = attrs.field(factory=trio.Event)
    waiting: int = 0
    found: frozenset[int] | None = None


@attrs.define(eq=False)
class _Census:
    """Answers "are there members left in this group?" for every process of a run, with one
    census of ``/proc`` for all the questions asked while the previous one ran (200 processes
    stopped by one trigger cost a few censuses, not 200).

    A census runs in a thread of its own, not in any asking task: a task waits for the answer
    only as long as it likes (never past its SIGKILL deadline), and leaving the wait holds up
    nobody else."""

    next: _Scan = attrs.field(factory=_Scan)
    scanning: bool = False

    async def others_in_group(self, pgid: int, deadline: float = math.inf) -> bool | None:
        """Whether group ``pgid`` has a live member besides its leader, seen by a census that
        began after this call; ``None`` if ``deadline`` (Trio's clock) came first. Always a
        checkpoint."""
        scan = self.next
        scan.waiting += 1
        if not self.scanning:
            self._start()
        try:
            with trio.move_on_at(min(deadline, trio.current_time() + _SCAN_BOUND)):
                await scan.done.wait()
        finally:
            scan.waiting -= 1
        if not scan.done.is_set():
            if trio.current_time() >= deadline:
                return None
            return True  # the census did not answer in time: take it that members remain
        return scan.found is None or pgid in scan.found

    def _start(self) -> None:
        self.scanning = True
        current, self.next = self.next, _Scan()
        trio_token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[frozenset[int] | None]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                trio_token.run_sync_soon(self._finish, current, result)

        trio.lowlevel.start_thread_soon(_groups_with_members, deliver)

    def _finish(self, scan: _Scan, result: outcome.Outcome[frozenset[int] | None]) -> None:
        try:
            scan.found = result.unwrap()
        except Exception:  # noqa: BLE001 - an unexpected failure: members are assumed
            _log.exception("spawn_process: the census of process groups failed")
            scan.found = None
        scan.done.set()
        self.scanning = False
        if self.next.waiting:  # questions asked while this census ran
            self._start()


_CENSUS: trio.lowlevel.RunVar[_Census] = trio.lowlevel.RunVar("trio_cancel._process.census")


def _census() -> _Census:
    try:
        return _CENSUS.get()
    except LookupError:
        census = _Census()
        _CENSUS.set(census)
        return census


@attrs.define(eq=False, repr=False)
class _Group:
    """One process group being watched and stopped (see the module docstring)."""

    pid: int
    kill_grace: float
    sent: str | None = None
    exited: bool = False  # the leader has exited (it is not reaped yet)
    triggered: bool = False  # the token was cancelled
    _wake: trio.Event = attrs.field(factory=trio.Event)

    def signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # every member has gone already
            os.killpg(self.pid, signum)
        self.sent = signum.name

    async def watch_leader(self) -> None:
        """Note the leader's exit, without reaping it."""
        fd: int | None = None
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            with contextlib.suppress(OSError):  # a kernel without pidfds: use waitid()
                fd = pidfd_open(self.pid)
        try:
            if fd is not None:
                await trio.lowlevel.wait_readable(fd)
            else:
                # Abandoned if cancelled: the thread returns once the leader exits (the
                # cancellation's own SIGKILL sees to that); it reaps nothing.
                await trio.to_thread.run_sync(
                    _wait_exited, self.pid, abandon_on_cancel=True, limiter=_WAITERS
                )
        finally:
            if fd is not None:
                os.close(fd)
        self.exited = True
        self._wake.set()

    async def watch_token(self, token: CancellationToken) -> None:
        await token.wait_cancelled()
        self.triggered = True
        self._wake.set()

    async def stop(self) -> None:
        """Return once the leader has exited and the group has had its last signal."""
        kill_at = math.inf
        poll = _POLL_FIRST
        while True:
            if self._wake.is_set():
                self._wake = trio.Event()
            if self.exited:
                if self.sent == "SIGKILL":
                    return  # noqa: ASYNC910 - run inside the caller's nursery, a checkpoint
                # A SIGKILL that is due never waits for the census.
                members = await _census().others_in_group(
                    self.pid, kill_at if self.sent == "SIGTERM" else math.inf
                )
                if members is False:
                    return
                if self.sent is None:  # the leader exited on its own, leaving members
                    self.signal(signal.SIGTERM)
                    kill_at = trio.current_time() + self.kill_grace
            elif self.triggered and self.sent is None:
                self.signal(signal.SIGTERM)
                kill_at = trio.current_time() + self.kill_grace
            now = trio.current_time()
            if self.sent == "SIGTERM" and now >= kill_at:
                self.signal(signal.SIGKILL)
                continue
            wake_at = kill_at if self.sent == "SIGTERM" else math.inf
            if self.exited:  # members remain: look at the group again soon
                wake_at = min(wake_at, now + poll)
                poll = min(poll * 2, _POLL_MAX)
            with trio.move_on_at(wake_at):
                await self._wake.wait()


async def _reap(process: trio.Process) -> int | None:
    """Reap the leader once it has exited: shielded, bounded by ``_REAP_BOUND``; ``None`` if it
    did not exit in time (then ``subprocess`` reaps it later, and it is never signalled)."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + _REAP_BOUND):
        return await process.wait()
    _log.warning(  # pragma: no cover - a process in uninterruptible sleep
        "spawn_process: process %d did not exit within %g s of SIGKILL; left to be reaped later",
        process.pid,
        _REAP_BOUND,
    )
    return None  # pragma: no cover


async def run_process_group(
    command: Sequence[str] | str,
    kill_grace: float,
    options: dict[str, Any],
    *,
    token: CancellationToken,
) -> ProcessExit:
    """The task body of a tracked process (see the module docstring)."""
    options = {key: value for key, value in options.items() if key != "start_new_session"}
    process = await trio.lowlevel.open_process(command, start_new_session=True, **options)
    # No checkpoint between the start and the try: nothing can leave the process behind.
    group = _Group(process.pid, kill_grace)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(group.watch_leader)
            nursery.start_soon(group.watch_token, token)
            await group.stop()
            nursery.cancel_scope.cancel()
    except BaseException as exc:
        # Aborted (phase 2, a second signal, force()), cancelled from outside, or an error of
        # our own: the leader is not reaped yet, so the group may still be signalled.
        group.signal(signal.SIGKILL)
        returncode = await _reap(process)  # noqa: ASYNC102 - shielded and bounded inside
        handle = CURRENT_HANDLE.get()
        if (
            returncode is not None
            and only_cancelled(exc)
            and handle is not None
            and handle._scope.cancel_called
        ):
            # The task's own scope was cancelled (its abort): the process is dead and reaped,
            # and the task ends here, so the outcome says how. A cancellation from outside
            # that came at the same time is not lost: Trio's cancellation stays in effect, and
            # the parent's next checkpoint raises it.
            return exit_of(returncode, group.sent)  # noqa: ASYNC104 - the task's own abort
        raise
    returncode = await _reap(process)
    assert returncode is not None  # the leader has exited: waiting for it cannot time out
    return exit_of(returncode, group.sent)


def _popen_options() -> frozenset[str]:
    return frozenset(inspect.signature(subprocess.Popen).parameters) - {"args"}


_POPEN_OPTIONS = _popen_options()


def check_command(command: object, options: Mapping[str, object]) -> None:
    """Reject, before anything starts, what ``spawn_process`` cannot run as asked."""
    if not hasattr(os, "killpg"):
        raise NotImplementedError(
            "spawn_process() needs process groups (os.killpg), which this platform lacks"
        )
    if not hasattr(os, "pidfd_open") and not hasattr(os, "waitid"):
        raise NotImplementedError(
            "spawn_process() needs to see a process exit without reaping it (os.pidfd_open or "
            "os.waitid), and this platform has neither"
        )
    shell = bool(options.get("shell"))
    if isinstance(command, str | bytes):
        if not shell:
            raise TypeError(
                "spawn_process() got a string command without shell=True: pass a list of "
                f"arguments, or shell=True to run it through the shell; not {command!r}"
            )
    elif not isinstance(command, list | tuple) or not command:
        raise TypeError(
            "spawn_process() needs a command: a non-empty list of arguments, or a string "
            f"with shell=True; not {command!r}"
        )
    elif shell:
        raise TypeError("spawn_process() with shell=True needs the command as one string")
    unknown = sorted(set(options) - _POPEN_OPTIONS)
    if unknown:
        raise TypeError(f"spawn_process() got unknown options: {', '.join(unknown)}")
    if "start_new_session" in options and not options["start_new_session"]:
        raise ValueError(
            "spawn_process() always starts the process in a new session (its own process "
            "group, which is what gets signalled): start_new_session=False is not possible"
        )
    if options.get("process_group") is not None:
        raise ValueError(
            "spawn_process() puts the process in a process group of its own: process_group= "
            "is not possible"
        )
    for key in ("universal_newlines", "text", "encoding", "errors", "bufsize"):
        if options.get(key):
            raise TypeError(
                f"spawn_process() does not take {key}=: the process's output is not read by "
                "the library (redirect it to a file or DEVNULL)"
            )
    for key in ("stdin", "stdout", "stderr"):
        value = options.get(key)
        if isinstance(value, int) and value == subprocess.PIPE:
            raise ValueError(
                f"spawn_process() cannot give a pipe for {key}: nothing would read or write "
                "it (pass a file, a file descriptor or subprocess.DEVNULL)"
            )
