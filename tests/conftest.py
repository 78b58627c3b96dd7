"""Shared pytest setup. Area-specific helpers live in tests/support_<area>.py; the fixture modules among them are
registered here as plugins, so a test names a fixture as an argument and imports nothing for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["support_addon"]  # backend + addon: a real `rerender serve` and the enabled add-on (module scope)

SHARED = Path(__file__).resolve().parents[2] / "shared"
if os.environ.get("RERENDER_SHARED"):
    SHARED = Path(os.environ["RERENDER_SHARED"])


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared next to the checkout (real photos and weights for tests); skip with a reason when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED} (set RERENDER_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def espnet_dir(shared_dir: Path) -> Path:
    """The real ESPNet Cityscapes weights in ../shared/models/espnet; skip with a reason when absent."""
    d = shared_dir / "models" / "espnet"
    if not (d / "espnet_p2_q8_cityscapes.pth").is_file():
        pytest.skip(f"ESPNet weights not found in {d} (they come from github.com/sacmehta/ESPNet)")
    return d
