"""Tests of GracefulShutdown.spawn_process: real subprocesses, real signals, whole groups.

No test waits for a process by sleeping: each waits for the event itself (a line the process
writes once its signal handler is installed, a file the test creates to let it go on). The
bounds (``fail_after``) only keep a broken run from hanging; nothing asserts a wall-clock time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import trio

import trio_cancel as tc
from trio_cancel import _process

if TYPE_CHECKING:
    from pathlib import Path

# A bound for events that take a process start or two: generous, since the machine may be
# loaded; it only stops a broken run from hanging.
EVENT_BOUND = 30

# A process of the group under test. argv: log file, release file, and "term" (SIGTERM
# handler: logs "got SIGTERM", waits for the release file, logs "flushed", exits 0) or
# "ignore" (ignores SIGTERM). It logs "ready <pid> <pgid>" once its handling is in place.
CHILD = r"""
import os, signal, sys, time

log, release, mode = sys.argv[1], sys.argv[2], sys.argv[3]

def write(line):
    with open(log, "a") as f:
        f.write(line + "\n")

def on_term(signum, frame):
    write("got SIGTERM")
    while not os.path.exists(release):
        time.sleep(0.01)
    write("flushed")
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term if mode == "term" else signal.SIG_IGN)
write(f"ready {os.getpid()} {os.getpgid(0)}")
while True:
    time.sleep(3600)
"""


class Child:
    """Paths and commands for one CHILD process of a test."""

    def __init__(self, tmp_path: Path, mode: str, name: str = "child") -> None:
        self.script = tmp_path / "child.py"
        self.script.write_text(CHILD)
        self.log = tmp_path / f"{name}.log"
        self.release = tmp_path / f"{name}.release"
        self.mode = mode

    def argv(self) -> list[str]:
        return [sys.executable, str(self.script), str(self.log), str(self.release), self.mode]

    def shell(self) -> str:
        return " ".join(f"'{arg}'" for arg in self.argv())

    def in_background_then_exit(self) -> str:
        """A shell command: start the child in the background, wait until it is ready, exit 0
        (the shell waits on the child's own line, not on time)."""
        return (
            f"{self.shell()} & while ! grep -q ready '{self.log}' 2>/dev/null; "
            "do sleep 0.01; done; exit 0"
        )

    async def lines(self) -> list[str]:
        path = trio.Path(self.log)
        return (await path.read_text()).splitlines() if await path.exists() else []

    async def wait_for(self, line: str) -> list[str]:
        with trio.fail_after(EVENT_BOUND):
            while not any(seen.startswith(line) for seen in await self.lines()):  # noqa: ASYNC110 - a file another process writes
                await trio.sleep(0.01)
        return await self.lines()

    async def ready(self) -> tuple[int, int]:
        lines = await self.wait_for("ready")
        _, pid, pgid = next(line for line in lines if line.startswith("ready")).split()
        return int(pid), int(pgid)


def _state(pid: int) -> str | None:
    """The process's state letter (``Z``: exited, not reaped), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone (ESRCH: gone while being read)
        return None


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


async def _wait_gone(pid: int) -> None:
    """A signal is delivered asynchronously: wait until the process has gone (or is a zombie
    that its new parent has not reaped yet)."""
    with trio.fail_after(EVENT_BOUND):
        while _alive(pid):  # noqa: ASYNC110 - another process's state
            await trio.sleep(0.01)


async def _wait_zombie(pid: int) -> None:
    with trio.fail_after(EVENT_BOUND):
        while _state(pid) != "Z":  # noqa: ASYNC110 - another process's state
            await trio.sleep(0.01)


async def test_a_shell_and_its_children_stop_on_sigterm_at_the_trigger(tmp_path: Path) -> None:
    child = Child(tmp_path, "term")
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process(["sh", "-c", f"{child.shell()} & wait"], name="shell")
        pid, _ = await child.ready()
        assert _alive(pid)
        child.release.touch()  # the handler may end at once
        gs.trigger("deploy")
        report = await gs.wait()
    (landing,) = report.tasks
    assert landing.name == "shell"
    assert not landing.forced
    assert handle.outcome == tc.Completed(tc.ProcessExit(-signal.SIGTERM, "SIGTERM", "SIGTERM"))
    await _wait_gone(pid)  # the shell's child went with it: no survivor
    assert "flushed" in await child.lines()


async def test_spawn_process_every_member_gets_kill_grace_when_the_leader_dies_at_sigterm(
    tmp_path: Path,
) -> None:
    # The shell stays the child's parent (no exec) and dies of the SIGTERM at once; its child
    # needs time in its SIGTERM handler. It must get it: kill_grace, not the leader's death.
    child = Child(tmp_path, "term")
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process(
            ["sh", "-c", f"{child.shell()}; echo done"], kill_grace=EVENT_BOUND
        )
        pid, pgid = await child.ready()
        gs.trigger()
        await child.wait_for("got SIGTERM")
        await _wait_zombie(pgid)  # the shell died of the SIGTERM
        assert _alive(pid)  # its child runs its handler: no SIGKILL
        assert not handle.is_finished()  # the leader is not reaped before the group's end
        child.release.touch()
        report = await gs.wait()
    assert (await child.lines())[-1] == "flushed"
    (landing,) = report.tasks
    assert not landing.forced
    assert handle.outcome == tc.Completed(tc.ProcessExit(-signal.SIGTERM, "SIGTERM", "SIGTERM"))


async def test_spawn_process_sigkill_comes_kill_grace_after_sigterm_though_the_leader_died(
    tmp_path: Path,
) -> None:
    child = Child(tmp_path, "ignore")
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process(["sh", "-c", f"{child.shell()}; echo done"], kill_grace=0.3)
        pid, _ = await child.ready()
        gs.trigger()
        report = await gs.wait()
    (landing,) = report.tasks
    assert not landing.forced
    assert landing.seconds is not None
    assert landing.seconds >= 0.3  # Trio's clock: the SIGKILL waited for kill_grace
    assert handle.outcome == tc.Completed(tc.ProcessExit(-signal.SIGTERM, "SIGTERM", "SIGKILL"))
    await _wait_gone(pid)


async def test_spawn_process_leader_exits_on_its_own_members_get_sigterm_and_their_grace(
    tmp_path: Path,
) -> None:
    # `cmd & exit 0`: no trigger at all. What is left of the group gets SIGTERM at once and
    # its kill_grace; the leader stays unreaped (its group id reserved) until then.
    child = Child(tmp_path, "term")
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process(
            child.in_background_then_exit(), shell=True, kill_grace=EVENT_BOUND
        )
        pid, pgid = await child.ready()
        await child.wait_for("got SIGTERM")
        assert _alive(pid)
        assert _state(pgid) == "Z"  # exited, not reaped: the group id cannot be reused
        assert not handle.is_finished()
        child.release.touch()
        outcome = await handle.join()
        assert outcome == tc.Completed(tc.ProcessExit(0, None, "SIGTERM"))
        assert _state(pgid) is None  # reaped now
    assert (await child.lines())[-1] == "flushed"


async def test_spawn_process_leader_exits_on_its_own_members_that_ignore_sigterm_are_killed(
    tmp_path: Path,
) -> None:
    child = Child(tmp_path, "ignore")
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process(child.in_background_then_exit(), shell=True, kill_grace=0.2)
        pid, _ = await child.ready()
        outcome = await handle.join()
        assert outcome == tc.Completed(tc.ProcessExit(0, None, "SIGKILL"))
        await _wait_gone(pid)
        gs.trigger()


async def test_spawn_process_leader_exits_on_its_own_members_that_end_at_sigterm_land_early(
    tmp_path: Path,
) -> None:
    # The member dies of the SIGTERM: the group is empty long before kill_grace, and the
    # leader is reaped then (the task does not wait for kill_grace).
    child = Child(tmp_path, "term")
    child.release.touch()
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process(child.in_background_then_exit(), shell=True, kill_grace=3600)
        with trio.fail_after(EVENT_BOUND):
            outcome = await handle.join()
        assert outcome == tc.Completed(tc.ProcessExit(0, None, "SIGTERM"))
        assert (await child.lines())[-1] == "flushed"


async def test_a_process_that_ignores_sigterm_is_killed_after_its_own_grace(
    tmp_path: Path,
) -> None:
    child = Child(tmp_path, "ignore")
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process(child.argv(), kill_grace=0.3)
        await child.ready()
        gs.trigger()
        report = await gs.wait()
    (landing,) = report.tasks
    assert not landing.forced  # the kill_grace killed it, not phase 2
    assert landing.seconds is not None
    assert landing.seconds >= 0.3
    assert handle.outcome == tc.Completed(tc.ProcessExit(-signal.SIGKILL, "SIGKILL", "SIGKILL"))


async def test_phase_two_kills_at_once_and_reports_how_the_process_ended(
    tmp_path: Path,
) -> None:
    child = Child(tmp_path, "ignore")
    async with tc.GracefulShutdown(grace=3600) as gs:
        handle = gs.spawn_process(child.argv(), kill_grace=3600)
        pid, _ = await child.ready()
        gs.trigger()
        gs.force()  # what a second signal does
        with trio.fail_after(EVENT_BOUND):
            report = await gs.wait()
    (landing,) = report.tasks
    assert landing.forced
    assert handle.outcome == tc.Completed(tc.ProcessExit(-signal.SIGKILL, "SIGKILL", "SIGKILL"))
    assert report.to_dict()["tasks"][0]["outcome"] == "completed"
    assert _state(pid) is None


async def test_spawn_process_phase_two_after_the_leader_exited_kills_what_is_left(
    tmp_path: Path,
) -> None:
    child = Child(tmp_path, "ignore")
    async with tc.GracefulShutdown(grace=3600) as gs:
        handle = gs.spawn_process(child.in_background_then_exit(), shell=True, kill_grace=3600)
        pid, pgid = await child.ready()
        await _wait_zombie(pgid)
        gs.force()
        with trio.fail_after(EVENT_BOUND):
            report = await gs.wait()
    (landing,) = report.tasks
    assert landing.forced
    assert handle.outcome == tc.Completed(tc.ProcessExit(0, None, "SIGKILL"))
    await _wait_gone(pid)


async def test_spawn_process_cancelled_from_outside_kills_the_group_and_propagates(
    tmp_path: Path,
) -> None:
    child = Child(tmp_path, "ignore")
    with trio.CancelScope() as outer:
        async with tc.GracefulShutdown(grace=3600) as gs:
            handle = gs.spawn_process(child.argv(), kill_grace=3600)
            pid, _ = await child.ready()
            outer.cancel()
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert isinstance(handle.outcome, tc.Aborted)
    assert _state(pid) is None  # killed and reaped


async def test_a_process_that_exits_on_its_own_reports_its_code() -> None:
    async with tc.GracefulShutdown(grace=1) as gs:
        handle = gs.spawn_process(["sh", "-c", "exit 3"])
        outcome = await handle.join()
    assert outcome == tc.Completed(tc.ProcessExit(3, None, None))
    assert str(tc.ProcessExit(3, None, None)) == "exited 3"


async def test_spawn_process_a_real_time_signal_is_reported_by_number_and_name() -> None:
    signum = signal.SIGRTMIN + 6
    code = f"import os; os.kill(os.getpid(), {int(signum)})"
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process([sys.executable, "-c", code])
        outcome = await handle.join()
    assert outcome == tc.Completed(tc.ProcessExit(-signum, "SIGRTMIN+6", None))
    assert isinstance(outcome, tc.Completed)
    assert outcome.value.signum == signum
    assert str(outcome.value) == "killed by SIGRTMIN+6"


def test_process_exit_names_every_signal() -> None:
    assert tc.ProcessExit(-9, "SIGKILL", None).signum == 9
    assert tc.ProcessExit(0, None, None).signum is None
    assert _process.signal_name(int(signal.SIGTERM)) == "SIGTERM"
    assert _process.signal_name(int(signal.SIGRTMIN)) == "SIGRTMIN"
    assert _process.signal_name(int(signal.SIGRTMIN) + 1) == "SIGRTMIN+1"
    assert _process.signal_name(int(signal.SIGRTMAX)) == "SIGRTMAX"
    assert _process.signal_name(200) == "signal 200"


def test_bad_input() -> None:
    gs = tc.GracefulShutdown(grace=1)
    with pytest.raises(TypeError, match="command"):
        gs.spawn_process([])
    with pytest.raises(ValueError, match="grace"):
        gs.spawn_process(["true"], kill_grace=-1)
    with pytest.raises(RuntimeError, match="async with"):
        gs.spawn_process(["true"])


@pytest.mark.parametrize(
    ("command", "options", "error", "match"),
    [
        ("sleep 30", {}, TypeError, "string command without shell=True"),
        (b"sleep 30", {}, TypeError, "string command without shell=True"),
        (["sleep", "30"], {"shell": True}, TypeError, "one string"),
        (["sleep", "30"], {"start_new_session": False}, ValueError, "start_new_session"),
        (["sleep", "30"], {"process_group": 0}, ValueError, "process_group"),
        (["sleep", "30"], {"stdout": subprocess.PIPE}, ValueError, "pipe for stdout"),
        (["sleep", "30"], {"text": True}, TypeError, "text="),
        (["sleep", "30"], {"no_such_option": 1}, TypeError, "unknown options: no_such_option"),
    ],
)
async def test_spawn_process_bad_arguments_fail_at_the_call(
    command: object, options: dict[str, object], error: type[Exception], match: str
) -> None:
    async with tc.GracefulShutdown(grace=1) as gs:
        with pytest.raises(error, match=match):
            gs.spawn_process(command, **options)  # type: ignore[arg-type]
        report = await gs.wait()
    assert report.tasks == ()
    assert report.ended_before == {"completed": 0, "failed": 0, "aborted": 0}


async def test_spawn_process_takes_start_new_session_true(tmp_path: Path) -> None:
    async with tc.GracefulShutdown(grace=1) as gs:
        handle = gs.spawn_process(["sh", "-c", "exit 0"], start_new_session=True)
        assert await handle.join() == tc.Completed(tc.ProcessExit(0, None, None))


@pytest.fixture
def without_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on macOS or the BSDs: no os.pidfd_open (the library falls back to waitid)."""
    monkeypatch.delattr(os, "pidfd_open", raising=False)


@pytest.mark.usefixtures("without_pidfd")
async def test_spawn_process_without_pidfd_stops_the_group_at_the_trigger(
    tmp_path: Path,
) -> None:
    child = Child(tmp_path, "term")
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process(
            ["sh", "-c", f"{child.shell()}; echo done"], kill_grace=EVENT_BOUND
        )
        pid, pgid = await child.ready()
        gs.trigger()
        await child.wait_for("got SIGTERM")
        await _wait_zombie(pgid)
        assert _alive(pid)
        child.release.touch()
        report = await gs.wait()
    assert not report.tasks[0].forced
    assert handle.outcome == tc.Completed(tc.ProcessExit(-signal.SIGTERM, "SIGTERM", "SIGTERM"))
    await _wait_gone(pid)
    assert _state(pgid) is None


@pytest.mark.usefixtures("without_pidfd")
async def test_spawn_process_without_pidfd_reaps_a_process_that_exits_on_its_own() -> None:
    async with tc.GracefulShutdown(grace=1) as gs:
        handle = gs.spawn_process(["sh", "-c", "exit 4"])
        assert await handle.join() == tc.Completed(tc.ProcessExit(4, None, None))


@pytest.mark.usefixtures("without_pidfd")
async def test_spawn_process_without_pidfd_phase_two_kills(tmp_path: Path) -> None:
    children = [Child(tmp_path, "ignore", name=f"c{i}") for i in range(3)]
    async with tc.GracefulShutdown(grace=3600) as gs:
        handles = [gs.spawn_process(c.argv(), kill_grace=3600) for c in children]
        pids = [(await c.ready())[0] for c in children]
        gs.force()
        with trio.fail_after(EVENT_BOUND):
            await gs.wait()
    for handle in handles:
        assert handle.outcome == tc.Completed(tc.ProcessExit(-signal.SIGKILL, "SIGKILL", "SIGKILL"))
    for pid in pids:
        assert _state(pid) is None


async def test_spawn_process_a_kernel_without_pidfds_falls_back_to_waitid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_pidfds(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfds)
    async with tc.GracefulShutdown(grace=1) as gs:
        handle = gs.spawn_process(["sh", "-c", "exit 5"])
        assert await handle.join() == tc.Completed(tc.ProcessExit(5, None, None))


async def test_spawn_process_refuses_at_the_call_without_a_way_to_watch_an_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    monkeypatch.delattr(os, "waitid")
    async with tc.GracefulShutdown(grace=1) as gs:
        with pytest.raises(NotImplementedError, match=r"pidfd_open or os\.waitid"):
            gs.spawn_process(["sleep", "30"])
    assert gs.report is not None
    assert gs.report.tasks == ()


async def test_spawn_process_refuses_at_the_call_without_process_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(os, "killpg")
    async with tc.GracefulShutdown(grace=1) as gs:
        with pytest.raises(NotImplementedError, match="process groups"):
            gs.spawn_process(["sleep", "30"])


async def test_spawn_process_without_proc_assumes_members_remain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Where the group's members cannot be seen, what may be left gets SIGTERM and kill_grace.
    monkeypatch.setattr(_process, "_PROC", str(tmp_path / "no-proc"))
    async with tc.GracefulShutdown(grace=1) as gs:
        handle = gs.spawn_process(["sh", "-c", "exit 0"], kill_grace=0.05)
        assert await handle.join() == tc.Completed(tc.ProcessExit(0, None, "SIGKILL"))


async def test_spawn_process_many_processes_stop_at_one_trigger(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ready.mkdir()
    count = 50
    script = f"trap 'exit 0' TERM; touch '{ready}'/$$; while :; do sleep 1; done"
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handles = [
            gs.spawn_process(["sh", "-c", script], kill_grace=EVENT_BOUND) for _ in range(count)
        ]
        with trio.fail_after(EVENT_BOUND):
            while len(os.listdir(ready)) < count:  # noqa: ASYNC110 - other processes' state
                await trio.sleep(0.01)
        gs.trigger()
        report = await gs.wait()
    assert len(report.forced) == 0
    for handle in handles:
        assert isinstance(handle.outcome, tc.Completed)
        assert handle.outcome.value.sent == "SIGTERM"


async def test_spawn_process_aborted_before_it_starts_starts_nothing(tmp_path: Path) -> None:
    started = tmp_path / "started"
    async with tc.GracefulShutdown(grace=3600) as gs:
        handle = gs.spawn_process(["sh", "-c", f"touch '{started}'"])
        gs.force()  # phase 2 before the task first ran
        report = await gs.wait()
    assert isinstance(handle.outcome, tc.Aborted)
    assert report.tasks[0].forced
    assert not started.exists()


async def test_spawn_process_a_trigger_after_the_leader_exited_does_not_resend_sigterm(
    tmp_path: Path,
) -> None:
    # The members got SIGTERM when the leader exited; the trigger changes nothing (no second
    # SIGTERM, the same SIGKILL deadline).
    child = Child(tmp_path, "term")
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process(
            child.in_background_then_exit(), shell=True, kill_grace=EVENT_BOUND
        )
        await child.ready()
        await child.wait_for("got SIGTERM")
        gs.trigger()
        await trio.testing.wait_all_tasks_blocked()
        child.release.touch()
        report = await gs.wait()
    assert [line for line in await child.lines() if line == "got SIGTERM"] == ["got SIGTERM"]
    assert not report.tasks[0].forced
    assert handle.outcome == tc.Completed(tc.ProcessExit(0, None, "SIGTERM"))


# A fork chain: the leader writes its group id to argv[1], starts a process and exits at
# once; that process, and each of its successors, forks the next one and exits at once (a
# respawning worker, a tool that daemonizes without setsid). The chain ends by itself after
# argv[2] seconds, so that a missed one does not run on for long.
CHAIN = r"""
import os, sys, time
end = time.monotonic() + float(sys.argv[2])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpgid(0)))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
if os.fork() == 0:
    while time.monotonic() < end:
        if os.fork() != 0:
            os._exit(0)
os._exit(0)
"""


def _members(pgid: int) -> list[int]:
    """The live processes of group ``pgid`` other than its leader, by one listing of /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pgid:
            state = _state(int(entry))
            try:
                with open(f"/proc/{entry}/stat") as f:
                    group = int(f.read().rsplit(")", 1)[1].split()[2])
            except (OSError, ValueError, IndexError):
                continue
            if group == pgid and state not in (None, "Z", "X"):
                found.append(int(entry))
    return found


@pytest.mark.parametrize("round_", range(5))
async def test_spawn_process_a_member_that_keeps_reforking_is_not_missed(
    tmp_path: Path, round_: int
) -> None:
    pgid_file = tmp_path / f"pgid{round_}"
    script = tmp_path / "chain.py"
    script.write_text(CHAIN)
    async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
        handle = gs.spawn_process(
            [sys.executable, str(script), str(pgid_file), str(EVENT_BOUND)],
            kill_grace=EVENT_BOUND,
        )
        with trio.fail_after(EVENT_BOUND):
            outcome = await handle.join()
        with trio.fail_after(EVENT_BOUND):
            while not pgid_file.exists():  # noqa: ASYNC110 - a file another process writes
                await trio.sleep(0.01)
        pgid = int(pgid_file.read_text())
        left = _members(pgid)
        if left:  # the group was left behind: stop it here (it still has members, so its
            os.killpg(pgid, signal.SIGKILL)  # id cannot have been reused)
        # The leader exited 0, and what it left got the group's SIGTERM (which stops a link
        # even in the middle of a fork); nothing of the group is alive once it is reaped.
        assert outcome == tc.Completed(tc.ProcessExit(0, None, "SIGTERM"))
        assert left == []


def test_census_answers_with_two_scans_during_which_no_process_was_created(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The system keeps creating processes: the census gives up and takes it that members
    # remain; once a window without creation comes, it answers with both scans.
    counter = iter(range(1000))
    monkeypatch.setattr(_process, "_last_pid", lambda: next(counter))
    monkeypatch.setattr(_process, "_SETTLE_BOUND", 0.05)
    assert _process._groups_with_members() is None
    values = iter([7, 7, 7, 7, 7])
    scans = iter([{1}, {2}])
    monkeypatch.setattr(_process, "_last_pid", lambda: next(values))
    monkeypatch.setattr(_process, "_scan_groups", lambda: next(scans))
    assert _process._groups_with_members() == frozenset({1, 2})


async def test_spawn_process_sigkill_is_not_held_up_by_a_slow_census(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The leader dies of the trigger's SIGTERM; its child ignores it. The census of /proc
    # never answers (a system under load): the SIGKILL still comes at its deadline.
    import threading

    release = threading.Event()

    def stuck() -> frozenset[int] | None:
        release.wait(EVENT_BOUND)
        return None

    monkeypatch.setattr(_process, "_groups_with_members", stuck)
    monkeypatch.setattr(_process, "_SCAN_BOUND", 3600.0)
    child = Child(tmp_path, "ignore")
    try:
        async with tc.GracefulShutdown(grace=EVENT_BOUND) as gs:
            handle = gs.spawn_process(["sh", "-c", f"{child.shell()}; echo done"], kill_grace=0.2)
            pid, _ = await child.ready()
            gs.trigger()
            await _wait_gone(pid)  # the SIGKILL came while the census was still stuck
            assert not release.is_set()
            with trio.fail_after(EVENT_BOUND):
                outcome = await handle.join()
        assert outcome == tc.Completed(tc.ProcessExit(-signal.SIGTERM, "SIGTERM", "SIGKILL"))
    finally:
        release.set()
