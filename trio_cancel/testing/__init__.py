"""Helpers for testing code that uses trio_cancel (cancellation sweeps come in a later release)."""

from __future__ import annotations

__all__: list[str] = []
