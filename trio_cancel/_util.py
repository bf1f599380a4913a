"""Package plumbing: factory-only classes and public names' ``__module__``."""

from __future__ import annotations

from abc import ABCMeta
from typing import Any, NoReturn, TypeVar

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
