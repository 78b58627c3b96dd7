"""Shared pytest setup. Area-specific fixtures live in tests/support_<area>.py, imported by the tests that use them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
if os.environ.get("RERENDER_SHARED"):
    SHARED = Path(os.environ["RERENDER_SHARED"])


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared next to the checkout (real photos and weights for tests); skip with a reason when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED} (set RERENDER_SHARED)")
    return SHARED
