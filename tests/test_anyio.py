"""trio_cancel inside anyio code: on anyio's Trio backend everything works, task groups
included; on its asyncio backend, spawn/start refuse a task group with a clear error.

These tests run their own ``anyio.run`` (not pytest-trio), so they are plain functions.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.lowlevel
import pytest

import trio_cancel as tc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import trio

T = TypeVar("T")

pytestmark = pytest.mark.filterwarnings("error")


def run_on_trio(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn, backend="trio")


def test_tokens_cancel_work_in_a_task_group() -> None:
    async def main() -> list[str]:
        token = tc.CancellationToken()
        events: list[str] = []

        async def worker(name: str) -> None:
            with token.cancel_scope():
                await anyio.sleep_forever()
            events.append(f"{name} stopped")

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "a")
            tg.start_soon(worker, "b")
            await anyio.wait_all_tasks_blocked()
            token.cancel("stop")
        return sorted(events)

    assert run_on_trio(main) == ["a stopped", "b stopped"]


def test_spawn_into_a_task_group() -> None:
    async def main() -> tuple[object, object, object]:
        seen: list[tc.CancellationToken] = []

        async def worker(*, token: tc.CancellationToken) -> str:
            seen.append(token)
            await anyio.sleep_forever()
            return "unreachable"  # pragma: no cover

        async def quick(x: int) -> int:
            await anyio.lowlevel.checkpoint()
            return x * 2

        token = tc.CancellationToken()
        async with anyio.create_task_group() as tg:
            done = tc.spawn(tg, quick, 21)
            aborted = tc.spawn(tg, worker, token=token, name="worker")
            await anyio.wait_all_tasks_blocked()
            token.cancel("shutdown")
        return done.outcome, aborted.outcome, seen == [token]

    assert run_on_trio(main) == (tc.Completed(42), tc.Aborted("shutdown"), True)


def test_start_into_a_task_group() -> None:
    async def main() -> tuple[object, object, object]:
        async def server(*, task_status: trio.TaskStatus[int]) -> str:
            await anyio.sleep(0.01)
            task_status.started(8080)
            await anyio.sleep_forever()
            return "unreachable"  # pragma: no cover

        async def broken(*, task_status: trio.TaskStatus[int]) -> None:
            raise ValueError("cannot bind")

        async with anyio.create_task_group() as tg:
            handle, port = await tc.start(tg, server)
            with pytest.raises(ValueError, match="cannot bind"):
                await tc.start(tg, broken)
            handle.abort("done")
        return port, handle.outcome, handle.name

    assert run_on_trio(main) == (
        8080,
        tc.Aborted("done"),
        "test_start_into_a_task_group.<locals>.main.<locals>.server",
    )


def test_joinset_and_graceful_shutdown_inside_anyio_code() -> None:
    async def main() -> tuple[list[tc.Outcome[object]], list[tuple[str, tc.Outcome[object]]]]:
        async def work(x: int) -> int:
            await anyio.sleep(0.01 * x)
            return x

        async def cooperative(*, token: tc.CancellationToken) -> str:
            await token.wait_cancelled()
            return "landed"

        async with tc.JoinSet() as js:
            for x in (3, 1, 2):
                js.spawn(work, x)
            outcomes = await js.join_all()
        async with tc.GracefulShutdown(grace=1) as gs:
            gs.spawn(cooperative, name="c")
        assert gs.report is not None
        return outcomes, [(t.name, t.outcome) for t in gs.report]

    outcomes, landings = run_on_trio(main)
    assert outcomes == [tc.Completed(1), tc.Completed(2), tc.Completed(3)]
    assert landings == [("c", tc.Completed("landed"))]


def test_anyio_move_on_after_around_wait_cancelled() -> None:
    async def main() -> tuple[bool, bool]:
        token = tc.CancellationToken()
        with anyio.move_on_after(0.01) as scope:
            await token.wait_cancelled()
        token.cancel("now")
        with anyio.move_on_after(10) as second:
            await token.wait_cancelled()  # returns at once
        return scope.cancel_called, second.cancel_called

    assert run_on_trio(main) == (True, False)


def test_asyncio_backend_task_group_is_a_clear_runtime_error() -> None:
    async def main() -> list[str]:
        errors: list[str] = []

        async def job(*, task_status: trio.TaskStatus[None]) -> None:
            pass  # pragma: no cover

        async with anyio.create_task_group() as tg:
            with pytest.raises(RuntimeError) as info:
                tc.spawn(tg, anyio.sleep, 0)
            errors.append(str(info.value))
            with pytest.raises(RuntimeError) as info:
                await tc.start(tg, job)
            errors.append(str(info.value))
        return errors

    errors = anyio.run(main, backend="asyncio")
    assert errors == [
        "spawn(): trio_cancel needs Trio; run anyio with backend='trio'",
        "start(): trio_cancel needs Trio; run anyio with backend='trio'",
    ]


def test_the_library_does_not_import_anyio() -> None:
    code = textwrap.dedent(
        """
        import sys, trio, trio_cancel as tc
        async def main():
            async with trio.open_nursery() as n:
                tc.spawn(n, trio.sleep, 0)
            async with tc.JoinSet() as js:
                js.spawn(trio.sleep, 0)
            try:
                tc.spawn(object(), trio.sleep, 0)
            except TypeError:
                pass
        trio.run(main)
        print("anyio" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
