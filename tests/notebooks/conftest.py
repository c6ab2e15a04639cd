"""Shared by the papermill smoke runs: execute a notebook with tiny parameters and check its run.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lib.kit import reproduce


def _run_tiny(name: str, tmp_path: Path, **parameters: object) -> Path:
    """Execute notebook ``name`` with ``parameters`` into tmp_path; return its results folder."""
    reproduce.run_notebook(name, parameters, results_dir=tmp_path)
    folder = tmp_path / "quick" / name
    run = json.loads((folder / "run.json").read_text())
    assert run["parameters"]["RESULTS_DIR"] == str(tmp_path) and run["wall_time_s"] > 0
    assert all(run["parameters"][k] == v for k, v in parameters.items()), "injected parameters not recorded"
    return folder


@pytest.fixture
def run_tiny() -> Callable[..., Path]:
    """``run_tiny(name, tmp_path, **parameters) -> results folder``: a papermill run with tiny parameters."""
    return _run_tiny
