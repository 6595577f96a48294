from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py, importable as `reference`

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_inputs"


@pytest.fixture
def samples() -> Path:
    return SAMPLES
