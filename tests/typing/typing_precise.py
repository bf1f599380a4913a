"""Typing tests: checked by mypy (``make typecheck`` runs mypy on tests/) and by pyright (a
step of its own in ``make typecheck``); never run.

``assert_type`` lines state the precise types; lines marked ``# type: ignore[...]`` (mypy,
with ``warn_unused_ignores``) and ``# pyright: ignore[...]`` (pyright, with
``reportUnnecessaryTypeIgnoreComment``, and ``# type: ignore`` disabled: see
pyrightconfig.json beside this file) must fail type-checking: if one stops failing, the
now unneeded comment fails the check. The fallbacks (an injected ``token`` or ``task_status``,
which no checker can take out of a signature) are shown too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, assert_type

import trio_cancel as tc

if TYPE_CHECKING:
    import trio


async def fetch(url: str, retries: int) -> bytes:
    return url.encode() * retries


async def worker(url: str, *, token: tc.CancellationToken) -> int:
    await token.wait_cancelled()
    return len(url)


async def serve(port: int, *, task_status: trio.TaskStatus[int]) -> str:
    task_status.started(port)
    return "done"


async def join_sets() -> None:
    # No annotation needed: T defaults to object (PEP 696).
    async with tc.JoinSet() as js:
        assert_type(js, tc.JoinSet[object])
        js.spawn(fetch, "a", 1)
        assert_type(await js.join_next(), tc.Outcome[object] | None)

    async with tc.JoinSet[bytes]() as typed:
        handle = typed.spawn(fetch, "a", 1)
        assert_type(handle, tc.TaskHandle[bytes])
        assert_type(await typed.join_next(), tc.Outcome[bytes] | None)
        assert_type(await typed.join_all(), list[tc.Outcome[bytes]])
        found = await typed.join_next_with_handle()
        assert_type(found, tuple[tc.TaskHandle[bytes], tc.Outcome[bytes]] | None)
        async for outcome in typed:
            assert_type(outcome, tc.Outcome[bytes])
            match outcome:
                case tc.Completed(value):
                    assert_type(value, bytes)
                case tc.Failed(error):
                    assert_type(error, BaseException)
                case tc.Aborted(reason):
                    assert_type(reason, str | None)
        # Positional arguments are checked against the function (TypeVarTuple).
        typed.spawn(fetch, "a", "1")  # type: ignore[arg-type, call-arg]  # pyright: ignore[reportArgumentType]
        # A task that returns something else does not go into a JoinSet[bytes].
        typed.spawn(worker, "a", token=tc.CancellationToken())  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType, reportCallIssue]


async def spawns(nursery: trio.Nursery, token: tc.CancellationToken) -> None:
    assert_type(tc.spawn(nursery, fetch, "a", 2), tc.TaskHandle[bytes])
    tc.spawn(nursery, fetch, "a")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # Fallback: a function that takes the injected token is typed Callable[..., Awaitable[T]]
    # (the return type stays precise; the arguments are not checked).
    assert_type(tc.spawn(nursery, worker, "a", token=token), tc.TaskHandle[int])

    async with tc.GracefulShutdown(grace=1.0) as gs:
        assert_type(gs.spawn(fetch, "a", 2), tc.TaskHandle[bytes])
        assert_type(gs.spawn(worker, "a"), tc.TaskHandle[int])  # the fallback, as above


async def starts(nursery: trio.Nursery) -> None:
    # start(): Trio types the started value as Any; the handle's type is precise.
    handle, port = await tc.start(nursery, serve, 8080)
    assert_type(handle, tc.TaskHandle[str])
    assert_type(port, Any)
    async with tc.JoinSet[str]() as js:
        started, _ = await js.start(serve, 8080)
        assert_type(started, tc.TaskHandle[str])
    async with tc.GracefulShutdown(grace=1.0) as gs:
        assert_type((await gs.start(serve, 1))[0], tc.TaskHandle[str])


async def selects(receive: trio.MemoryReceiveChannel[int], token: tc.CancellationToken) -> None:
    selected = await tc.select(msg=receive.receive, stop=token.wait_cancelled)
    assert_type(selected, tc.Selected[int | None])
    assert_type(selected.name, str)
    assert_type(selected.value, int | None)
    # Unpacking goes through __iter__, which cannot give two different types: both names are
    # `str | T`; use .name and .value where the precise type matters.
    name, value = selected
    assert_type(name, str | int | None)
    assert_type(value, str | int | None)


def outcomes() -> None:
    outcomes: list[tc.Outcome[int]] = [tc.Completed(1), tc.Aborted(None)]
    for outcome in outcomes:
        if isinstance(outcome, tc.Completed):
            assert_type(outcome.value, int)
    tc.Completed[int]("one")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


@tc.may_cancel
async def read_some(
    stream: trio.abc.ReceiveStream, n: int, *, token: tc.CancellationToken
) -> bytes:
    return b""


@tc.may_cancel
async def four(a: int, b: int, c: int, d: int, *, token: tc.CancellationToken) -> int:
    return a + b + c + d


async def may_cancels(stream: trio.abc.ReceiveStream, token: tc.CancellationToken) -> None:
    # Up to three positional parameters keep their types (keywords pass unchecked).
    assert_type(read_some(stream, 10), tc.MayCancel[bytes])
    assert_type(await read_some(stream, 10).may_cancel_with(token), bytes)
    read_some(stream, "10")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # Four or more: the fallback, Callable[..., MayCancel[T]] (the result stays precise).
    assert_type(four(1, 2, 3, 4), tc.MayCancel[int])
