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


def test_10_closing_text_counts_paper_numbers_profiles_and_compared_numbers(notebook_definitions) -> None:
    """Notebook 10's closing text, on rows as lib.kit.tables.comparison writes them (a kit-only row has no status)."""
    closing_text = notebook_definitions("10_paper_tables")["closing_text"]
    rows = [
        {"paper_fid": "3.1", "status": "not run yet", "profile": "", "difference": ""},
        {
            "paper_fid": "3.2",
            "status": "quick profile: pipeline check, not comparable",
            "profile": "quick",
            "difference": "",
        },
        {"paper_fid": "2.0", "status": "paper profile", "profile": "paper", "difference": "-0.5"},
        {"paper_fid": "", "profile": "quick"},
    ]
    text = closing_text(rows, ["fig1"], {"fig3": "no results"})
    assert "4 table rows, 3 of them carrying a paper number; 1 paper numbers have no kit result yet." in text
    assert "Kit results by profile: paper 1, quick 2." in text
    assert "1 kit numbers are compared with the paper's" in text and "mean |kit - paper| 0.5." in text
    assert "Figures redrawn: fig1; missing: fig3 (no results)." in text
