"""Trio internals that trio_cancel writes to or calls, for what no public API does.

Each entry: what is used; why; the Trio versions it was checked on; the public fallback; the
test that forces that fallback.

* ``GLOBAL_RUN_CONTEXT.runner.deliver_ki()``. Why: a ``KeyboardInterrupt`` raised by an
  ``on_cancel`` callback that a ``cancel_after`` timer fired (inside a system task, which may
  not raise) must reach the main task as Trio's own Ctrl+C does. Checked on Trio 0.35.
  Fallback: re-raise in the system task (Trio then raises ``TrioInternalError`` with it as the
  cause). Test: ``tests/test_token.py::test_cancel_after_base_exception_fallback``.
* ``runner.main_task``, ``Task._abort_func``, ``Task._attempt_abort()``. Why: the same for any
  other ``BaseException`` (``SystemExit``): thrown into the main task at its next blocking
  wait, the way Trio delivers a pending ``KeyboardInterrupt``. Checked on Trio 0.35.
  Fallback and test: as above.

Each name is looked up once at import; if one is missing, ``HAVE_MAIN_TASK_INJECTION`` is
False and the fallback is used.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

_log = logging.getLogger("trio_cancel")

try:
    from trio._core._run import GLOBAL_RUN_CONTEXT as _RUN_CONTEXT, Runner as _Runner, Task as _Task
except ImportError:  # pragma: no cover - a future Trio
    HAVE_MAIN_TASK_INJECTION = False
else:
    HAVE_MAIN_TASK_INJECTION = all(
        callable(getattr(cls, name, None))
        for cls, name in ((_Runner, "deliver_ki"), (_Task, "_attempt_abort"))
    )


class _Injector(trio.abc.Instrument):
    """Throws one exception into the main task at the first moment it is blocked in an
    abortable wait (as Trio delivers a pending ``KeyboardInterrupt``)."""

    def __init__(self, main: Any, exc: BaseException) -> None:  # noqa: ANN401 - Trio's Task
        self.main = main
        self.exc: BaseException | None = exc

    def attempt(self) -> None:
        main, exc = self.main, self.exc
        if exc is None or main._abort_func is None:
            return
        self.exc = None

        def raise_it() -> None:
            raise exc

        trio.lowlevel.remove_instrument(self)
        main._attempt_abort(raise_it)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.main:
            self.attempt()

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if task is self.main and self.exc is not None:
            exc, self.exc = self.exc, None
            trio.lowlevel.remove_instrument(self)
            _log.error(
                "the main task ended before %r (raised by an on_cancel callback fired by "
                "cancel_after) could be delivered to it",
                exc,
                exc_info=(type(exc), exc, exc.__traceback__),
            )


def raise_in_main_task(exc: BaseException) -> bool:
    """From a system task: make ``exc`` propagate out of :func:`trio.run` as itself.

    Returns False if this Trio lacks the internals (the caller then re-raises).
    """
    if not HAVE_MAIN_TASK_INJECTION:
        return False
    runner = _RUN_CONTEXT.runner
    if isinstance(exc, KeyboardInterrupt):
        runner.deliver_ki()
        return True
    injector = _Injector(runner.main_task, exc)
    trio.lowlevel.add_instrument(injector)
    injector.attempt()
    return True
