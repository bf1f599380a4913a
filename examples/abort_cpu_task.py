"""E07: aborting CPU-bound work: cooperative checkpoints, a killed worker process, a thread.

Source: the article on landing ten thousand in-flight tasks gracefully (tokens, drop guards,
timeouts, production cases).

The Rust ``cpu_intensive_task(n)`` sums ``0..n`` and calls ``yield_now().await`` every 1,000,000
iterations, so that ``handle.abort()`` (after 100 ms) can take effect; ``handle.await`` then
reports ``is_cancelled()`` and main prints "Task was aborted". A loop with no yield point could
not be aborted at all.

Trio version, three ways:

1. Cooperative: ``await trio.lowlevel.checkpoint()`` every 1,000,000 iterations is the
   counterpart of ``yield_now()``; ``TaskHandle.abort()`` lands at the next one and ``join()``
   returns ``Aborted``. The script measures how long after ``abort()`` the task stopped.
2. No checkpoints at all: run the loop in a worker process with
   ``trio_parallel.run_sync(fn, kill_on_cancel=True)``; aborting the task kills the process.
   The script measures how long after ``abort()`` the process stopped burning CPU.
3. A thread (``trio.to_thread.run_sync(fn, abandon_on_cancel=True)``) is only abandoned: the
   task is aborted at once, but Python cannot stop the thread, which burns on until it checks
   a stop flag of its own.
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import time
from pathlib import Path

import trio
import trio_parallel

import trio_cancel as tc

CHUNK = 1_000_000


async def cpu_intensive_task(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
        if i % CHUNK == 0:
            await trio.lowlevel.checkpoint()  # tokio::task::yield_now()
    return total


def burn_without_checkpoints(pid_file: str) -> int:
    """Runs in a worker process: announces its pid, then loops for about a minute."""
    Path(pid_file).write_text(str(os.getpid()))
    total = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for i in range(CHUNK):
            total += i
    return total


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def cooperative() -> None:
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, cpu_intensive_task, 10_000_000_000)
        asked_at = time.perf_counter()
        await trio.sleep(0.1)
        aborted_at = time.perf_counter()
        late_ms = (aborted_at - asked_at - 0.1) * 1000
        handle.abort("took too long")
        outcome = await handle.join()
        stopped_ms = (time.perf_counter() - aborted_at) * 1000
    match outcome:
        case tc.Completed(value):
            print(f"Completed: {value}")
        case tc.Aborted():
            print("Task was aborted")
            print(
                f"  main's 100 ms sleep ended {late_ms:.0f} ms late (it runs only when the loop"
                " yields);"
            )
            print(
                f"  the loop then stopped {stopped_ms:.1f} ms after abort(), at its next checkpoint"
            )
        case tc.Failed(error):
            raise error


async def killed_process() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pid_file = Path(tmp) / "worker.pid"
        async with trio.open_nursery() as nursery:
            run_killable = functools.partial(trio_parallel.run_sync, kill_on_cancel=True)
            handle = tc.spawn(nursery, run_killable, burn_without_checkpoints, str(pid_file))
            while not pid_file.exists() or not pid_file.read_text():
                if handle.is_finished():
                    raise RuntimeError(f"worker ended early: {handle.outcome!r}")
                await trio.sleep(0.01)
            pid = int(pid_file.read_text())
            await trio.sleep(0.1)
            aborted_at = time.perf_counter()
            handle.abort("took too long")
            outcome = await handle.join()
            # Another process's death has no Trio event: poll /proc, 1 ms at a time.
            while _alive(pid):  # noqa: ASYNC110
                await trio.sleep(0.001)
            gone_ms = (time.perf_counter() - aborted_at) * 1000
    print(f"Task was aborted: {outcome == tc.Aborted('took too long')}")
    print(f"  worker process {pid} stopped burning CPU {gone_ms:.0f} ms after abort() (killed)")


async def abandoned_thread() -> None:
    stop = threading.Event()
    finished = threading.Event()

    def burn() -> None:
        while not stop.is_set():
            sum(range(10_000))
        finished.set()

    async with trio.open_nursery() as nursery:
        run_abandonable = functools.partial(trio.to_thread.run_sync, abandon_on_cancel=True)
        handle = tc.spawn(nursery, run_abandonable, burn)
        await trio.sleep(0.1)
        handle.abort("took too long")
        outcome = await handle.join()
        await trio.sleep(0.2)
        print(f"Task was aborted: {outcome == tc.Aborted('took too long')}")
        print(f"  but the abandoned thread still runs 200 ms later: {not finished.is_set()}")
        stop.set()
        await trio.to_thread.run_sync(finished.wait)
        print("  it stopped only when its own stop flag was set")


async def main() -> None:
    print("--- 1. cooperative: a checkpoint every 1,000,000 iterations")
    await cooperative()
    print("--- 2. no checkpoints: a worker process, killed on abort")
    await killed_process()
    print("--- 3. a thread can only be abandoned")
    await abandoned_thread()


if __name__ == "__main__":
    trio.run(main)
