"""Shared fixtures: the real data lives beside the checkout in ../shared/data (never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_root() -> Path:
    """Where the real CUB / ILSVRC subsets are: $LCAR_SHARED_DATA or ../shared/data."""
    env = os.environ.get("LCAR_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not (root / "CUB_200_2011").is_dir():
        pytest.skip(f"real data not found at {root}")
    return root
