"""Notebook 10's machinery: paper rows joined with the kit's, honest labels, and figures redrawn from tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lib.kit import figures, results


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


def save_grids(root: Path, notebook: str, calls: list[tuple[str, dict[str, torch.Tensor], str]]) -> None:
    """A finished run of ``notebook`` that saved sample grids: per call (dataset, {model: images}, figure name)."""
    run = results.Run(notebook, "quick", {}, 0, root / "quick" / notebook)
    run.staging.mkdir(parents=True)
    for dataset, samples, name in calls:
        figures.save_sample_grids(run, samples, "midpoint-6", dataset, name)
    run.finish()


def test_sample_grids_of_every_image_notebook_are_collected_as_equal_panels(tmp_path: Path) -> None:
    """Fig. 7 takes every plain grid 05-08 and 11 saved (11: one call per release), titled from their index, and
    draws them as panels of one size whatever the images' sizes."""
    images = lambda n, size: torch.rand(n, 3, size, size) * 2 - 1  # noqa: E731
    save_grids(tmp_path, "05_cifar10", [("cifar10", {"I-CFM": images(16, 32), "LOOM-CFM": images(16, 32)}, "grids")])
    save_grids(
        tmp_path,
        "11_released_checkpoints",
        [
            ("cifar10", {"LOOM-CFM (release)": images(9, 32)}, "samples_cifar10"),
            ("ffhq256", {"LOOM-CFM (release)": images(4, 64)}, "samples_ffhq256"),
        ],
    )
    folder = tmp_path / "quick" / "11_released_checkpoints"
    assert {"grid_cifar10_loom-cfm-release.png", "grid_ffhq256_loom-cfm-release.png", "samples_ffhq256.png"} <= {
        p.name for p in folder.iterdir()
    }
    grids = figures.sample_grid_files(tmp_path)
    assert list(grids) == [
        "CIFAR-10: I-CFM\nmidpoint-6, NFE 12 (05, quick)",
        "CIFAR-10: LOOM-CFM\nmidpoint-6, NFE 12 (05, quick)",
        "CIFAR-10: LOOM-CFM (release)\nmidpoint-6, NFE 12 (11, quick)",
        "FFHQ-256 (latent): LOOM-CFM (release)\nmidpoint-6, NFE 12 (11, quick)",
    ]
    drawn, missing = figures.redraw_paper_figures(tmp_path)
    assert "fig7_sample_grids" in drawn and "fig7_sample_grids" not in missing
    fig = drawn["fig7_sample_grids"][0]
    fig.canvas.draw()
    sizes = {(round(ax.bbox.width), round(ax.bbox.height)) for ax in fig.axes if ax.images}
    assert len([ax for ax in fig.axes if ax.images]) == 4 and len(sizes) == 1, f"panels of several sizes: {sizes}"


def test_fid_vs_nfe_refuses_rows_of_several_protocols() -> None:
    """FIDs of different protocols share no scale, so one axis never holds two."""
    rows = [
        {"method": "a", "nfe": 4, "fid": 1.0, "fid_protocol": "paper-torcheval"},
        {"method": "a", "nfe": 8, "fid": 2.0, "fid_protocol": "clean-fid-clean"},
    ]
    with pytest.raises(ValueError, match="several protocols"):
        figures.fid_vs_nfe_figure(rows, [], "random")


def test_training_figures_draw_from_rows_read_back_from_csv() -> None:
    """The swaps/cost-during-training and FID-along-training figures take CSV rows (strings)."""
    history = [
        {"method": m, "step": str(s), "swaps": str(10 - s), "cost_before": str(2.0 - s / 10), "cost_after": "1.0"}
        for m in ("I-CFM", "LOOM-CFM")
        for s in (1, 2, 3)
    ]
    fig = figures.training_pairing_figure(history)
    assert [ax.get_title() for ax in fig.axes][0] == "swaps per step" and len(fig.axes[0].lines) == 2
    steps = [{"method": "LOOM-CFM", "step": str(s), "solver": "midpoint-2", "fid": str(9.0 / s)} for s in (10, 20)]
    assert "midpoint-2" in figures.fid_vs_step_figure(steps, "random").axes[0].get_title()
