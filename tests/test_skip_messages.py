"""The test suite's own conftest keeps the reason of a skip raised inside an async test."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

INI = """
[pytest]
trio_mode = true
"""


def test_a_skip_inside_an_async_test_keeps_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(
        """
        import pytest
        import trio

        async def test_skips_in_a_nursery():
            async with trio.open_nursery():
                pytest.skip("no server here: run it through .ci/with-postgres")

        async def test_skips_directly():
            pytest.skip("plain reason")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*test_a_skip_inside_an_async_test_keeps_its_reason.py:*: no server here: run it "
            "through .ci/with-postgres",
            "*plain reason",
        ]
    )
