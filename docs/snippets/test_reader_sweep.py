"""The testing page's pytest snippet: run by tests/test_docs.py with pytest, as a user runs it."""

from __future__ import annotations

from cancel_safety_sweep import Scenario


async def test_reader_is_cancel_safe(cancel_sweep) -> None:
    scenario = Scenario(naive=False)
    result = await cancel_sweep(scenario.read_one, check=scenario.check)
    assert result.points == 2


# fails if the test leaves tasks running, endpoints open, callbacks pending
async def test_no_leaks(trio_cancel_leaks) -> None: ...
