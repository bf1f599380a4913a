"""Checks of arguments and calling context, made before a call changes anything.

Each raises the error the caller should see (``TypeError``, ``ValueError``, ``RuntimeError``)
with a message naming the parameter or the call, so that a failed call can be corrected and
retried.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import sys
import types
import typing
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine


def check_seconds(value: object, name: str) -> float:
    """A delay or grace period in seconds: a real number, not NaN, >= 0 (``inf`` allowed).

    A number too large for a float (``10**400``) is a ``ValueError``, not an ``OverflowError``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError(
            f"{name} is too large to be a number of seconds: {_shorten(value)}"
        ) from None
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {value!r}")
    return seconds


def _shorten(value: object) -> str:
    """``repr(value)`` cut to at most 40 characters (a huge int is not printed in full)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_grace(grace: float) -> float:
    """A cleanup's ``grace`` bound in seconds (``math.inf`` allowed); else ValueError/TypeError."""
    return check_seconds(grace, "grace")


def check_trio_thread(what: str, *, wakes: bool = True) -> None:
    """Raise ``RuntimeError`` unless called from the thread running :func:`trio.run`.

    Called before a call changes anything, when it must wake a task or cancel a bound scope
    (``wakes``), so that the same call retried through ``trio.from_thread.run_sync`` does the
    whole job.
    """
    if wakes and not trio.lowlevel.in_trio_run():
        raise RuntimeError(
            f"{what} must wake Trio tasks, so it must be called from the Trio thread; from "
            f"another thread use trio.from_thread.run_sync(...). Nothing was changed."
        )


def check_sync_callable(fn: object, what: str) -> None:
    """``fn`` must be a plain callable, not an async function (whose call would only build a
    coroutine that nobody awaits)."""
    if not callable(fn):
        raise TypeError(f"{what} needs a callable, not {type(fn).__name__}")
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    ):
        raise TypeError(
            f"{what} needs a synchronous callable; {fn!r} is an async function, whose call "
            "would only create a coroutine that nobody awaits. Pass a sync function (for async "
            "work on cancellation, spawn a task that awaits token.wait_cancelled())."
        )


def check_async_callable(fn: object, what: str) -> None:
    """For a function called later: reject at once what is certainly not an async function (a
    plain ``def`` function, method or builtin). Other callables are checked when called."""
    if not callable(fn):
        raise TypeError(f"{what} needs an async function, not {type(fn).__name__}")
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    plain = inspect.isfunction(target) or inspect.ismethod(target) or inspect.isbuiltin(target)
    if plain and not inspect.iscoroutinefunction(target):
        raise TypeError(
            f"{what} needs an async function (async def); "
            f"{getattr(target, '__qualname__', target)!r} is synchronous"
        )


_COROUTINE_FLAG = inspect.CO_COROUTINE


def coroutine_or_error(
    async_fn: Callable[..., object], args: tuple[object, ...], what: str
) -> Coroutine[Any, Any, Any]:
    """Call ``async_fn(*args)`` and return the coroutine, as ``nursery.start_soon`` does: a
    function that is not async is a ``TypeError`` here, at the call that was given it, not a
    failure later inside the task. (Like Trio, a sync function has run by then.)"""
    if not callable(async_fn):
        raise TypeError(f"{what} needs an async function, not {type(async_fn).__name__}")
    if type(async_fn) is types.FunctionType and async_fn.__code__.co_flags & _COROUTINE_FLAG:
        return async_fn(*args)  # type: ignore[no-any-return]  # an async def: the common case
    if inspect.isasyncgenfunction(async_fn):
        raise TypeError(
            f"{what} needs an async function; {async_fn!r} is an async generator function"
        )
    coro = async_fn(*args)
    if not inspect.iscoroutine(coro):
        kind = "an awaitable" if inspect.isawaitable(coro) else type(coro).__name__
        if inspect.isawaitable(coro) and hasattr(coro, "close"):
            coro.close()
        raise TypeError(
            f"{what} needs an async function (async def), but "
            f"{getattr(async_fn, '__qualname__', async_fn)!r} returned {kind}: it appears to be "
            "synchronous. Pass the async function itself, or run blocking code with "
            "trio.to_thread.run_sync."
        )
    return coro


_ANYIO_ON_ASYNCIO = "trio_cancel needs Trio; run anyio with backend='trio'"


def check_nursery(nursery: object, what: str) -> None:
    """A ``trio.Nursery``, or an anyio ``TaskGroup`` while running on Trio (anyio's Trio
    backend, whose task groups wrap a Trio nursery: used only through their public
    ``start_soon`` and ``start``). anyio is never imported here: if a task group exists,
    anyio is already in ``sys.modules``.

    Raises:
        TypeError: Neither.
        RuntimeError: An anyio task group outside Trio (anyio's asyncio backend).
    """
    if type(nursery) is trio.Nursery or isinstance(nursery, trio.Nursery):
        return
    anyio = sys.modules.get("anyio")
    if anyio is not None and isinstance(nursery, anyio.abc.TaskGroup):
        if not trio.lowlevel.in_trio_run():
            raise RuntimeError(f"{what}: {_ANYIO_ON_ASYNCIO}")
        return
    raise TypeError(
        f"{what} needs a trio.Nursery (or an anyio TaskGroup on anyio's Trio backend), "
        f"not {type(nursery).__name__}"
    )


def check_reason(reason: object) -> None:
    """A cancel reason is a ``str`` or ``None`` (Trio's ``CancelScope.cancel`` takes only those)."""
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")


_UNANNOTATED_HELP = "annotate it 'token: tc.CancellationToken' to receive the task's token"
_TOKEN_CLASS_NAME = "CancellationToken"


def _names_cancellation_token(annotation: object) -> bool:
    """Whether a parameter annotation names ``CancellationToken``, read without evaluating it.

    An annotation object: the class itself, a union containing one (``X | None``,
    ``Optional[X]``, ``Union[...]``), or ``Annotated[X, ...]`` whose ``X`` is one. A string
    (``from __future__ import annotations``) or forward reference is parsed, never evaluated,
    and read by the same rule (see :func:`_string_names_token`). Containers
    (``list[CancellationToken]``), aliases and other classes do not count."""
    from ._token import CancellationToken  # here: _token imports this module

    if annotation is CancellationToken:
        return True
    if isinstance(annotation, str):
        return _string_names_token(annotation)
    if isinstance(annotation, typing.ForwardRef):
        return _string_names_token(annotation.__forward_arg__)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _names_cancellation_token(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(_names_cancellation_token(arg) for arg in typing.get_args(annotation))
    return False


@functools.lru_cache(maxsize=256)
def _string_names_token(text: str) -> bool:
    """The token rule for a string annotation, parsed with :mod:`ast` (no evaluation): a name
    or attribute whose last identifier is ``CancellationToken`` (any ``module.``
    prefix: without evaluating, another module's class of that name cannot be told apart), a
    ``|`` union or ``Optional[...]`` / ``Union[...]`` containing one, ``Annotated[X, ...]``
    with ``X`` one, or a nested string of those. Subscripted containers and anything else do
    not count."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):  # not an expression (or a NUL byte)
        return False
    return _node_names_token(node)


def _node_names_token(node: ast.expr) -> bool:
    if isinstance(node, ast.Name | ast.Attribute):
        return _last_identifier(node) == _TOKEN_CLASS_NAME
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _node_names_token(node.left) or _node_names_token(node.right)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _string_names_token(node.value)
    if isinstance(node, ast.Subscript):
        base = _last_identifier(node.value)
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base in ("Optional", "Union"):
            return any(_node_names_token(item) for item in items)
        if base == "Annotated" and items:
            return _node_names_token(items[0])
    return False


def _last_identifier(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


@attrs.frozen
class TokenParameter:
    """What the token rule found in a function's signature.

    Attributes:
        signature: The function's signature (to see whether ``args`` fill ``token``).
        annotated: The ``token`` parameter is annotated as a cancellation token: it receives
            one. False: it is unannotated and required (a ``TypeError`` unless ``args`` fill
            it positionally).
        required: The parameter has no default.
    """

    signature: inspect.Signature
    annotated: bool
    required: bool


def find_token_parameter(fn: Callable[..., object]) -> TokenParameter | None:
    """The one rule for the word ``token``: a keyword-passable parameter named ``token`` whose
    annotation names ``CancellationToken`` receives the task's token. ``None`` when nothing is
    ever passed: no such parameter, ``token`` only through ``**kwargs``, an unannotated
    ``token`` with a default, or a ``token`` of another type (an API key). An unannotated
    required ``token`` is returned with ``annotated=False`` (the caller refuses it)."""
    if type(fn) is types.FunctionType:
        return _cached_token_parameter(fn)
    # Only plain functions are cached: a bound method or a partial is a new object on every
    # spawn (caching it would only keep its instance alive).
    if isinstance(fn, functools.partial) and "token" in fn.keywords:
        return None  # the partial already gives a token: leave it alone
    return _token_parameter(fn)


def _token_parameter(fn: Callable[..., object]) -> TokenParameter | None:
    try:
        signature = inspect.signature(fn, eval_str=False)
    except (TypeError, ValueError):  # a builtin or other callable without a signature
        return None
    param = signature.parameters.get("token")
    if param is None or param.kind not in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        return None
    required = param.default is inspect.Parameter.empty
    if param.annotation is inspect.Parameter.empty:
        return TokenParameter(signature, annotated=False, required=True) if required else None
    if not _names_cancellation_token(param.annotation):
        return None  # token: str = "my-api-key" is the caller's own business
    return TokenParameter(signature, annotated=True, required=required)


# A server spawns the same function again and again, and a signature costs microseconds.
_cached_token_parameter = functools.lru_cache(maxsize=512)(_token_parameter)


def takes_cancellation_token(fn: Callable[..., object]) -> bool:
    """Whether ``fn`` declares a keyword-passable ``token`` annotated as a cancellation token
    (the rule of :func:`find_token_parameter`)."""
    found = find_token_parameter(fn)
    return found is not None and found.annotated


def fills_token_positionally(found: TokenParameter, args: tuple[object, ...]) -> bool | None:
    """Whether ``args`` fill the ``token`` parameter positionally; ``None`` if ``args`` do not
    fit the signature at all (the call itself will say so)."""
    try:
        return "token" in found.signature.bind_partial(*args).arguments
    except TypeError:
        return None


def with_token(
    async_fn: Callable[..., Any],
    args: tuple[object, ...],
    token: object | None,
    what: str,
    *,
    make_token: Callable[[], object] | None = None,
) -> Callable[..., Any]:
    """The one rule for the word ``token`` (see :func:`find_token_parameter`): a function
    declaring ``token: CancellationToken`` (or a union or string annotation naming it) is
    called with the token its task runs under.

    Returns ``async_fn`` with ``token=token`` bound when it takes one (and ``args`` do not
    already fill ``token`` positionally); ``async_fn`` itself otherwise. With ``make_token``,
    the token is made only if it is passed.

    Raises:
        TypeError: The ``token`` parameter is required and annotated, and there is no token
            to give; or it is required and unannotated (the message says how to annotate it).
    """
    found = find_token_parameter(async_fn)
    if found is None:
        return async_fn
    positional = fills_token_positionally(found, args)
    if positional is None or positional:
        return async_fn  # passed positionally (left alone), or wrong arguments
    name = getattr(async_fn, "__qualname__", None) or repr(async_fn)
    if not found.annotated:
        raise TypeError(
            f"{name}() has a required parameter 'token' without an annotation, so {what} "
            f"does not know whether it wants a cancellation token: {_UNANNOTATED_HELP} (or "
            "give it a default, or pass it positionally, if it is something else)"
        )
    if token is None and make_token is not None:
        token = make_token()
    if token is not None:
        return functools.partial(async_fn, token=token)
    if found.required:
        raise TypeError(
            f"{name}() requires a keyword argument 'token', and {what} was given no token to "
            f"pass it: call {what[:-2]}(..., token=a_token)"
        )
    return async_fn
