"""Shared by the notebook tests: a papermill run with tiny parameters (checking its run.json and inline figures), or
the results of nbval's run of the committed notebook (root conftest.py: which notebooks, and the order)."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lib import REPO_ROOT
from lib.kit import reproduce
from lib.kit.notebooks import figures_not_shown
from lib.kit.results import portable, results_root


def _run_tiny(name: str, tmp_path: Path, **parameters: object) -> Path:
    """Execute notebook ``name`` with ``parameters`` into tmp_path; return its results folder. Checks run.json and
    that the executed copy shows every figure it saved (an image/png output per figure call)."""
    output = reproduce.run_notebook(name, parameters, results_dir=tmp_path)
    folder = tmp_path / reproduce.run_profile(name, parameters) / name
    assert output == folder / f"{name}.ipynb" and output.is_file()
    run = json.loads((folder / "run.json").read_text())
    # run.json stores paths relative to the folder holding the results root (here tmp_path's parent).
    assert run["parameters"]["RESULTS_DIR"] == portable(str(tmp_path), tmp_path.parent) and run["wall_time_s"] > 0
    recorded = run["parameters"]
    assert all(recorded[k] == portable(v, tmp_path.parent) for k, v in parameters.items()), "parameters not recorded"
    unshown = figures_not_shown(output)
    assert not unshown, f"{name}: every cell that draws a figure shows it inline; not shown: {unshown}"
    return folder


@pytest.fixture(scope="session")
def run_tiny() -> Callable[..., Path]:
    """``run_tiny(name, tmp_path, **parameters) -> results folder``: a papermill run with tiny parameters."""
    return _run_tiny


def _committed_run(request: pytest.FixtureRequest, name: str, tmp_path: Path) -> Path:
    """The results folder of notebook ``name`` run as committed (the quick profile): the one nbval's run of it wrote
    earlier in this session, on this worker; when nbval did not collect it (this test run alone), papermill runs
    the committed notebook into ``tmp_path``."""
    if any(Path(str(item.path)).name == f"{name}.ipynb" for item in request.session.items):
        folder = results_root() / "quick" / name
        assert (folder / "run.json").is_file(), f"nbval's run of notebooks/{name}.ipynb wrote no results: see its cells"
        return folder
    return _run_tiny(name, tmp_path)


@pytest.fixture
def committed_run(request: pytest.FixtureRequest) -> Callable[[str, Path], Path]:
    """``committed_run(name, tmp_path) -> results folder`` of the notebook run with its committed parameters."""
    return lambda name, tmp_path: _committed_run(request, name, tmp_path)


def _definitions(name: str) -> dict[str, Any]:
    """What notebook ``name`` defines at the top level of its code cells (imports, functions, classes, UPPER_CASE
    constants), executed in order in a fresh namespace; nothing else of the notebook runs. So a test can check a
    function the notebook defines (its figure, its conclusion) on inputs of its own."""
    notebook = json.loads((REPO_ROOT / "notebooks" / f"{name}.ipynb").read_text())
    kept = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    namespace: dict[str, Any] = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]))
        tree.body = [
            node
            for node in tree.body
            if isinstance(node, kept)
            or (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets))
        ]
        exec(compile(tree, f"{name}.ipynb", "exec"), namespace)
    return namespace


@pytest.fixture(scope="session")
def notebook_definitions() -> Callable[[str], dict[str, Any]]:
    """``notebook_definitions(name) -> namespace``: the imports, functions and constants notebook ``name`` defines."""
    return _definitions
