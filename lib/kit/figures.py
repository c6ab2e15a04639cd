"""Every figure of the kit, drawn from rows, so notebook 10 can redraw the paper's figures from results/ alone.

Each paper figure has two halves: ``*_rows`` turns what a notebook computed (tensors) into plain table rows that
:mod:`lib.kit.results` writes as CSV, and ``fig*`` draws a figure from such rows (as read back from the CSV: every
value may arrive as a string). The notebooks draw through the same functions notebook 10 redraws with, so the figure
in a notebook's folder and the one notebook 10 redraws are the same drawing of the same numbers. Figures several
notebooks draw (05-08's training and FID curves) live here too; a figure only one notebook draws is drawn in that
notebook. All of them use the style of :mod:`lib.kit.plots`.

Figures (lib/reference/paper_setup.md, "Figures to regenerate"): 1 Gaussian paths, 2 a local reassignment,
3 FID vs NFE, 4 curvature per step, 5 the polygon counterexample, 6 convergence of the assignment, 7 sample grids.
Fig. 7 is composed from the plain grid images the image notebooks save with :func:`save_sample_grids`
(``grid_<dataset>_<model>.png``, listed in ``sample_grids.csv``), as equal panels.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import Tensor

from lib.kit import plots
from lib.kit.notebooks import grid_notebooks
from lib.kit.results import Run, read_table
from lib.kit.tables import is_comparable, run_folder
from lib.paper import paper_results
from lib.solvers import parse_solver

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
# The paper's figures
# ---------------------------------------------------------------------------------------------------------
def fig1_gaussian_paths(rows: Rows) -> Figure:
    """Fig. 1: per path set (rows of :func:`trajectory_rows`), x_1 against t on top and the 2-D paths below."""
    labels = list(dict.fromkeys(r["paths"] for r in rows))
    fig, axes = plots.figure(len(labels), 2, aspect=0.85)
    for col, label in enumerate(labels):
        trajectory, times = rows_to_trajectory(_select(rows, "paths", label))
        plots.draw_spacetime(axes[0][col], trajectory, times, label)
        plots.draw_paths(axes[1][col], trajectory, f"2-D paths, {len(times) - 1} Euler steps")
        if col:
            axes[0][col].sharey(axes[0][0])
            axes[0][col].set_ylabel("")
    plots.legend_below(fig, axes[1])
    return fig


def fig2_local_reassignment(rows: Rows) -> Figure:
    """Fig. 2: one panel per pairing (rows of :func:`pairing_rows`), the re-paired minibatch in orange."""
    panels = list(dict.fromkeys(r["panel"] for r in rows))
    fig, axes = plots.figure(len(panels), aspect=1.0, size=3.4)
    for ax, panel in zip(axes[0], panels):
        x, z, highlight = rows_to_pairing(_select(rows, "panel", panel))
        plots.draw_pairing(ax, x, z, torch.arange(len(x)), highlight, panel)
    plots.legend_below(fig, ncol=2)
    return fig


def _family(solver: object) -> str:
    """A solver's family: "midpoint-4" -> "midpoint", "dopri5" -> "dopri5"."""
    return str(solver).split("-")[0]


def _draw_fid(ax: Axes, rows: Rows, linestyle: str = "-") -> list[float]:
    """FID against NFE, one line per (method, fixed-grid solver family) in the method's look; adaptive (dopri5)
    results as open markers at the NFE they really spent -> the NFE values drawn."""
    drawn: list[float] = []
    usable = _floats([r for r in rows if str(r.get("nfe", "")) != "" and str(r.get("fid", "")) != ""], "nfe", "fid")
    for method in dict.fromkeys(r["method"] for r in usable):
        style = plots.look(method)
        ax.plot([], [], color=style.color, marker=style.marker, label=plots.method_label(method))  # legend entry
        mine = sorted(_select(usable, "method", method), key=lambda r: r["nfe"])
        for family in dict.fromkeys(_family(r["solver"]) for r in mine):
            points = [r for r in mine if _family(r["solver"]) == family]
            adaptive = family == "dopri5"
            ax.plot(
                [r["nfe"] for r in points],
                [r["fid"] for r in points],
                color=style.color,
                marker=style.marker,
                ms=5 if adaptive else 4,
                ls="none" if adaptive else (linestyle if family != "euler" else ":"),
                mfc="white" if adaptive else style.color,
            )
            drawn += [r["nfe"] for r in points]
    return drawn


def _fid_key(families: set[str], paper: bool = False) -> dict[str, Line2D]:
    """Legend entries that explain the line styles of :func:`_draw_fid`."""
    key: dict[str, Line2D] = {}
    if "midpoint" in families:
        key["midpoint (fixed grid)"] = plots.key_handle(ls="-")
    if "euler" in families:
        key["Euler (fixed grid)"] = plots.key_handle(ls=":")
    if "dopri5" in families:
        key["dopri5 (adaptive), open marker"] = plots.key_handle(ls="none", marker="o", mfc="white")
    if paper:
        key["the paper's numbers (dashed)"] = plots.key_handle(ls="--")
    return key


def fig3_fid_vs_nfe(ours: Rows, paper: Rows, comparable: bool, title: str = "") -> Figure:
    """Fig. 3: FID against true NFE per method. ``comparable`` (paper profile, the paper's FID protocol, Inception
    features): ours solid and the paper's dashed on one axis; otherwise two panels, since the values share no
    scale."""
    fig, axes = plots.figure(1 if comparable else 2, size=3.8)
    methods = set(r["method"] for r in ours)
    theirs = [r for r in paper if r["method"] in methods]
    nfe = {0: _draw_fid(axes[0][0], ours)}
    nfe.setdefault(len(axes[0]) - 1, []).extend(_draw_fid(axes[0][-1], theirs, "--"))
    panels = ["the kit beside the paper"] if comparable else ["the kit (not comparable with the paper)", "the paper"]
    for i, (ax, label) in enumerate(zip(axes[0], panels)):
        ax.set(xlabel=plots.axis_label("nfe"), ylabel="FID", title=f"{title}: {label}" if title else label)
        plots.log_axis(ax, "x", nfe[i])
    families = {_family(r["solver"]) for r in [*ours, *theirs]}
    plots.legend_below(fig, extra=_fid_key(families, paper=True))
    return fig


def fig4_curvature(rows: Rows, group: str = "method", title: str = "") -> Figure:
    """Fig. 4: 1 - cos of consecutive velocities per Euler step, one line per ``group`` value."""
    fig, axes = plots.figure(1, size=4.4, aspect=0.7)
    ax = axes[0][0]
    plots.draw_curves(
        ax,
        _floats(rows, "step", "curvature"),
        "step",
        "curvature",
        group,
        title or "curvature per Euler step",
        logy=True,
        legend=False,
    )
    ax.set_xlabel("Euler step k")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    plots.legend_below(fig, ncol=2)
    return fig


def fig5_polygon(pairings: Rows, sweep: Rows) -> Figure:
    """Fig. 5: the stuck and the optimal polygon pairings (rows of :func:`pairing_rows`) and the cost each
    minibatch size reaches (rows {batch_size, final_cost, global_optimum})."""
    panels = list(dict.fromkeys(r["panel"] for r in pairings))
    n = len(_select(pairings, "panel", panels[0]))
    fig, axes = plots.figure(len(panels) + 1, size=3.0, aspect=1.0)
    for ax, panel in zip(axes[0], panels):
        x, z, _ = rows_to_pairing(_select(pairings, "panel", panel))
        plots.draw_pairing(ax, x, z, torch.arange(len(x)), title=panel)
    sweep = _floats(sweep, "batch_size", "final_cost", "global_optimum")
    ax = axes[0][-1]
    style = plots.look("LOOM-CFM")
    sizes = [r["batch_size"] for r in sweep]
    ax.plot(
        sizes,
        [r["final_cost"] for r in sweep],
        marker=style.marker,
        color=style.color,
        label="cost minibatch re-pairing reaches",
    )
    ax.axhline(sweep[0]["global_optimum"], ls="--", color=plots.REFERENCE_COLOR, label="global optimum (exact)")
    ax.set(xlabel="minibatch size m", ylabel="mean pairing cost", title=f"n = {n} data points: cost by minibatch size")
    plots.integer_ticks(ax, [m for m in sizes if m % 2 == 0 or len(sizes) <= 8])
    plots.legend_below(fig)
    return fig


def fig6_convergence(batch_sweep: Rows, size_sweep: Rows, cache_sweep: Rows = ()) -> Figure:
    """Fig. 6: the pairing converging (notebook 02's tables). Top: on digits, the gap to the global optimum and the
    swaps per epoch by batch size (batch_size_sweep), and the final gap beside the pairs minibatch OT-CFM trains on.
    Bottom: the gap by number of noise caches (caches_sweep, if given) and, on a 2-D toy, the gap and the swaps per
    example by dataset size (dataset_size_sweep)."""
    batch = _floats(batch_sweep, "epoch", "swaps", "gap", "batch_size", "minibatch_ot_gap")
    size = _floats(size_sweep, "epoch", "swaps_per_example", "gap", "dataset_size")
    caches = _floats(cache_sweep, "epoch", "gap", "caches")
    for rows, key in ((batch, "batch_size"), (size, "dataset_size"), (caches, "caches")):
        for r in rows:
            r[key] = int(r[key])
    fig, rows = plots.panel_groups([[2, 1], [1, 2] if caches else [2]], size=3.2, aspect=0.78)
    _draw_gap_and_swaps(rows[0][0], batch, "swaps", "batch_size", "digits")
    final_fig, (final_ax,) = rows[0][1]
    _draw_final_gaps(final_ax, batch)
    plots.legend_below(final_fig, ncol=1)
    if caches:
        cache_fig, (cache_ax,) = rows[1][0]
        plots.draw_curves(
            cache_ax, caches, "epoch", "gap", "caches", "digits subset: by noise caches", True, legend=False
        )
        plots.legend_below(cache_fig, ncol=3)
    _draw_gap_and_swaps(rows[1][-1], size, "swaps_per_example", "dataset_size", "2-D toy")
    return fig


def _draw_gap_and_swaps(group: tuple[Any, list[Axes]], rows: Rows, swaps: str, by: str, data: str) -> None:
    """A panel group (subfigure, two axes): the gap to the global optimum and the swaps against the epoch, one
    line per value of ``by``, with the group's legend below it."""
    container, (gap_ax, swaps_ax) = group
    plots.draw_curves(gap_ax, rows, "epoch", "gap", by, f"{data}: gap to the global optimum", True, legend=False)
    title = f"{data}: {plots.axis_label(swaps).replace(' and epoch', '')}"
    plots.draw_curves(swaps_ax, [r for r in rows if r["epoch"] > 0], "epoch", swaps, by, title, True, legend=False)
    plots.legend_below(container)


def _draw_final_gaps(ax: Axes, batch: Rows) -> None:
    """LOOM's gap after the last epoch against the batch size, beside the gap of minibatch OT-CFM's pairs."""
    last = max(r["epoch"] for r in batch)
    final = sorted((r for r in batch if r["epoch"] == last), key=lambda r: r["batch_size"])
    sizes = [r["batch_size"] for r in final]
    for key, name, label in (
        ("gap", "LOOM-CFM", f"LOOM-CFM after {last:g} epochs"),
        ("minibatch_ot_gap", "minibatch_ot", "minibatch OT-CFM (fresh noise)"),
    ):
        style = plots.look(name)
        ax.plot(sizes, [r[key] for r in final], marker=style.marker, color=style.color, label=label)
    ax.set(xlabel="batch size", ylabel=plots.axis_label("gap"), title="digits: after the last epoch")
    plots.log_axis(ax, "x", sizes)
    plots.log_axis(ax, "y")


def fig7_sample_grids(grids: Mapping[str, Path]) -> Figure:
    """Fig. 7: the plain sample-grid images the notebooks saved (:func:`save_sample_grids`), as equal panels."""
    return plots.draw_image_panels([(title, mpimg.imread(path)) for title, path in grids.items()])


# ---------------------------------------------------------------------------------------------------------
# The image notebooks (05-08, 11): FID vs NFE with curvature, sample grids
# ---------------------------------------------------------------------------------------------------------
def fid_vs_nfe_figure(fid: Rows, curvature: Rows, features: str) -> Figure:
    """Two panels: FID against true NFE per method (paper Fig. 3) and curvature per Euler step (Fig. 4).
    FIDs of different protocols share no scale: rows of more than one protocol are refused."""
    protocols = sorted({str(r.get("fid_protocol", "unrecorded")) for r in fid})
    if len(protocols) > 1:
        raise ValueError(f"FID rows of several protocols {protocols} cannot share one axis; plot each on its own")
    fig, axes = plots.figure(2, size=3.4)
    fid_ax, curvature_ax = axes[0]
    nfe = _draw_fid(fid_ax, fid)
    fid_ax.set(
        xlabel=plots.axis_label("nfe"),
        ylabel="FID",
        title=f"FID vs NFE\n({', '.join(protocols)}, {features} features)",
    )
    plots.log_axis(fid_ax, "x", nfe)
    if curvature:
        plots.draw_curves(
            curvature_ax,
            _floats(curvature, "step", "curvature"),
            "step",
            "curvature",
            "method",
            "curvature per Euler step\n(the same noise for every model)",
            logy=True,
            legend=False,
        )
        curvature_ax.set_xlabel("Euler step k")
        curvature_ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    plots.legend_below(fig, extra=_fid_key({_family(r["solver"]) for r in fid}))
    return fig


def _slug(name: str) -> str:
    """A name as a file-name part: "w/o saving local reassignments" -> "w-o-saving-local-reassignments"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _grid_title(model: str, solver: str, dataset: str = "") -> str:
    nfe = parse_solver(solver).expected_nfe
    head = f"{plots.dataset_title(dataset)}: {model}" if dataset else model
    return f"{head}\n{solver}" + (f", NFE {nfe}" if nfe else "")


def sample_grids_figure(samples: Mapping[str, Tensor], solver: str, dataset: str = "") -> Figure:
    """One equal panel per model of its samples (N, C, H, W) in [-1, 1] (lib.experiments.pipeline.grid_samples),
    all drawn with ``solver``."""
    return plots.draw_image_panels(
        [(_grid_title(model, solver, dataset), plots.image_grid(images)) for model, images in samples.items()],
        size=2.6,
    )


GRID_INDEX = "sample_grids"  # <GRID_INDEX>.csv in a notebook's folder lists its plain grids (the panels of Fig. 7)


def save_sample_grids(
    run: Run, samples: Mapping[str, Tensor], solver: str, dataset: str, name: str = "sample_grids"
) -> None:
    """Save the sample grids of a run: one plain PNG per model, ``grid_<dataset>_<model>.png`` (the equal panels
    notebook 10 composes Fig. 7 from), listed with dataset, model, solver and NFE in ``sample_grids.csv`` (rows of
    earlier calls in the same run kept), and the figure ``<name>`` of all of them, shown inline.

    samples: {model (the paper's row name): images (N, C, H, W) in [-1, 1]}, all drawn with ``solver``.
    """
    rows = []
    for model, images in samples.items():
        file = f"grid_{_slug(dataset)}_{_slug(model)}.png"
        Image.fromarray(plots.image_grid(images)).save(run.path(file))
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "solver": solver,
                "nfe": parse_solver(solver).expected_nfe or "",
                "file": file,
            }
        )
    index = run.staging / f"{GRID_INDEX}.csv"
    new = {row["file"] for row in rows}
    earlier = [r for r in read_table(index) if r["file"] not in new] if index.is_file() else []
    run.write_table(GRID_INDEX, earlier + rows)
    run.save_figure(sample_grids_figure(samples, solver, dataset), name)


# ---------------------------------------------------------------------------------------------------------
# The image notebooks (05-08): training, FID along training
# ---------------------------------------------------------------------------------------------------------
def training_pairing_figure(history: Rows, group: str = "method") -> Figure:
    """The appendix's convergence of the assignment during training, at dataset scale: per logged step (lib.train's
    history.json rows {step, swaps, cost_before, cost_after}), the swaps the step's assignment made and the mean
    pairing cost of the batch before and after it, one line per ``group`` value."""
    rows = _floats(history, "step", "swaps", "cost_before", "cost_after")
    fig, axes = plots.figure(3, size=3.4)
    for ax, key, title in zip(
        axes[0],
        ("swaps", "cost_before", "cost_after"),
        ("swaps per step", "pairing cost before the assignment", "pairing cost after the assignment"),
    ):
        plots.draw_curves(ax, rows, "step", key, group, title, legend=False)
        ax.set(xlabel="training step", ylabel="swaps" if key == "swaps" else "batch mean pairing cost")
    plots.legend_below(fig, axes[0][:1])
    return fig


def fid_vs_step_figure(rows: Rows, features: str) -> Figure:
    """Convergence in training time: FID of the kept checkpoints against the training step, one line per method
    (rows of lib.experiments.pipeline.fid_vs_step)."""
    fig, axes = plots.figure(1, size=4.2)
    ax = axes[0][0]
    solver = ", ".join(dict.fromkeys(str(r["solver"]) for r in rows))
    plots.draw_curves(
        ax, _floats(rows, "step", "fid"), "step", "fid", "method", f"FID along training ({solver})", legend=False
    )
    ax.set(xlabel="training step", ylabel=f"FID ({features} features)")
    plots.legend_below(fig)
    return fig


# ---------------------------------------------------------------------------------------------------------
# All of them from a results folder (notebook 10)
# ---------------------------------------------------------------------------------------------------------
def sample_grid_files(root: Path) -> dict[str, Path]:
    """{panel title: PNG} of every plain sample grid the image notebooks saved (their ``sample_grids.csv``), from
    each notebook's preferred run."""
    grids: dict[str, Path] = {}
    for notebook in grid_notebooks():
        found = run_folder(root, notebook)
        if found is None or not (found[1] / f"{GRID_INDEX}.csv").is_file():
            continue
        for r in read_table(found[1] / f"{GRID_INDEX}.csv"):
            title = f"{_grid_title(r['model'], r['solver'], r['dataset'])} ({notebook[:2]}, {found[0]})"
            grids[title] = found[1] / r["file"]
    return grids


def _grid_sources(root: Path) -> list[str]:
    """The source ("<notebook>, <profile> profile") of every image notebook whose grids :func:`sample_grid_files`
    reads."""
    return [
        f"{notebook}, {found[0]} profile"
        for notebook in grid_notebooks()
        if (found := run_folder(root, notebook)) is not None and (found[1] / f"{GRID_INDEX}.csv").is_file()
    ]


def _csv(root: Path, notebook: str, *names: str) -> tuple[str, list[list[dict[str, str]]]] | None:
    """(profile, rows of each CSV) from the notebook's preferred run, or None when a file is missing."""
    found = run_folder(root, notebook)
    if found is None or not all((found[1] / name).is_file() for name in names):
        return None
    return found[0], [read_table(found[1] / name) for name in names]


def _source_title(fig: Figure, name: str, source: str) -> None:
    """Name the figure and where its numbers come from above it, wrapped to the figure's width."""
    width = int(fig.get_figwidth() * 72 / 5.2)
    fig.suptitle("\n".join(textwrap.wrap(f"{name}, from {source}", width)), fontsize=8.5)


def redraw_paper_figures(root: Path) -> tuple[dict[str, tuple[Figure, str]], dict[str, str]]:
    """Every figure of paper_setup.md that results/ has the numbers for -> ({name: (figure, source)},
    {name: what is missing}). The source names the notebook and profile the numbers came from; each figure carries
    its name and source as its title."""
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
        _csv(root, "02_assignment_convergence", "batch_size_sweep.csv", "dataset_size_sweep.csv", "caches_sweep.csv"),
        fig6_convergence,
    )
    grids = sample_grid_files(root)
    if grids:
        drawn["fig7_sample_grids"] = (fig7_sample_grids(grids), "; ".join(_grid_sources(root)))
    else:
        missing["fig7_sample_grids"] = f"run one of {', '.join(grid_notebooks())} first"
    for name, (fig, source) in drawn.items():
        _source_title(fig, name, source)
    return drawn, missing
