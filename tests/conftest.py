"""Fixtures shared by the tests of every part of the kit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lib.paper import RELEASED_KEYS


@pytest.fixture(scope="session")
def released_keys() -> dict[str, Any]:
    """lib/reference/released_checkpoint_keys.json: the released checkpoints' state-dict layout (facts, shipped)."""
    return json.loads(RELEASED_KEYS.read_text())
