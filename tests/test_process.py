"""Tests of GracefulShutdown.spawn_process: real subprocesses, real signals, whole groups."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import TYPE_CHECKING

import pytest
import trio

import trio_cancel as tc

if TYPE_CHECKING:
    from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


async def _wait_for_file(path: Path) -> str:
    file = trio.Path(path)
    with trio.fail_after(5):
        while not await file.exists() or not (await file.read_text()).strip():  # noqa: ASYNC110
            await trio.sleep(0.01)
    return await file.read_text()


async def test_a_shell_and_its_children_stop_on_sigterm_at_the_trigger(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $! > {pids}; sleep 30; wait"
    async with tc.GracefulShutdown(grace=5) as gs:
        handle = gs.spawn_process(["sh", "-c", script], name="shell", kill_grace=2.0)
        child = int((await _wait_for_file(pids)).strip())
        assert _alive(child)
        gs.trigger("deploy")
        report = await gs.wait()
    (landing,) = report.tasks
    assert landing.name == "shell"
    assert not landing.forced
    exit_ = handle.outcome
    assert isinstance(exit_, tc.Completed)
    assert exit_.value == tc.ProcessExit(-signal.SIGTERM, "SIGTERM", "SIGTERM")
    with trio.fail_after(2):  # a signal is delivered asynchronously: give it a moment
        while _alive(child):  # noqa: ASYNC110 - another process's state
            await trio.sleep(0.01)
    # the shell's child went with it: no survivor


async def test_a_process_that_ignores_sigterm_is_killed_after_its_own_grace() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"
    async with tc.GracefulShutdown(grace=30) as gs:
        handle = gs.spawn_process([sys.executable, "-c", code], kill_grace=0.3)
        await trio.sleep(0.5)  # the interpreter starts and ignores SIGTERM
        started = time.perf_counter()
        gs.trigger()
        await gs.wait()
        elapsed = time.perf_counter() - started
    assert isinstance(handle.outcome, tc.Completed)
    assert handle.outcome.value == tc.ProcessExit(-signal.SIGKILL, "SIGKILL", "SIGKILL")
    assert 0.25 < elapsed < 3


async def test_phase_two_kills_at_once() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(30)"
    async with tc.GracefulShutdown(grace=30) as gs:
        handle = gs.spawn_process([sys.executable, "-c", code], kill_grace=30)
        await trio.sleep(0.5)
        started = time.perf_counter()
        gs.trigger()
        gs.force()  # what a second signal does
        report = await gs.wait()
    assert time.perf_counter() - started < 3
    (landing,) = report.tasks
    assert landing.forced
    assert isinstance(handle.outcome, tc.Aborted)


async def test_a_process_that_exits_on_its_own_reports_its_code() -> None:
    async with tc.GracefulShutdown(grace=1) as gs:
        handle = gs.spawn_process(["sh", "-c", "exit 3"])
        outcome = await handle.join()
    assert outcome == tc.Completed(tc.ProcessExit(3, None, None))
    assert str(tc.ProcessExit(3, None, None)) == "exited 3"


def test_bad_input() -> None:
    gs = tc.GracefulShutdown(grace=1)
    with pytest.raises(TypeError, match="command"):
        gs.spawn_process([])
    with pytest.raises(ValueError, match="grace"):
        gs.spawn_process(["true"], kill_grace=-1)
    with pytest.raises(RuntimeError, match="async with"):
        gs.spawn_process(["true"])
