"""Notebook 10's machinery: paper rows joined with the kit's, honest labels, and figures redrawn from tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from lib.kit import figures


def write_run(root: Path, profile: str, notebook: str, name: str, rows: list[dict[str, object]]) -> None:
    """A results folder as lib.results writes it: a table and its run.json."""
    folder = root / profile / notebook
    folder.mkdir(parents=True)
    with open(folder / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "run.json").write_text(json.dumps({"git_commit": "abc", "wall_time_s": 1.0}))


def test_trajectory_and_pairing_rows_round_trip() -> None:
    trajectory, times = torch.randn(5, 3, 2), torch.linspace(0, 1, 5)
    back, back_times = figures.rows_to_trajectory(figures.trajectory_rows("a", trajectory, times))
    assert torch.allclose(back, trajectory) and torch.allclose(back_times, times)
    x, z, pairing = torch.randn(6, 2), torch.randn(6, 2), torch.tensor([2, 0, 1, 5, 4, 3])
    rows = [{k: str(v) for k, v in r.items()} for r in figures.pairing_rows("p", x, z, pairing, torch.tensor([1, 3]))]
    bx, bz, highlight = figures.rows_to_pairing(rows)  # as read back from CSV: strings
    assert torch.allclose(bx, x) and torch.allclose(bz, z[pairing]) and highlight.tolist() == [1, 3]


def test_redraw_names_what_is_missing(tmp_path: Path) -> None:
    drawn, missing = figures.redraw_paper_figures(tmp_path)
    assert drawn == {} and set(missing) == {
        "fig1_gaussian_paths",
        "fig2_local_reassignment",
        "fig3_fid_vs_nfe",
        "fig4_curvature",
        "fig5_polygon_counterexample",
        "fig6_assignment_convergence",
        "fig7_sample_grids",
    }


def test_sample_grids_of_every_image_notebook_are_collected(tmp_path: Path) -> None:
    """Fig. 7 takes 05-08's one grid each and 11's grid per release, from the preferred profile."""
    from PIL import Image

    for notebook, names in [
        ("05_cifar10", ["sample_grids"]),
        ("11_released_checkpoints", ["samples_cifar10", "samples_ffhq256"]),
    ]:
        write_run(tmp_path, "quick", notebook, "unused.csv", [{"a": 1}])
        for name in names:
            Image.new("RGB", (8, 8)).save(tmp_path / "quick" / notebook / f"{name}.png")
    grids = figures.sample_grid_files(tmp_path)
    assert list(grids) == [
        "05_cifar10 (quick)",
        "11_released_checkpoints cifar10 (quick)",
        "11_released_checkpoints ffhq256 (quick)",
    ]
    drawn, missing = figures.redraw_paper_figures(tmp_path)
    assert "fig7_sample_grids" in drawn and "fig7_sample_grids" not in missing
