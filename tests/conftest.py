from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Generator

pytest_plugins = ["pytester"]


def _skip_message(exc: BaseException | None) -> str | None:
    """The message of the one ``pytest.skip()`` inside ``exc``'s exception group, if any."""
    if not isinstance(exc, BaseExceptionGroup):
        return None
    leaves: list[BaseException] = []
    queue: list[BaseException] = [exc]
    while queue:
        current = queue.pop()
        if isinstance(current, BaseExceptionGroup):
            queue.extend(current.exceptions)
        else:
            leaves.append(current)
    if len(leaves) == 1 and isinstance(leaves[0], pytest.skip.Exception) and leaves[0].msg:
        return leaves[0].msg
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Keep the reason of a skip raised inside an async test or fixture.

    pytest-trio unwraps a ``pytest.skip()`` from the run's exception group by calling
    ``pytest.skip()`` again without its message, so the summary said only "Skipped" (no word on
    why, or on how to run the test). The original skip is that call's ``__context__``.
    """
    report: pytest.TestReport = (yield).get_result()
    excinfo = call.excinfo
    if not report.skipped or excinfo is None or not isinstance(report.longrepr, tuple):
        return
    message = _skip_message(excinfo.value.__context__)
    if message is not None:
        _, lineno, _ = item.reportinfo()
        report.longrepr = (str(item.path), (lineno or 0) + 1, f"Skipped: {message}")
