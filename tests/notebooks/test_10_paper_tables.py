"""papermill smoke runs: each notebook with tiny parameters, then assertions on the metrics it wrote.

nbval (``pytest notebooks --nbval-lax``) separately runs the committed quick defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib import REPO_ROOT
from lib.kit.results import read_table
from lib.paper import paper_results

pytestmark = pytest.mark.slow


def test_10_paper_tables_rebuilds_tables_and_figures_from_results(tmp_path: Path, run_tiny) -> None:
    """Run on a copy of the committed results: every paper number appears, quick rows are labelled and never
    compared, and the figures whose numbers exist are redrawn."""
    import shutil

    shutil.copytree(REPO_ROOT / "results", tmp_path, dirs_exist_ok=True)
    folder = run_tiny("10_paper_tables", tmp_path)
    rows = read_table(tmp_path / "tables.csv")
    assert read_table(folder / "tables.csv") == rows
    assert sum(r["paper_fid"] != "" for r in rows) >= len(paper_results())
    assert all(r["difference"] == "" for r in rows if r["profile"] == "quick")
    assert "## Table 3: FFHQ-256 (latent)" in (tmp_path / "tables.md").read_text()
    drawn = json.loads((folder / "figures.json").read_text())["drawn"]
    assert {"fig1_gaussian_paths", "fig3_fid_vs_nfe", "fig6_assignment_convergence"} <= set(drawn)
    assert all((folder / f"{name}.png").is_file() for name in drawn)
