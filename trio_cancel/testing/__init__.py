"""Helpers for testing code that uses trio_cancel, and code that must be cancel-safe."""

from __future__ import annotations

from .._util import fixup_module_metadata as _fixup_module_metadata
from ._sweep import (
    CancelSafetyError as CancelSafetyError,
    SweepResult as SweepResult,
    cancel_at_each_checkpoint as cancel_at_each_checkpoint,
)

__all__ = ["CancelSafetyError", "SweepResult", "cancel_at_each_checkpoint"]

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
