"""Every public name is exported, final, documented, and says how it behaves on cancellation."""

from __future__ import annotations

import inspect
import typing

import pytest

import trio_cancel as tc

TYPE_ALIASES = {"Outcome"}
PUBLIC = sorted(set(tc.__all__) - TYPE_ALIASES)


def test_all_names_exist_and_live_in_trio_cancel() -> None:
    for name in PUBLIC:
        obj = getattr(tc, name)
        assert obj.__module__ == "trio_cancel", name


def test_outcome_alias_is_the_union_of_the_three_outcomes() -> None:
    parts = typing.get_args(tc.Outcome[int])  # type: ignore[misc]
    assert parts == (tc.Completed[int], tc.Failed, tc.Aborted)


def test_no_private_module_leaks_a_public_name() -> None:
    exported = {
        name
        for name in dir(tc)
        if not name.startswith(("_", "@"))  # @: pytest's assertion rewriting
        and not inspect.ismodule(getattr(tc, name))  # testing, and sqlite once imported
    }
    exported -= {"annotations"}
    assert exported == set(PUBLIC) | TYPE_ALIASES


@pytest.mark.parametrize("name", PUBLIC)
def test_public_classes_are_final(name: str) -> None:
    obj = getattr(tc, name)
    if name == "SelectError":  # its ExceptionGroup flavour subclasses it (see its docstring)
        return
    if inspect.isclass(obj) and not getattr(obj, "_is_protocol", False):  # protocols: implement
        assert getattr(obj, "__final__", False), f"{name} is not @final"


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_documented(name: str) -> None:
    obj = getattr(tc, name)
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if attr.startswith("_"):
                continue
            if callable(member) or isinstance(member, (property, staticmethod)):
                assert inspect.getdoc(getattr(obj, attr)), f"{name}.{attr} has no docstring"


def _public_async_members() -> list[tuple[str, object]]:
    found = []
    for name in PUBLIC:
        obj = getattr(tc, name)
        members = vars(obj).items() if inspect.isclass(obj) else [(name, obj)]
        for attr, member in members:
            if attr.startswith("_"):
                continue
            if inspect.iscoroutinefunction(member):
                found.append((f"{name}.{attr}", member))
    return found


@pytest.mark.parametrize(("qualname", "fn"), _public_async_members())
def test_async_api_documents_cancellation(qualname: str, fn: object) -> None:
    doc = inspect.getdoc(fn) or ""
    assert "Cancellation:" in doc, f"{qualname} has no 'Cancellation:' section"


def test_scope_factories_document_cancellation() -> None:
    for method in (tc.CancellationToken.cancel_scope, tc.CancellationToken.fail_scope):
        assert "Cancellation:" in (inspect.getdoc(method) or "")


def test_sync_methods_say_they_never_block() -> None:
    for method in (
        tc.CancellationToken.cancel,
        tc.CancellationToken.child_token,
        tc.CancellationToken.on_cancel,
        tc.CancellationToken.cancel_after,
        tc.Registration.unregister,
        tc.DropGuard.disarm,
    ):
        assert "never blocks" in (inspect.getdoc(method) or ""), method.__qualname__


def test_testing_namespace_is_final_documented_and_located() -> None:
    import trio_cancel.testing as tct

    for name in tct.__all__:
        obj = getattr(tct, name)
        assert obj.__module__ == "trio_cancel.testing", name
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            assert getattr(obj, "__final__", False), name
    assert "Cancellation:" in (inspect.getdoc(tct.cancel_at_each_checkpoint) or "")
