"""Unit tests of trio_cancel.deadlines: the headers the hooks write always parse."""

from __future__ import annotations

import math

import pytest

from trio_cancel.deadlines import (
    format_connect_timeout,
    format_grpc_timeout,
    parse_deadline_headers,
)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0"),
        (0.0009, "0"),
        (0.479, "479"),
        (3.0, "3000"),
        (9_999_999.999, "9999999999"),
        (1e9, "9999999999"),
        (1e300, "9999999999"),
        (math.inf, "9999999999"),
    ],
)
def test_format_connect_timeout_rounds_down_and_keeps_to_ten_digits(
    seconds: float, expected: str
) -> None:
    value = format_connect_timeout(seconds)
    assert value == expected
    budget = parse_deadline_headers([(b"connect-timeout-ms", value.encode())])
    assert budget is not None
    assert budget <= seconds


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0n"),
        (1e-9, "1n"),
        (0.099999999, "99999999n"),
        (0.1, "100000u"),
        (1.5, "1500000u"),
        (100.0, "100000m"),
        (100_000.0, "100000S"),
        (1e9, "16666666M"),
        (1e12, "99999999H"),
        (math.inf, "99999999H"),
    ],
)
def test_format_grpc_timeout_uses_the_smallest_unit_that_fits(
    seconds: float, expected: str
) -> None:
    value = format_grpc_timeout(seconds)
    assert value == expected
    digits = value[:-1]
    assert 1 <= len(digits) <= 8
    budget = parse_deadline_headers([(b"grpc-timeout", value.encode())])
    assert budget is not None
    assert budget <= seconds * (1 + 1e-12)


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, -math.inf])
def test_format_rejects_a_budget_that_is_not_one(bad: float) -> None:
    with pytest.raises(ValueError, match="budget"):
        format_connect_timeout(bad)
    with pytest.raises(ValueError, match="budget"):
        format_grpc_timeout(bad)
