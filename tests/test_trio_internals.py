"""Tests of the one module that touches Trio's internals: each public fallback, forced; the
version gate of the write paths; and that no other module touches a private name of Trio."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

import trio_cancel as tc
import trio_cancel._trio_internals as internals
from trio_cancel.testing import cancel_at_each_checkpoint

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import ModuleType

PACKAGE = Path(tc.__file__).parent


def _fresh_copy(monkeypatch: pytest.MonkeyPatch, *, version: str, env: str = "") -> ModuleType:
    """Import the internals module again, as it would load under ``version`` and ``env``."""
    monkeypatch.setattr(trio, "__version__", version)
    monkeypatch.setenv("TRIO_CANCEL_FAST_PATHS", env)
    spec = importlib.util.spec_from_file_location("_internals_copy", internals.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_paths_are_enabled_on_the_checked_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    for version in ("0.31.0", "0.33.0", "0.35.0", "0.35.1+dev"):
        module = _fresh_copy(monkeypatch, version=version)
        assert module.FAST_CANCEL, version
        assert module.HAVE_MAIN_TASK_INJECTION, version
        assert module.HAVE_CANCEL_POINT_COUNTER, version


@pytest.mark.parametrize("version", ["0.30.0", "0.36.0", "1.0.0", "unknown"])
def test_write_paths_are_off_on_an_unchecked_version(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    module = _fresh_copy(monkeypatch, version=version)
    assert not module.FAST_CANCEL
    assert not module.HAVE_MAIN_TASK_INJECTION
    assert not module.HAVE_CANCEL_POINT_COUNTER  # the testing helper's write, too
    assert module.HAVE_CANCEL_STATE_READS  # reads stay: they cannot corrupt anything


@pytest.mark.parametrize("value", ["off", "0", "OFF", "false", "no"])
def test_environment_forces_the_fast_path_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    module = _fresh_copy(monkeypatch, version="0.35.0", env=value)
    assert not module.FAST_CANCEL
    assert module.HAVE_MAIN_TASK_INJECTION  # a capability, not a fast path: not affected


def test_this_run_uses_the_fast_path_unless_forced_off() -> None:
    forced_off = internals.FAST_PATHS_FORCED_OFF
    assert internals.FAST_CANCEL is (internals.VERSION_CHECKED and not forced_off)


def test_no_other_module_touches_trio_privates() -> None:
    private = re.compile(
        r"trio\._|\bCancelReason\b|\bGLOBAL_RUN_CONTEXT\b|\.(_cancel_status|_cancel_reason|"
        r"_cancel_called|_registered_deadline|_cancel|_next_send|_cancel_points|_abort_func|"
        r"_attempt_abort|deliver_ki|main_task|_r)\b"
    )
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_trio_internals.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if private.search(code) and "``" not in code:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


# ---------------------------------------------------------------- each fallback, forced


async def test_cancel_scopes_public_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(internals, "FAST_CANCEL", False)
    token = tc.CancellationToken()
    seen: list[trio.Cancelled] = []
    with token.cancel_scope() as cs, token.child_token().cancel_scope() as inner:
        token.cancel("public path")
        assert cs.cancel_called
        assert inner.cancel_called
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            seen.append(exc)
            raise
    assert cs.cancelled_caught or inner.cancelled_caught
    assert seen[0].reason == "public path"
    assert seen[0].source == "explicit"


async def test_joinset_abort_all_public_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(internals, "FAST_CANCEL", False)
    async with tc.JoinSet() as js:
        for _ in range(3):
            js.spawn(trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        await js.shutdown("enough")
        assert await js.join_all() == [tc.Aborted("enough")] * 3


def test_timer_base_exception_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the internals, the error still surfaces (as Trio's TrioInternalError)."""
    monkeypatch.setattr(internals, "HAVE_MAIN_TASK_INJECTION", False)

    async def main() -> None:
        token = tc.CancellationToken()
        token.on_cancel(lambda: sys.exit(3))
        token.cancel_after(0.01)
        await trio.sleep(1)

    with pytest.raises(trio.TrioInternalError) as info:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert isinstance(info.value.__cause__, BaseExceptionGroup | SystemExit)


async def test_task_tree_without_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(internals, "HAVE_CANCEL_STATE_READS", False)
    async with trio.open_nursery() as nursery:
        handle = tc.spawn(nursery, trio.sleep_forever, name="sleeper")
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel("done")
        tree = tc.current_task_tree(trio.lowlevel.current_task())
    assert handle.outcome == tc.Aborted("done")
    sleeper = next(node for node in tree.tasks() if node.name == "sleeper")
    assert sleeper.cancelled is None  # unknown, not a guess
    assert "nursery [cancelled]" in str(tree)  # public: cancel_called, without the reason


async def test_latency_without_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(internals, "HAVE_NEXT_SEND", False)
    latency = tc.CancellationLatency()
    token = tc.CancellationToken()
    trio.lowlevel.add_instrument(latency)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tc.CancellationToken.run_until_cancelled, token, trio.sleep_forever)
            await trio.testing.wait_all_tasks_blocked()
            token.cancel("stop")
    finally:
        trio.lowlevel.remove_instrument(latency)
    assert latency.records == []


async def test_sweep_without_internals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(internals, "HAVE_CANCEL_POINT_COUNTER", False)
    with pytest.raises(RuntimeError, match=r"Task\._cancel_points"):
        await cancel_at_each_checkpoint(trio.lowlevel.checkpoint)


async def test_sweep_on_an_unchecked_version(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _fresh_copy(monkeypatch, version="0.99.0")
    monkeypatch.setattr(internals, "HAVE_CANCEL_POINT_COUNTER", module.HAVE_CANCEL_POINT_COUNTER)
    monkeypatch.setattr(internals, "VERSION_CHECKED", module.VERSION_CHECKED)
    with pytest.raises(
        RuntimeError, match=r"checked on Trio 0\.31 to 0\.35 only, not on Trio 0\.99"
    ):
        await cancel_at_each_checkpoint(trio.lowlevel.checkpoint)


class _NoCode:
    """A callable without ``__code__``, as a Trio that implemented a function in C would have."""

    def __init__(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.fn = fn

    def __call__(self) -> Awaitable[None]:
        return self.fn()


def test_import_without_checkpoint_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        trio.lowlevel, "checkpoint_if_cancelled", _NoCode(trio.lowlevel.checkpoint_if_cancelled)
    )
    module = _fresh_copy(monkeypatch, version=trio.__version__)  # no AttributeError at import
    assert module.checkpoint_codes() is None


async def test_import_and_sweep_without_checkpoint_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        trio.lowlevel, "checkpoint_if_cancelled", _NoCode(trio.lowlevel.checkpoint_if_cancelled)
    )
    with pytest.raises(RuntimeError, match="checkpoint_if_cancelled"):
        await cancel_at_each_checkpoint(trio.lowlevel.checkpoint)
