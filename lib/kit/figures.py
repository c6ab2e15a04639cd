"""The paper's figures drawn from tables, so notebook 10 can redraw every one of them from results/ alone.

Each figure has two halves: ``*_rows`` turns what a notebook computed (tensors) into plain table rows that
:mod:`lib.kit.results` writes as CSV, and ``fig*`` draws a figure from such rows (as read back from the CSV: every
value may arrive as a string). Notebook 01 draws Figs. 1, 2 and 5 through the same functions it feeds,
so the figure in its folder and the one notebook 10 redraws are the same drawing of the same numbers.

Figures (lib/reference/paper_setup.md, "Figures to regenerate"): 1 Gaussian paths, 2 a local reassignment,
3 FID vs NFE, 4 curvature per step, 5 the polygon counterexample, 6 convergence of the assignment, 7 sample grids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import Tensor
from torchvision.utils import make_grid

from lib.kit import plots
from lib.kit.notebooks import grid_notebooks
from lib.kit.results import read_table
from lib.kit.tables import is_comparable, run_folder
from lib.paper import paper_results

Rows = Sequence[Mapping[str, Any]]


# ---------------------------------------------------------------------------------------------------------
# Tensors <-> rows
# ---------------------------------------------------------------------------------------------------------
def trajectory_rows(label: str, trajectory: Tensor, times: Tensor, max_paths: int = 64) -> list[dict[str, Any]]:
    """2-D paths trajectory (T, B, 2) at times (T,) -> rows {paths, path, step, t, x, y} for the first paths."""
    traj = trajectory[:, :max_paths].detach().cpu()
    return [
        {
            "paths": label,
            "path": b,
            "step": k,
            "t": float(times[k]),
            "x": float(traj[k, b, 0]),
            "y": float(traj[k, b, 1]),
        }
        for b in range(traj.shape[1])
        for k in range(traj.shape[0])
    ]


def rows_to_trajectory(rows: Rows) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`trajectory_rows` for one label -> (trajectory (T, B, 2), times (T,))."""
    steps = 1 + max(int(r["step"]) for r in rows)
    paths = 1 + max(int(r["path"]) for r in rows)
    trajectory, times = torch.zeros(steps, paths, 2), torch.zeros(steps)
    for r in rows:
        k, b = int(r["step"]), int(r["path"])
        trajectory[k, b] = torch.tensor([float(r["x"]), float(r["y"])])
        times[k] = float(r["t"])
    return trajectory, times


def pairing_rows(
    panel: str, x: Tensor, z: Tensor, pairing: Tensor, highlight: Tensor | None = None
) -> list[dict[str, Any]]:
    """Example i of x (N, 2) paired with noise z[pairing[i]] (z (M, 2)) -> rows {panel, example, x, y,
    noise_x, noise_y, highlight}: one straight conditional path each."""
    marked = set(highlight.tolist()) if highlight is not None else set()
    return [
        {
            "panel": panel,
            "example": i,
            "x": float(x[i, 0]),
            "y": float(x[i, 1]),
            "noise_x": float(z[pairing[i], 0]),
            "noise_y": float(z[pairing[i], 1]),
            "highlight": i in marked,
        }
        for i in range(len(x))
    ]


def _truthy(value: object) -> bool:
    """A boolean as written to CSV ("True"/"False") or as a Python bool."""
    return value is True or str(value) == "True"


def rows_to_pairing(rows: Rows) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`pairing_rows` for one panel -> (x (N, 2), paired noise (N, 2), highlighted examples)."""
    rows = sorted(rows, key=lambda r: int(r["example"]))
    x = torch.tensor([[float(r["x"]), float(r["y"])] for r in rows])
    z = torch.tensor([[float(r["noise_x"]), float(r["noise_y"])] for r in rows])
    highlight = torch.tensor([int(r["example"]) for r in rows if _truthy(r["highlight"])], dtype=torch.int64)
    return x, z, highlight


def _select(rows: Rows, key: str, value: object) -> list[Mapping[str, Any]]:
    return [r for r in rows if str(r[key]) == str(value)]


def _floats(rows: Rows, *keys: str) -> list[dict[str, Any]]:
    """Rows with ``keys`` converted to float (CSV values arrive as strings)."""
    return [{**r, **{k: float(r[k]) for k in keys}} for r in rows]


# ---------------------------------------------------------------------------------------------------------
# The figures
# ---------------------------------------------------------------------------------------------------------
def fig1_gaussian_paths(rows: Rows) -> Figure:
    """Fig. 1: per path set (rows of :func:`trajectory_rows`), x_1 against t on top and the 2-D paths below."""
    labels = list(dict.fromkeys(r["paths"] for r in rows))
    fig, axes = plots.figure(len(labels), 2)
    for col, label in enumerate(labels):
        trajectory, times = rows_to_trajectory(_select(rows, "paths", label))
        plots.draw_spacetime(axes[0][col], trajectory, times, label)
        plots.draw_paths(axes[1][col], trajectory)
    return fig


def fig2_local_reassignment(rows: Rows) -> Figure:
    """Fig. 2: one panel per pairing (rows of :func:`pairing_rows`), the re-paired minibatch in orange."""
    panels = list(dict.fromkeys(r["panel"] for r in rows))
    fig, axes = plots.figure(len(panels), size=3.6)
    for ax, panel in zip(axes[0], panels):
        x, z, highlight = rows_to_pairing(_select(rows, "panel", panel))
        plots.draw_pairing(ax, x, z, torch.arange(len(x)), highlight, panel)
    return fig


def _fid_lines(ax: Any, rows: Rows, style: dict[str, Any], suffix: str, colors: dict[str, str]) -> None:
    """FID against NFE, one line per method, the colour fixed per method across panels."""
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted(
            _floats([r for r in _select(rows, "method", method) if r["nfe"]], "nfe", "fid"), key=lambda r: r["nfe"]
        )
        if mine:
            (line,) = ax.plot(
                [r["nfe"] for r in mine],
                [r["fid"] for r in mine],
                label=f"{method}{suffix}",
                color=colors.get(method),
                **style,
            )
            colors.setdefault(method, line.get_color())


def fig3_fid_vs_nfe(ours: Rows, paper: Rows, comparable: bool, title: str = "") -> Figure:
    """Fig. 3: FID against true NFE per method. ``comparable`` (paper profile, Inception features): ours solid
    and the paper's dashed on one axis; otherwise two panels, since the values share no scale."""
    fig, axes = plots.figure(1 if comparable else 2, size=4.2)
    colors: dict[str, str] = {}
    _fid_lines(axes[0][0], ours, {"marker": "o"}, " (kit)", colors)
    _fid_lines(
        axes[0][-1], [r for r in paper if r["method"] in colors], {"ls": "--", "marker": "x"}, " (paper)", colors
    )
    for ax, label in zip(axes[0], ["kit and paper" if comparable else "kit (not comparable with the paper)", "paper"]):
        ax.set(xscale="log", xlabel="NFE (true network calls)", ylabel="FID", title=f"{title}: {label}")
        ax.xaxis.set_minor_formatter(NullFormatter())  # log axes over a short range crowd their minor labels
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def fig4_curvature(rows: Rows, group: str = "method", title: str = "") -> Figure:
    """Fig. 4: 1 - cos of consecutive velocities per Euler step, one line per ``group`` value."""
    fig, axes = plots.figure(1, size=4.2)
    plots.draw_curves(
        axes[0][0],
        _floats(rows, "step", "curvature"),
        "step",
        "curvature",
        group,
        title or "curvature per Euler step",
        logy=True,
    )
    return fig


def fig5_polygon(pairings: Rows, sweep: Rows) -> Figure:
    """Fig. 5: the stuck and the optimal polygon pairings (rows of :func:`pairing_rows`) and the cost each
    minibatch size reaches (rows {batch_size, final_cost, global_optimum})."""
    panels = list(dict.fromkeys(r["panel"] for r in pairings))
    n = len(_select(pairings, "panel", panels[0]))
    fig, axes = plots.figure(len(panels) + 1, size=3.4)
    for ax, panel in zip(axes[0], panels):
        x, z, _ = rows_to_pairing(_select(pairings, "panel", panel))
        plots.draw_pairing(ax, x, z, torch.arange(len(x)), title=panel)
    sweep = _floats(sweep, "batch_size", "final_cost", "global_optimum")
    ax = axes[0][-1]
    ax.plot(
        [r["batch_size"] for r in sweep], [r["final_cost"] for r in sweep], marker="o", label="minibatch re-pairing"
    )
    ax.axhline(sweep[0]["global_optimum"], ls="--", color="k", label="global optimum")
    ax.set(xlabel="minibatch size m", ylabel="mean pairing cost", title=f"n = {n} examples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig6_convergence(batch_sweep: Rows, size_sweep: Rows) -> Figure:
    """Fig. 6: swaps per epoch and gap to the global optimum for several batch sizes (rows of notebook 02's
    batch_size_sweep) and dataset sizes (its dataset_size_sweep)."""
    fig, axes = plots.figure(2, 2, size=3.4)
    batch = _floats(batch_sweep, "epoch", "swaps", "gap")
    size = _floats(size_sweep, "epoch", "swaps_per_example", "gap")
    plots.draw_curves(
        axes[0][0], [r for r in batch if r["epoch"] > 0], "epoch", "swaps", "batch_size", "swaps per epoch", logy=True
    )
    plots.draw_curves(axes[0][1], batch, "epoch", "gap", "batch_size", "gap to global optimum", logy=True)
    plots.draw_curves(
        axes[1][0],
        [r for r in size if r["epoch"] > 0],
        "epoch",
        "swaps_per_example",
        "dataset_size",
        "swaps per example",
        logy=True,
    )
    plots.draw_curves(axes[1][1], size, "epoch", "gap", "dataset_size", "gap to global optimum", logy=True)
    fig.tight_layout()
    return fig


def fig7_sample_grids(grids: Mapping[str, Path]) -> Figure:
    """Fig. 7: the sample-grid images the notebooks saved (PNG files), one panel per title, four per row."""
    ncols = min(4, len(grids))
    fig, axes = plots.figure(ncols, -(-len(grids) // ncols), size=4.0)
    panels = [ax for row in axes for ax in row]
    for ax, (title, path) in zip(panels, grids.items()):
        ax.imshow(mpimg.imread(path))
        ax.set_title(title, fontsize=7)
    for ax in panels:
        ax.axis("off")
    return fig


def fid_vs_nfe_figure(fid: Rows, curvature: Rows, features: str) -> Figure:
    """Two panels: FID against true NFE per method (paper Fig. 3) and curvature per Euler step (Fig. 4)."""
    fig, axes = plots.figure(2, size=3.6)
    for method in dict.fromkeys(r["method"] for r in fid):
        mine = [r for r in fid if r["method"] == method]
        axes[0][0].plot([r["nfe"] for r in mine], [r["fid"] for r in mine], marker="o", label=method)
    axes[0][0].set(
        xscale="log", xlabel="NFE (true network calls)", ylabel=f"FID ({features} features)", title="FID vs NFE"
    )
    axes[0][0].legend(fontsize=6)
    plots.draw_curves(axes[0][1], curvature, "step", "curvature", "method", "curvature per Euler step", logy=True)
    fig.tight_layout()
    return fig


def sample_grids_figure(samples: Mapping[str, Tensor], solver: str) -> Figure:
    """One panel per model of its samples (N, C, H, W) in [-1, 1] (lib.experiments.pipeline.grid_samples)."""
    fig, axes = plots.figure(len(samples), size=3.0)
    for ax, (name, images) in zip(axes[0], samples.items()):
        grid = make_grid(images, nrow=max(1, int(len(images) ** 0.5)), normalize=True, value_range=(-1, 1))
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_title(f"{name}\n{solver}", fontsize=7)
        ax.axis("off")
    return fig


# ---------------------------------------------------------------------------------------------------------
# All of them from a results folder (notebook 10)
# ---------------------------------------------------------------------------------------------------------
GRID_FILES = ("sample_grids.png", "samples_*.png")  # one grid of all rows (05-08), or one per release (11)


def sample_grid_files(root: Path) -> dict[str, Path]:
    """{panel title: PNG} of every sample grid the image notebooks saved, from each notebook's preferred run."""
    grids: dict[str, Path] = {}
    for notebook in grid_notebooks():
        found = run_folder(root, notebook)
        if found is None:
            continue
        for path in sorted(p for pattern in GRID_FILES for p in found[1].glob(pattern)):
            grids[
                f"{notebook} {path.stem.removeprefix('samples_').removeprefix('sample_grids')} ({found[0]})".replace(
                    "  ", " "
                )
            ] = path
    return grids


def _csv(root: Path, notebook: str, *names: str) -> tuple[str, list[list[dict[str, str]]]] | None:
    """(profile, rows of each CSV) from the notebook's preferred run, or None when a file is missing."""
    found = run_folder(root, notebook)
    if found is None or not all((found[1] / name).is_file() for name in names):
        return None
    return found[0], [read_table(found[1] / name) for name in names]


def redraw_paper_figures(root: Path) -> tuple[dict[str, tuple[Figure, str]], dict[str, str]]:
    """Every figure of paper_setup.md that results/ has the numbers for -> ({name: (figure, source)},
    {name: what is missing}). The source names the notebook and profile the numbers came from."""
    drawn: dict[str, tuple[Figure, str]] = {}
    missing: dict[str, str] = {}

    def add(name: str, notebook: str, found: object, draw: Any) -> None:
        if found is None:
            missing[name] = f"run notebook {notebook} first"
        else:
            profile, tables = found  # type: ignore[misc]
            drawn[name] = (draw(*tables), f"{notebook}, {profile} profile")

    add(
        "fig1_gaussian_paths", "01_toy_couplings", _csv(root, "01_toy_couplings", "fig1_paths.csv"), fig1_gaussian_paths
    )
    add(
        "fig2_local_reassignment",
        "01_toy_couplings",
        _csv(root, "01_toy_couplings", "fig2_pairing.csv"),
        fig2_local_reassignment,
    )
    cifar_paper = [r for r in paper_results() if r["dataset"] == "cifar10" and r["table"] in ("1", "5")]
    fid = _csv(root, "05_cifar10", "fid_vs_paper.csv")
    comparable = fid is not None and all(is_comparable({**r, "profile": fid[0]}) for r in fid[1][0])
    add("fig3_fid_vs_nfe", "05_cifar10", fid, lambda ours: fig3_fid_vs_nfe(ours, cifar_paper, comparable, "CIFAR-10"))
    add("fig4_curvature", "05_cifar10", _csv(root, "05_cifar10", "curvature_per_step.csv"), fig4_curvature)
    add(
        "fig5_polygon_counterexample",
        "01_toy_couplings",
        _csv(root, "01_toy_couplings", "fig5_polygon_pairings.csv", "fig5_polygon.csv"),
        fig5_polygon,
    )
    add(
        "fig6_assignment_convergence",
        "02_assignment_convergence",
        _csv(root, "02_assignment_convergence", "batch_size_sweep.csv", "dataset_size_sweep.csv"),
        fig6_convergence,
    )
    grids = sample_grid_files(root)
    if grids:
        drawn["fig7_sample_grids"] = (fig7_sample_grids(grids), ", ".join(grids))
    else:
        missing["fig7_sample_grids"] = f"run one of {', '.join(grid_notebooks())} first"
    return drawn, missing
