"""The kit's figure style: one look per method everywhere, names as the paper writes them, readable log ticks."""

from __future__ import annotations

import ast

import matplotlib.pyplot as plt

from lib import REPO_ROOT
from lib.kit import plots
from lib.paper import COUPLING_ROWS, sweep_label


def test_a_coupling_and_its_paper_row_share_one_look_and_methods_differ() -> None:
    assert plots.look("independent") == plots.look("I-CFM")
    assert plots.look("minibatch_ot") == plots.look("w/o saving local reassignments")
    assert plots.look("loom") == plots.look("LOOM-CFM") == plots.look(sweep_label(4, 128))
    colors = [plots.look(label).color for label in COUPLING_ROWS] + [plots.look("LOOM-CFM + 1 Reflow").color]
    assert len(set(colors)) == len(colors), "every paper row gets its own colour"
    sweep = [plots.look(sweep_label(c, b)).color for c, b in [(1, 128), (2, 128), (3, 128), (4, 32), (4, 64)]]
    assert len(set(sweep)) == len(sweep) and plots.LOOM_COLOR not in sweep, "sweep rows are distinct LOOM shades"
    assert plots.look("a method nobody styled") == plots.look("a method nobody styled")


def test_legend_names_read_as_the_paper_writes_them() -> None:
    assert plots.series_label("method", "I-CFM") == "I-CFM"
    assert plots.series_label("coupling", "minibatch_ot") == "minibatch OT-CFM"
    assert plots.series_label("batch_size", 32) == "batch 32"
    assert [plots.series_label("caches", c) for c in (1, 4)] == ["1 cache", "4 caches"]
    assert plots.dataset_title("imagenet32") == "ImageNet-32" and plots.dataset_title("cifar10_reflow") == "CIFAR-10"


def test_log_ticks_are_plain_numbers_that_never_collide() -> None:
    assert [plots.plain_number(v) for v in (0.002, 30.0, 1500.0, 1e-6, 3e-7)] == [
        "0.002",
        "30",
        "1500",
        "$10^{-6}$",
        "$3\\times10^{-7}$",
    ]
    locator = plots.ReadableLogLocator()
    inside = lambda lo, hi: [t for t in locator.tick_values(lo, hi) if lo <= t <= hi]  # noqa: E731
    assert inside(1.5, 55) == [2, 5, 10, 20, 50]
    assert 3 <= len(inside(0.077, 0.084)) <= 5  # less than a decade: evenly spaced round values
    assert len(inside(1e-6, 1e6)) <= plots.ReadableLogLocator.MAX_TICKS
    fig, axes = plots.figure(1)
    plots.log_axis(axes[0][0], "x", [4, 8, 12, 74, 80])  # measured NFE; 80 sits within 20 % of 74
    assert list(axes[0][0].xaxis.get_major_locator().tick_values(1, 100)) == [4, 8, 12, 74]
    plt.close(fig)


def test_image_panels_are_equal_and_leave_few_empty_cells() -> None:
    assert [plots.grid_columns(n) for n in (1, 4, 6, 9, 15, 16)] == [1, 4, 3, 3, 5, 4]


def test_no_kit_figure_leaves_constrained_layout() -> None:
    """fig.tight_layout() switches a constrained figure to another engine (with a warning) and lets legends
    placed outside the axes overlap: the kit's figures rely on constrained layout alone."""
    callers = [
        f"{p.name}:{node.lineno}"
        for p in sorted((REPO_ROOT / "lib" / "kit").glob("*.py"))
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "tight_layout"
    ]
    assert callers == [], f"drop fig.tight_layout() from {callers}: lib.kit.plots figures use constrained layout"
