"""Checks of arguments and calling context, made before a call changes anything.

Each raises the error the caller should see (``TypeError``, ``ValueError``, ``RuntimeError``)
with a message naming the parameter or the call, so that a failed call can be corrected and
retried.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from typing import TYPE_CHECKING, Any

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


def coroutine_or_error(
    async_fn: Callable[..., object], args: tuple[object, ...], what: str
) -> Coroutine[Any, Any, Any]:
    """Call ``async_fn(*args)`` and return the coroutine, as ``nursery.start_soon`` does: a
    function that is not async is a ``TypeError`` here, at the call that was given it, not a
    failure later inside the task. (Like Trio, a sync function has run by then.)"""
    if not callable(async_fn):
        raise TypeError(f"{what} needs an async function, not {type(async_fn).__name__}")
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


def check_reason(reason: object) -> None:
    """A cancel reason is a ``str`` or ``None`` (Trio's ``CancelScope.cancel`` takes only those)."""
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")


def takes_token_keyword(fn: Callable[..., object]) -> bool:
    """Whether ``fn`` can be called with ``token=``: a parameter of that name that is not
    positional-only, or ``**kwargs``. False for a callable without a signature."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or other callable without a signature
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "token" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in params
    )


@functools.lru_cache(maxsize=512)
def _token_parameter(
    async_fn: Callable[..., Any],
) -> tuple[inspect.Signature, inspect.Parameter | None] | None:
    """``async_fn``'s signature and its ``token`` parameter (``None`` if it takes ``token``
    only through ``**kwargs``), or ``None`` if it accepts no keyword ``token``. Cached: a
    server spawns the same function again and again, and a signature costs microseconds."""
    try:
        signature = inspect.signature(async_fn)
    except (TypeError, ValueError):  # a builtin or other callable without a signature
        return None
    params = signature.parameters
    named = params.get("token")
    if named is not None and named.kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.VAR_POSITIONAL,
    ):
        named = None
    if named is None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return signature, named


def _cached_token_parameter(
    async_fn: Callable[..., Any],
) -> tuple[inspect.Signature, inspect.Parameter | None] | None:
    # Only plain functions are cached: a bound method or a partial is a new object on every
    # spawn (caching it would only keep its instance alive).
    if type(async_fn) is types.FunctionType:
        return _token_parameter(async_fn)
    return _token_parameter.__wrapped__(async_fn)


def with_token(
    async_fn: Callable[..., Any],
    args: tuple[object, ...],
    token: object | None,
    what: str,
    *,
    make_token: Callable[[], object] | None = None,
) -> Callable[..., Any]:
    """The one rule for the word ``token``: a function that accepts a keyword ``token`` (a
    parameter of that name, or ``**kwargs``) is called with the token its task runs under.

    Returns ``async_fn`` with ``token=token`` bound when it accepts it (and ``args`` do not
    already fill a ``token`` parameter positionally); ``async_fn`` itself otherwise. With
    ``make_token``, the token is made only if it is passed. A function whose ``token``
    parameter is required, given no token, is a ``TypeError`` naming ``what``.
    """
    found = _cached_token_parameter(async_fn)
    if found is None:
        return async_fn
    signature, named = found
    try:
        if "token" in signature.bind_partial(*args).arguments:
            return async_fn  # the caller passed it positionally
    except TypeError:
        return async_fn  # wrong arguments: the call itself reports them
    if token is None and make_token is not None:
        token = make_token()
    if token is not None:
        return functools.partial(async_fn, token=token)
    if named is not None and named.default is inspect.Parameter.empty:
        name = getattr(async_fn, "__qualname__", None) or repr(async_fn)
        raise TypeError(
            f"{name}() requires a keyword argument 'token', and {what} was given no token to "
            f"pass it: call {what[:-2]}(..., token=a_token)"
        )
    return async_fn
