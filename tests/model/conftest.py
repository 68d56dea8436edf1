"""Fixtures for the model-library tests; shared helpers live in ``tests/model/helpers.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# ``tests.model.helpers`` and the oracle ``tests.reference.official_model`` are imported by package
# path; ``python -m pytest`` puts the repository root on sys.path, a bare ``pytest`` does not.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.model.helpers import WIDTHS


@pytest.fixture
def widths() -> dict[str, int]:
    return dict(WIDTHS)
