"""The one rule for the word ``token``: only ``token: CancellationToken`` receives one.

Every spawn (``tc.spawn``, ``JoinSet.spawn``, ``GracefulShutdown.spawn``), every ``start`` and
``@tc.may_cancel`` follow it. This file is written with ``from __future__ import annotations``,
so every annotation below is a string read without evaluating it; ``with_annotation`` sets
annotation objects, as a module without that import has them.
"""

from __future__ import annotations

import functools
import gc
import inspect
from typing import TYPE_CHECKING, Annotated, Any, Optional, Union

import pytest
import trio
import trio.testing

import trio_cancel as tc
from trio_cancel import CancellationToken

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

received: list[object] = []


async def annotated(*, token: tc.CancellationToken) -> None:
    received.append(token)


async def bare_name(token: CancellationToken) -> None:
    received.append(token)


async def optional_union(token: tc.CancellationToken | None = None) -> None:
    received.append(token)


async def optional_typing(token: Optional[tc.CancellationToken] = None) -> None:  # noqa: UP045
    received.append(token)


async def unannotated_optional(token=None) -> None:  # type: ignore[no-untyped-def]  # noqa: ANN001
    received.append(token)


async def api_key(url: str = "https://example.invalid", token: str = "my-api-key") -> None:
    received.append(token)


async def str_required(token: str) -> None:
    received.append(token)  # pragma: no cover


async def kwargs_only(**kwargs: Any) -> None:  # noqa: ANN401 - the point of the test
    received.append(kwargs.get("token", "no token"))


async def unannotated_required(token) -> None:  # type: ignore[no-untyped-def]  # noqa: ANN001
    received.append(token)


def with_annotation(annotation: object) -> Callable[..., Awaitable[None]]:
    """A function whose ``token`` parameter has ``annotation`` as an object (as without ``from
    __future__ import annotations``), with a default of ``None``."""

    async def fn(token=None) -> None:  # type: ignore[no-untyped-def]  # noqa: ANN001
        received.append(token)

    fn.__annotations__ = {"token": annotation, "return": None}
    return fn


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    received.clear()


def spawners(
    nursery: trio.Nursery, js: tc.JoinSet, gs: tc.GracefulShutdown, t: tc.CancellationToken
) -> dict[str, Callable[..., tc.TaskHandle[Any]]]:
    return {
        "spawn": lambda fn, *args: tc.spawn(nursery, fn, *args, token=t),
        "JoinSet.spawn": lambda fn, *args: js.spawn(fn, *args, token=t),
        "GracefulShutdown.spawn": lambda fn, *args: gs.spawn(fn, *args),
    }


async def run_each(fn: Callable[..., Awaitable[None]], *args: object) -> dict[str, list[object]]:
    """Run ``fn(*args)`` through each of the three spawns and return what each call saw."""
    t = tc.CancellationToken()
    results: dict[str, list[object]] = {}
    async with (
        trio.open_nursery() as nursery,
        tc.JoinSet() as js,
        tc.GracefulShutdown(grace=1) as gs,
    ):
        for what, spawn in spawners(nursery, js, gs, t).items():
            received.clear()
            handle = spawn(fn, *args)
            assert await handle.join() == tc.Completed(None)
            results[what] = list(received)
        gs.trigger()
    for what, seen in results.items():
        if seen and any(seen[0] is arg for arg in args):
            continue  # given positionally
        if what == "GracefulShutdown.spawn" and seen and isinstance(seen[0], tc.CancellationToken):
            assert seen[0] is not gs.token  # a child of it
            assert seen[0].is_cancelled()  # ... that the trigger cancelled
            results[what] = ["child of gs.token"]
        elif seen and seen[0] is t:
            results[what] = ["t"]
    return results


@pytest.mark.parametrize("fn", [annotated, bare_name, optional_union, optional_typing])
async def test_annotated_token_parameter_receives_the_token(
    fn: Callable[..., Awaitable[None]],
) -> None:
    assert await run_each(fn) == {
        "spawn": ["t"],
        "JoinSet.spawn": ["t"],
        "GracefulShutdown.spawn": ["child of gs.token"],
    }


@pytest.mark.parametrize(
    "annotation",
    [
        tc.CancellationToken,
        tc.CancellationToken | None,
        Optional[tc.CancellationToken],  # noqa: UP045 - the spelling under test
        Optional["tc.CancellationToken"],
        "CancellationToken | int",
    ],
)
async def test_annotation_objects_are_read_too(annotation: object) -> None:
    t = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        await tc.spawn(nursery, with_annotation(annotation), token=t).join()
    assert received == [t]


class CancellationToken_:  # renamed below: another class of the same name
    pass


CancellationToken_.__name__ = CancellationToken_.__qualname__ = "CancellationToken"


@pytest.mark.parametrize(
    ("as_object", "as_string", "receives"),
    [
        (Annotated[tc.CancellationToken, "doc"], "Annotated[tc.CancellationToken, 'doc']", True),
        (
            Optional[Annotated[tc.CancellationToken, "doc"]],  # noqa: UP045 - under test
            "typing.Optional[typing.Annotated[CancellationToken, 'doc']]",
            True,
        ),
        (Union[int, tc.CancellationToken], "Union[int, trio_cancel.CancellationToken]", True),  # noqa: UP007
        (tc.CancellationToken | None, "None | 'CancellationToken'", True),
        (list[tc.CancellationToken], "list[tc.CancellationToken]", False),
        (dict[str, tc.CancellationToken], "dict[str, CancellationToken]", False),
        (Annotated[int, tc.CancellationToken], "Annotated[int, CancellationToken]", False),
        (CancellationToken_, "CancellationToken(", False),
    ],
)
async def test_an_annotation_object_and_its_string_decide_alike(
    as_object: object, as_string: str, receives: bool
) -> None:
    """The same annotation, as an object and as the string ``from __future__ import
    annotations`` makes of it, decides alike: the class, unions and ``Annotated[X, ...]`` of
    it receive the token; containers and other classes do not."""
    for annotation in (as_object, as_string):
        received.clear()
        t = tc.CancellationToken()
        async with trio.open_nursery() as nursery:
            await tc.spawn(nursery, with_annotation(annotation), token=t).join()
        assert received == ([t] if receives else [None]), annotation


async def test_a_string_accepts_any_module_prefix() -> None:
    """Without evaluating, ``othermod.CancellationToken`` in a string cannot be told apart
    from ``tc.CancellationToken``: it counts (as the object form of trio_cancel's does)."""
    t = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        await tc.spawn(nursery, with_annotation("othermod.CancellationToken"), token=t).join()
    assert received == [t]


@pytest.mark.parametrize("annotation", ["TokenAlias", "MyCancellationTokenLike", str, int | None])
async def test_an_alias_or_another_type_does_not_count(annotation: object) -> None:
    async with trio.open_nursery() as nursery:
        await tc.spawn(nursery, with_annotation(annotation), token=tc.CancellationToken()).join()
    assert received == [None]


@pytest.mark.parametrize(
    ("fn", "default"),
    [
        (unannotated_optional, None),
        (api_key, "my-api-key"),
        (kwargs_only, "no token"),
    ],
)
async def test_other_token_parameters_never_receive_one(
    fn: Callable[..., Awaitable[None]], default: object
) -> None:
    """An API key stays an API key; ``**kwargs`` gets nothing unexpected."""
    assert await run_each(fn) == {
        "spawn": [default],
        "JoinSet.spawn": [default],
        "GracefulShutdown.spawn": [default],
    }


async def test_a_required_str_token_is_the_callers_business(nursery: trio.Nursery) -> None:
    """``token: str`` is never filled: the call fails as Python says (a missing argument), at
    the spawn, as for any function called with too few arguments."""
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'token'"):
        tc.spawn(nursery, str_required, token=tc.CancellationToken())
    assert await tc.spawn(nursery, str_required, "abc").join() == tc.Completed(None)
    assert received == ["abc"]


async def test_an_unannotated_required_token_is_a_type_error_at_the_call(
    nursery: trio.Nursery,
) -> None:
    t = tc.CancellationToken()
    message = (
        r"unannotated_required\(\) has a required parameter 'token' without an annotation"
        r".*'token: tc\.CancellationToken'"
    )
    with pytest.raises(TypeError, match=message):
        tc.spawn(nursery, unannotated_required, token=t)
    with pytest.raises(TypeError, match=message):
        tc.spawn(nursery, unannotated_required)  # type: ignore[call-arg, arg-type]
    async with tc.JoinSet() as js:
        with pytest.raises(TypeError, match=r"JoinSet\.spawn\(\).*annotat"):
            js.spawn(unannotated_required, token=t)
        assert len(js) == 0
    async with tc.GracefulShutdown(grace=1) as gs:
        with pytest.raises(TypeError, match=r"GracefulShutdown\.spawn\(\).*annotat"):
            gs.spawn(unannotated_required)
    assert gs.report is not None
    assert len(gs.report) == 0
    with pytest.raises(TypeError, match=r"may_cancel.*annotated 'token: tc.CancellationToken'"):
        tc.may_cancel(unannotated_required)
    await trio.testing.wait_all_tasks_blocked()
    assert nursery.child_tasks == set()  # nothing was scheduled
    # Passed positionally, it is the caller's own business.
    assert await tc.spawn(nursery, unannotated_required, "mine", token=t).join() == (
        tc.Completed(None)
    )
    assert received == ["mine"]


async def test_a_token_passed_positionally_is_left_alone() -> None:
    mine = tc.CancellationToken()
    assert await run_each(bare_name, mine) == {
        "spawn": [mine],
        "JoinSet.spawn": [mine],
        "GracefulShutdown.spawn": [mine],
    }


async def test_a_partial_that_gives_a_token_is_left_alone(nursery: trio.Nursery) -> None:
    mine, other = tc.CancellationToken(), tc.CancellationToken()
    handle = tc.spawn(nursery, functools.partial(annotated, token=mine), token=other)
    assert await handle.join() == tc.Completed(None)
    assert received == [mine]


async def test_a_bound_method_follows_the_rule(nursery: trio.Nursery) -> None:
    class Worker:
        async def run(self, *, token: tc.CancellationToken) -> None:
            received.append(token)

        async def call(self, token: str = "key") -> None:
            received.append(token)

    t = tc.CancellationToken()
    await tc.spawn(nursery, Worker().run, token=t).join()
    await tc.spawn(nursery, Worker().call, token=t).join()
    assert received == [t, "key"]


async def test_may_cancel_follows_the_rule() -> None:
    async def with_kwargs(**kwargs: Any) -> object:  # noqa: ANN401 - the point of the test
        return kwargs  # pragma: no cover

    async def key(*, token: str = "my-api-key") -> str:
        return token  # pragma: no cover

    for fn in (with_kwargs, key, unannotated_optional):
        with pytest.raises(TypeError, match=r"annotated 'token: tc.CancellationToken'"):
            tc.may_cancel(fn)

    @tc.may_cancel
    async def optional(*, token: tc.CancellationToken | None = None) -> bool:
        return isinstance(token, tc.CancellationToken)

    assert await optional() is True


def test_the_rule_is_cached_per_plain_function_only() -> None:
    from trio_cancel import _checks

    _checks._cached_token_parameter.cache_clear()
    _checks.find_token_parameter(annotated)
    _checks.find_token_parameter(annotated)
    info = _checks._cached_token_parameter.cache_info()
    assert (info.hits, info.misses) == (1, 1)

    class Request:
        async def handle(self, *, token: tc.CancellationToken) -> None:
            pass  # pragma: no cover

    request = Request()
    _checks.find_token_parameter(request.handle)
    assert _checks._cached_token_parameter.cache_info().currsize == 1
    del request
    gc.collect()


def forwarding(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A decorator made with ``functools.wraps``: its own signature is ``(*args, **kwargs)``."""

    @functools.wraps(fn)
    async def wrapper(*args: object, **kwargs: object) -> None:
        await fn(*args, **kwargs)

    return wrapper


async def test_a_wrapper_is_read_through_to_the_function_it_wraps() -> None:
    """As ``inspect.signature`` does, the rule reads a ``functools.wraps`` wrapper's
    ``__wrapped__`` (the spawn's quick path for plain functions must not skip it)."""
    t = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        await tc.spawn(nursery, forwarding(annotated), token=t).join()
        assert received == [t]
        with pytest.raises(TypeError, match="requires a keyword argument 'token'"):
            tc.spawn(nursery, forwarding(annotated))


async def test_a_signature_attribute_is_read() -> None:
    async def forward(**kwargs: object) -> None:
        received.append(kwargs.get("token", "no token"))

    forward.__signature__ = inspect.signature(annotated)  # type: ignore[attr-defined]
    t = tc.CancellationToken()
    async with trio.open_nursery() as nursery:
        await tc.spawn(nursery, forward, token=t).join()
    assert received == [t]
