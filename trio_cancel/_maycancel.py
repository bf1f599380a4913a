"""Operations that keep partial progress: the ``may_cancel_with`` pattern.

A read that is cancelled by a ``trio.Cancelled`` loses what it was going to return: the bytes it
had already received are in its local state, and the exception unwinds past them. The article's
answer is an operation that takes a token and *returns* when the token fires, with what it has
so far. ``@tc.may_cancel`` gives such a function the two calling styles of the article: plain
``await f(...)`` runs it with a token that never fires; ``await f(...).may_cancel_with(tok)``
runs it with a child of ``tok``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, final, overload

import trio

from ._checks import find_token_parameter
from ._token import CancellationToken
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
# The positional parameters of a decorated function (contravariant: they are inputs).
A1 = TypeVar("A1", contravariant=True)
A2 = TypeVar("A2", contravariant=True)
A3 = TypeVar("A3", contravariant=True)


# What may_cancel's signature can say precisely: a function of up to three positional
# parameters and a keyword `token` keeps their types (a TypeVarTuple cannot be combined with
# the keyword in a way mypy infers, and a ParamSpec cannot drop `token`); the decorated call
# checks them, and takes any keyword arguments the function has (unchecked). Other shapes fall
# back to Callable[..., MayCancel[T]].
class _TakesToken0(Protocol[T_co]):
    def __call__(self, *, token: CancellationToken) -> Awaitable[T_co]: ...


class _TakesToken1(Protocol[A1, T_co]):
    def __call__(self, a1: A1, /, *, token: CancellationToken) -> Awaitable[T_co]: ...


class _TakesToken2(Protocol[A1, A2, T_co]):
    def __call__(self, a1: A1, a2: A2, /, *, token: CancellationToken) -> Awaitable[T_co]: ...


class _TakesToken3(Protocol[A1, A2, A3, T_co]):
    def __call__(
        self, a1: A1, a2: A2, a3: A3, /, *, token: CancellationToken
    ) -> Awaitable[T_co]: ...


class _Call0(Protocol[T]):
    __name__: str

    def __call__(self, **kwargs: object) -> MayCancel[T]: ...


class _Call1(Protocol[A1, T]):
    __name__: str

    def __call__(self, a1: A1, /, **kwargs: object) -> MayCancel[T]: ...


class _Call2(Protocol[A1, A2, T]):
    __name__: str

    def __call__(self, a1: A1, a2: A2, /, **kwargs: object) -> MayCancel[T]: ...


class _Call3(Protocol[A1, A2, A3, T]):
    __name__: str

    def __call__(self, a1: A1, a2: A2, a3: A3, /, **kwargs: object) -> MayCancel[T]: ...


@final
class MayCancel(Generic[T], metaclass=NoPublicConstructor):
    """A call of a :func:`may_cancel` function, not started yet. Await it once.

    States: *unstarted*, *bound* (after :meth:`may_cancel_with`), *awaited*. Nothing runs
    until it is awaited; one that is never awaited does nothing and warns nothing (as an
    un-polled Rust future).
    """

    __slots__ = ("_args", "_awaited", "_fn", "_kwargs", "_token")

    def __init__(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._token: CancellationToken | None = None
        self._awaited = False

    def may_cancel_with(self, token: CancellationToken) -> MayCancel[T]:
        """Run with a child of ``token``: the operation stops early, returning what it has,
        when ``token`` is cancelled (at once if it already is). Returns this object.

        Raises:
            TypeError: ``token`` is not a :class:`CancellationToken`.
            RuntimeError: A token was already given, or the call was already awaited.

        Not a checkpoint; never blocks.
        """
        if not isinstance(token, CancellationToken):
            raise TypeError(
                f"may_cancel_with() takes a CancellationToken, not {type(token).__name__}"
            )
        if self._awaited:
            raise RuntimeError("this call was already awaited")
        if self._token is not None:
            raise RuntimeError("may_cancel_with() was already called on this call")
        self._token = token
        return self

    async def _run(self) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        parent = self._token
        token = CancellationToken() if parent is None else parent.child_token()
        result = await self._fn(*self._args, token=token, **self._kwargs)
        await trio.lowlevel.cancel_shielded_checkpoint()  # a schedule point even if fn was quick
        return result

    def __await__(self) -> Generator[Any, None, T]:
        """Cancellation: always a checkpoint (a cancel point before the function starts and a
        schedule point after it returns, also when it returns at once). A cancellation from
        outside raises ``trio.Cancelled`` as usual (before the function starts, if it is
        already pending); only the token makes the function return early, and what it
        returned is never lost to the final schedule point."""
        if self._awaited:
            raise RuntimeError("a MayCancel can be awaited only once")
        self._awaited = True
        return self._run().__await__()

    def __repr__(self) -> str:
        name = getattr(self._fn, "__qualname__", repr(self._fn))
        state = "awaited" if self._awaited else "bound" if self._token is not None else "unstarted"
        return f"<MayCancel {name} {state}>"


@overload
def may_cancel(fn: _TakesToken0[T]) -> _Call0[T]: ...
@overload
def may_cancel(fn: _TakesToken1[A1, T]) -> _Call1[A1, T]: ...
@overload
def may_cancel(fn: _TakesToken2[A1, A2, T]) -> _Call2[A1, A2, T]: ...
@overload
def may_cancel(fn: _TakesToken3[A1, A2, A3, T]) -> _Call3[A1, A2, A3, T]: ...
@overload
def may_cancel(fn: Callable[..., Awaitable[T]]) -> Callable[..., MayCancel[T]]: ...


def may_cancel(fn: Callable[..., Awaitable[T]]) -> Callable[..., MayCancel[T]]:
    """Decorate ``async def f(..., *, token: CancellationToken)`` for both calling styles.

    ``await f(...)`` runs ``f`` with a token that is never cancelled: it runs to completion.
    ``await f(...).may_cancel_with(tok)`` runs it with a child of ``tok``: ``f`` decides what
    it returns when its token fires (for a read: what it received so far). Calling ``f(...)``
    only builds a :class:`MayCancel`; nothing runs until it is awaited.

    Typing: for a function of up to three positional parameters (and ``token``), the
    decorated call keeps their types; its other keyword arguments are passed on unchecked.
    Other shapes are typed ``Callable[..., MayCancel[T]]``.

    Raises:
        TypeError: ``fn`` is not callable or declares no keyword ``token`` annotated as a
            :class:`CancellationToken` (``**kwargs``, an unannotated ``token`` or a ``token:
            str`` do not count); passing ``token=`` to the call yourself.
    """
    if not callable(fn):
        raise TypeError(f"may_cancel() decorates an async function, not {type(fn).__name__}")
    found = find_token_parameter(fn)
    if found is None or not found.annotated:
        name = getattr(fn, "__qualname__", fn)
        raise TypeError(
            f"may_cancel(): {name!r} must take a keyword argument 'token' annotated "
            "'token: tc.CancellationToken' (the one rule for the word: an unannotated token, "
            "a token of another type or **kwargs never receives one)"
        )

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> MayCancel[T]:  # noqa: ANN401 - fn's own arguments
        if "token" in kwargs:
            raise TypeError("pass the token with .may_cancel_with(token), not token=")
        return MayCancel[T]._create(fn, args, kwargs)

    return call
