"""Shared fixtures. Must not import ripcord_pb: tests/provider shares this conftest's directory
tree but runs the official provider, whose protos clash with ours in one process."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared/` (reference data: spec, conformance suites, schemas)."""
    if not SHARED.is_dir():
        pytest.fail(f"reference data not found at {SHARED}: the repo must sit beside shared/")
    return SHARED
