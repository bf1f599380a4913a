"""Small helpers shared by the private modules (not public)."""

from __future__ import annotations

import inspect
from abc import ABCMeta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


class NoPublicConstructor(ABCMeta):
    """Metaclass for classes that only a factory of this package builds.

    Calling the class raises :exc:`TypeError`; the package itself uses ``cls._create(...)``.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} has no public constructor; "
            "it is returned by the factory that documents it"
        )

    def _create(cls: type[T], *args: Any, **kwargs: Any) -> T:  # noqa: ANN401
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


def check_reason(reason: object) -> None:
    """A cancel reason is a ``str`` or ``None`` (Trio's ``CancelScope.cancel`` takes only those)."""
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")


def first_leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside ``exc`` (``exc`` itself if it is not a group)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def only_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``trio.Cancelled``, or a group holding nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def reraise_bare(exc: BaseException) -> NoReturn:
    """Raise ``exc`` as itself (out of the group it came in), keeping its ``__context__``."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc


def raise_errors_of(group: BaseExceptionGroup[BaseException]) -> None:
    """Raise what ``group`` holds besides ``trio.Cancelled``: bare if it is one exception, as a
    group if several. Returns (raising nothing) if the group held only cancellations."""
    _, errors = group.split(trio.Cancelled)
    if errors is None:
        return
    if len(errors.exceptions) == 1 and not isinstance(errors.exceptions[0], BaseExceptionGroup):
        reraise_bare(errors.exceptions[0])
    raise errors from None


def fixup_module_metadata(module_name: str, namespace: dict[str, object]) -> None:
    """Make public objects say they live in ``module_name`` (reprs, tracebacks, docs)."""
    for name, obj in namespace.items():
        if name.startswith("_"):
            continue
        mod = getattr(obj, "__module__", None)
        if isinstance(mod, str) and mod.startswith(module_name + "._"):
            try:
                obj.__module__ = module_name
            except (AttributeError, TypeError):  # pragma: no cover - immutable builtins
                continue


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
