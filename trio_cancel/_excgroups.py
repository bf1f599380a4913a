"""Exception group helpers: find the leaves, tell cancellations from errors, re-raise bare."""

from __future__ import annotations

from typing import NoReturn

import trio


def first_leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside ``exc`` (``exc`` itself if it is not a group)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def leaves(exc: BaseException) -> list[BaseException]:
    """Every non-group exception inside ``exc`` (``[exc]`` if it is not a group); iterative."""
    found: list[BaseException] = []
    stack = [exc]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(reversed(item.exceptions))
        else:
            found.append(item)
    return found


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
