"""The kit's figure style and drawing helpers, used by every figure of every notebook (drawing only; numbers come
from lib).

The style, in one place:

- **Layout**: constrained layout for every figure (rcParams below), so titles, labels and legends placed outside the
  axes get their room. Never call ``fig.tight_layout()``: it switches a constrained figure to another engine.
- **Words with units**: titles and axis labels say what is plotted (:data:`AXIS_LABELS` for the kit's column names).
- **Log axes** through :func:`log_axis`: the measured values as plain-number ticks (NFE 2, 4, 8, 12), or a locator
  that picks 1-2-5 ticks for the range at hand, never the colliding ``4x10^0 6x10^0`` minor labels.
- **Legends** name series as the paper does (:func:`series_label`: "I-CFM", "batch 32", never "method=I-CFM") and
  never sit on data: below the figure or a panel group (:func:`legend_below`) or right of a panel
  (:func:`legend_right`).
- **One look per method** (:func:`look`): colour and marker keyed by the paper's row names and the kit's coupling
  names, the same in every notebook; Table 5's cache / batch sweep rows are shades of LOOM-CFM's colour; ordered
  sweeps of one method (batch sizes, caches, dataset sizes) are shades of it too (:func:`sequence_looks`).
- **Sample grids** as panels of equal size (:func:`draw_image_panels`).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, Locator, MaxNLocator, NullFormatter, NullLocator
from torch import Tensor
from torchvision.utils import make_grid

from lib.paper import COUPLING_ROWS, TABLE5_BATCH, TABLE5_CACHES, TABLES, paper_dataset

STYLE: dict[str, Any] = {
    "figure.constrained_layout.use": True,
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "image.interpolation": "nearest",
}
mpl.rcParams.update(STYLE)  # the kit's style for every figure drawn after importing lib.kit

PANEL = 3.0  # inches: the width of one panel
ASPECT = 0.8  # a panel's height / width for line plots

NOISE_COLOR, DATA_COLOR, PATH_COLOR = "#1f77b4", "#d62728", "0.6"  # 2-D panels: noise z, data / samples, paths
HIGHLIGHT_COLOR = "#E69F00"  # the re-paired minibatch (Fig. 2)
REFERENCE_COLOR = "0.35"  # reference lines (floors, optima, thresholds)

# ---------------------------------------------------------------------------------------------------------
# One look per method, the same in every notebook
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """How one series is drawn: colour and marker."""

    color: str
    marker: str = "o"


LOOM_COLOR = "#0072B2"
METHOD_LOOKS: dict[str, Look] = {  # keyed by the paper's row names (lib.paper.COUPLING_ROWS and Table 1)
    "I-CFM": Look("#D55E00", "s"),
    "w/o saving local reassignments": Look("#009E73", "^"),
    "fixed source w/o reassignments": Look("#CC79A7", "v"),
    "train after convergence": Look("#E69F00", "D"),
    "LOOM-CFM": Look(LOOM_COLOR, "o"),
    "LOOM-CFM + 1 Reflow": Look("#332288", "P"),
}
# The kit's coupling names (lib.couplings.COUPLINGS) as the paper names them in a legend; their looks are the rows'.
COUPLING_NAMES: dict[str, str] = {"independent": "I-CFM", "minibatch_ot": "minibatch OT-CFM", "loom": "LOOM-CFM"}
_COUPLING_ROW = {
    row.coupling: label for label, row in COUPLING_ROWS.items() if not (row.no_swaps or row.converge_first)
}
OTHER_COLORS = ("0.45", "#882255", "#44AA99", "#999933", "#AA4499", "#117733", "#88CCEE", "#DDCC77")  # other methods
_OTHER_MARKERS = ("X", "h", "*", "<", ">", "p", "d", "8")
_SWEEP = re.compile(r"LOOM-CFM (\d+) caches? bs(\d+)$")


def _mix(color: str, toward: str, amount: float) -> str:
    """``color`` moved ``amount`` (0..1) of the way toward ``toward`` (white: lighter, black: darker)."""
    a, b = np.array(mpl.colors.to_rgb(color)), np.array(mpl.colors.to_rgb(toward))
    return mpl.colors.to_hex(a + (b - a) * amount)


def _sweep_look(caches: int, batch: int) -> Look:
    """Table 5's sweep row "LOOM-CFM c caches bsB": LOOM-CFM's colour, lighter for fewer caches than the paper's 4,
    darker for a smaller batch than its 128 (circles for the cache sweep, squares for the batch sweep)."""
    color = LOOM_COLOR
    if caches < TABLE5_CACHES:
        color = _mix(color, "white", 0.2 + 0.55 * (TABLE5_CACHES - caches) / TABLE5_CACHES)
    if batch < TABLE5_BATCH:
        color = _mix(color, "black", 0.25 + 0.3 * (1 - batch / TABLE5_BATCH))
    return Look(color, "o" if batch == TABLE5_BATCH else "s")


def look(name: object) -> Look:
    """The look of a method: a paper row name ("I-CFM", "LOOM-CFM 1 caches bs128") or a kit coupling name
    ("independent", "minibatch_ot", "loom"); any other name gets a fixed look of its own (same name, same look)."""
    name = str(name)
    if name in METHOD_LOOKS:
        return METHOD_LOOKS[name]
    if name in _COUPLING_ROW:
        return METHOD_LOOKS[_COUPLING_ROW[name]]
    sweep = _SWEEP.match(name)
    if sweep:
        return _sweep_look(int(sweep[1]), int(sweep[2]))
    index = sum(map(ord, name)) % len(OTHER_COLORS)  # stable across runs and processes (str hash is salted)
    return Look(OTHER_COLORS[index], _OTHER_MARKERS[index])


def method_label(name: object) -> str:
    """A method's name in a legend: the paper's ("minibatch_ot" -> "minibatch OT-CFM"); paper row names unchanged."""
    return COUPLING_NAMES.get(str(name), str(name))


def sequence_looks(values: Sequence[object], color: str = LOOM_COLOR) -> dict[object, Look]:
    """Ordered settings of one method (batch sizes, caches, dataset sizes) -> shades of ``color``, light to dark,
    each with its own marker."""
    markers = ("o", "s", "^", "D", "v", "P", "X", "h")
    n = len(values)

    def shade(i: int) -> str:  # from 60 % white through the colour itself to 45 % black
        f = i / (n - 1) if n > 1 else 0.5
        return _mix(color, "white", 0.6 * (1 - 2 * f)) if f <= 0.5 else _mix(color, "black", 0.45 * (2 * f - 1))

    return {v: Look(shade(i), markers[i % len(markers)]) for i, v in enumerate(values)}


# ---------------------------------------------------------------------------------------------------------
# Names in words
# ---------------------------------------------------------------------------------------------------------
AXIS_LABELS: dict[str, str] = {  # the kit's column names as axis labels (words, units)
    "epoch": "epoch",
    "step": "step",
    "gap": "relative gap to the optimum",
    "swaps": "swaps per epoch",
    "swaps_per_example": "swaps per example and epoch",
    "cost": "mean pairing cost",
    "curvature": r"curvature $1 - \cos(v_k, v_{k+1})$",
    "fid": "FID",
    "fd": "Frechet distance (digits classifier)",
    "w2": "W2 to held-out samples",
    "nfe": "NFE (network calls)",
    "batch_size": "batch size",
    "loss": "CFM loss",
}
_SERIES: dict[str, str] = {"batch_size": "batch {}", "dataset_size": "{} examples", "m": "m = {}"}
_METHOD_GROUPS = ("method", "label", "coupling", "paths", "row")


def axis_label(column: str) -> str:
    """A column name as an axis label in words."""
    return AXIS_LABELS.get(column, column.replace("_", " "))


def series_label(group: str, value: object) -> str:
    """One legend entry of a line per ``group`` value, named as the paper does: "I-CFM", "batch 32", "4 caches"."""
    if group in _METHOD_GROUPS:
        return method_label(value)
    if group == "caches":
        return f"{value} cache" + ("" if str(value) == "1" else "s")
    return _SERIES.get(group, group.replace("_", " ") + " {}").format(value)


def dataset_title(name: str) -> str:
    """A dataset as the paper's table titles write it ("imagenet32" -> "ImageNet-32"); unknown names unchanged."""
    dataset = paper_dataset(name)
    titles = {d: title.split(": ", 1)[1] for (table, d), title in TABLES.items() if table != "5"}
    return titles.get(dataset, name)


# ---------------------------------------------------------------------------------------------------------
# Figures and legends
# ---------------------------------------------------------------------------------------------------------
def figure(ncols: int = 1, nrows: int = 1, size: float = PANEL, aspect: float = ASPECT, **kwargs: Any) -> tuple:
    """A constrained-layout figure of nrows x ncols panels, each ``size`` inches wide and ``aspect`` x as tall ->
    (figure, axes[row][col])."""
    return plt.subplots(nrows, ncols, figsize=(size * ncols, size * aspect * nrows), squeeze=False, **kwargs)


def panel_groups(
    layout: Sequence[Sequence[int]], size: float = PANEL, aspect: float = ASPECT, legend_room: float = 0.45
) -> tuple[Figure, list[list[tuple[SubFigure, list[Axes]]]]]:
    """A figure of rows of panel groups, each group a subfigure that can carry its own legend below it.

    layout: per row, the number of panels of each group ([[2, 1], [1, 2]]: two rows, each a group of two panels
    and a group of one). Returns (figure, rows[groups[(subfigure, axes)]]). ``legend_room``: inches per row kept for
    the legends.
    """
    width = size * max(sum(row) for row in layout)
    fig = plt.figure(figsize=(width, (size * aspect + legend_room) * len(layout)))
    out = []
    for row_fig, groups in zip(fig.subfigures(len(layout), 1, squeeze=False)[:, 0], layout):
        subs = row_fig.subfigures(1, len(groups), width_ratios=list(groups), squeeze=False)[0]
        out.append([(sub, list(sub.subplots(1, n, squeeze=False)[0])) for sub, n in zip(subs, groups)])
    return fig, out


def _entries(axes: Iterable[Axes]) -> dict[str, Any]:
    """{label: handle} of every labelled artist of ``axes``, first occurrence kept (one entry per series)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("_"):
                entries.setdefault(label, handle)
    return entries


def legend_below(
    container: Figure | SubFigure,
    axes: Iterable[Axes] | None = None,
    extra: Mapping[str, Any] | None = None,
    ncol: int | None = None,
) -> None:
    """One legend for ``axes`` (default: all of the container's), below the figure or subfigure, outside the data.
    ``extra``: more {label: handle} entries (e.g. a style key)."""
    entries = {**_entries(axes if axes is not None else container.axes), **(extra or {})}
    if not entries:
        return
    if ncol is None:
        width_pt = container.get_figure(root=True).get_figwidth() * 72 * _width_share(container)
        longest = max(len(label) for label in entries)
        ncol = max(1, min(len(entries), int(width_pt // (longest * 4.6 + 28))))
    container.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=ncol)


def _width_share(container: Figure | SubFigure) -> float:
    """The fraction of the root figure's width a (sub)figure spans."""
    if isinstance(container, SubFigure):
        return container.bbox.width / container.get_figure(root=True).bbox.width
    return 1.0


def legend_right(ax: Axes, extra: Mapping[str, Any] | None = None) -> None:
    """The panel's legend right of it, outside the data."""
    entries = {**_entries([ax]), **(extra or {})}
    if entries:
        ax.legend(list(entries.values()), list(entries), loc="center left", bbox_to_anchor=(1.02, 0.5))


def key_handle(**line: Any) -> Line2D:
    """A legend entry for a style (a line with no data): key_handle(color="k", ls="--")."""
    return Line2D([], [], **{"color": "0.3", **line})


# ---------------------------------------------------------------------------------------------------------
# Log axes a person can read
# ---------------------------------------------------------------------------------------------------------
def plain_number(value: float, _pos: object = None) -> str:
    """A tick label in plain digits (0.0003, 30, 1500); powers of ten in math text only outside 1e-4..1e5."""
    if value <= 0 or not math.isfinite(value):
        return ""
    if 1e-4 <= value < 1e5:
        return f"{value:g}"
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10**exponent
    if abs(mantissa - round(mantissa)) < 1e-6 and round(mantissa) == 1:
        return f"$10^{{{exponent}}}$"
    return f"${mantissa:.2g}\\times10^{{{exponent}}}$"


class ReadableLogLocator(Locator):
    """Log-axis ticks for the range at hand: decades over a wide range (every k-th when many), 1-2-5 or 1-2-3-5
    steps over a shorter one, and evenly spaced round values when even those give fewer than three."""

    SUBS: tuple[tuple[float, ...], ...] = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0))
    MAX_TICKS = 7

    def __call__(self) -> list[float]:
        lo, hi = self.axis.get_view_interval()
        return self.tick_values(lo, hi)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        lo, hi = sorted((vmin, vmax))
        if hi <= 0:
            return []
        lo = max(lo, hi * 1e-12)
        first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        decades = last - first
        if decades > self.MAX_TICKS:
            stride = math.ceil(decades / (self.MAX_TICKS - 1))
            return [10.0**e for e in range(first - first % stride, last + stride, stride)]
        for subs in self.SUBS:
            ticks = [s * 10.0**e for e in range(first, last + 1) for s in subs]
            inside = [t for t in ticks if lo <= t * (1 + 1e-9) and t <= hi * (1 + 1e-9)]
            if len(inside) > self.MAX_TICKS:
                break
            if len(inside) >= 3 or (len(inside) >= 2 and subs == self.SUBS[-1]):
                return ticks
        return list(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi))


def log_axis(ax: Axes, which: str = "x", ticks: Iterable[float] | None = None) -> None:
    """Make the ``which`` axis ("x" or "y") logarithmic with readable plain-number labels.

    ticks: the measured values to label (e.g. NFE 2, 4, 8, 12); values closer than 20 % to a kept one are skipped,
    so labels never collide. Without ticks a :class:`ReadableLogLocator` chooses them. Minor ticks get no labels.
    """
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    if ticks is not None:
        kept: list[float] = []
        for t in sorted({float(t) for t in ticks if float(t) > 0}):
            if not kept or t / kept[-1] >= 1.2:
                kept.append(t)
        axis.set_major_locator(FixedLocator(kept))
        axis.set_minor_locator(NullLocator())
    else:
        axis.set_major_locator(ReadableLogLocator())
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_formatter(NullFormatter())


def integer_ticks(ax: Axes, values: Iterable[float], which: str = "x") -> None:
    """Label exactly ``values`` (measured settings on a linear axis) with plain numbers."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator(sorted({float(v) for v in values})))
    axis.set_major_formatter(FuncFormatter(plain_number))


# ---------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------
def draw_paths(ax: Axes, trajectory: Tensor, title: str = "", max_paths: int = 64) -> None:
    """2-D sampling paths: trajectory (T, B, 2); noise ends blue, sample ends red, the path grey."""
    traj = trajectory[:, :max_paths].detach().cpu()
    ax.plot(traj[:, :, 0], traj[:, :, 1], color=PATH_COLOR, lw=0.7, alpha=0.8)
    ax.plot([], [], color=PATH_COLOR, lw=0.7, label="sampling path")
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=7, color=NOISE_COLOR, zorder=3, label="noise z (t = 0)")
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=7, color=DATA_COLOR, zorder=3, label="sample (t = 1)")
    _plane(ax, title)


def draw_spacetime(ax: Axes, trajectory: Tensor, times: Tensor, title: str = "", max_paths: int = 64) -> None:
    """First coordinate of each path against t: trajectory (T, B, d), times (T,). Shows in-and-out curves."""
    traj = trajectory[:, :max_paths, 0].detach().cpu()
    ax.plot(times.cpu(), traj, color="0.35", lw=0.7, alpha=0.8)
    ax.set(xlabel="time t", ylabel="first coordinate $x_1$")
    ax.set_title(title)


def draw_pairing(
    ax: Axes, x: Tensor, z: Tensor, pairing: Tensor, highlight: Tensor | None = None, title: str = ""
) -> None:
    """Straight conditional paths z[pairing[i]] -> x[i]; x (N, 2), z (M, 2); ``highlight`` examples in orange."""
    marked = set(highlight.tolist()) if highlight is not None else set()
    for i in range(len(x)):
        zi = z[pairing[i]]
        ax.plot(
            [zi[0], x[i, 0]],
            [zi[1], x[i, 1]],
            color=HIGHLIGHT_COLOR if i in marked else PATH_COLOR,
            lw=1.6 if i in marked else 0.7,
            zorder=2 if i in marked else 1,
        )
    ax.plot([], [], color=PATH_COLOR, lw=0.7, label="pair (straight conditional path)")
    if marked:
        ax.plot([], [], color=HIGHLIGHT_COLOR, lw=1.6, label="pair in the re-paired minibatch")
    ax.scatter(z[:, 0], z[:, 1], s=9, color=NOISE_COLOR, zorder=3, label="noise z")
    ax.scatter(x[:, 0], x[:, 1], s=9, color=DATA_COLOR, zorder=3, label="data x")
    _plane(ax, title)


def draw_curves(
    ax: Axes,
    rows: Sequence[Mapping[str, object]],
    x: str,
    y: str,
    group: str,
    title: str = "",
    logy: bool = False,
    groups: Iterable[object] | None = None,
    looks: Mapping[object, Look] | None = None,
    legend: bool = True,
) -> None:
    """Line plot of rows[y] against rows[x], one line per value of rows[group], labelled and styled as the paper
    names it (methods by :func:`look`; other groups, ordered settings, as shades by :func:`sequence_looks`).
    ``legend``: the panel's legend right of it; False leaves it to the caller (e.g. one :func:`legend_below`
    for a group of panels)."""
    values = list(groups if groups is not None else dict.fromkeys(r[group] for r in rows))
    if looks is None:
        looks = {v: look(v) for v in values} if group in _METHOD_GROUPS else sequence_looks(values)
    for value in values:
        sel = [r for r in rows if r[group] == value]
        style = looks[value]
        ax.plot(
            [r[x] for r in sel],
            [r[y] for r in sel],
            marker=style.marker,
            ms=3.5,
            markevery=max(1, len(sel) // 12),  # long series: markers tell the lines apart without hiding them
            color=style.color,
            label=series_label(group, value),
        )
    ax.set(xlabel=axis_label(x), ylabel=axis_label(y), title=title)
    if logy:
        log_axis(ax, "y")
    if legend:
        legend_right(ax)


def image_grid(images: Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> one square-ish grid (rows x cols of images, 2-pixel white gaps) as an
    (H', W', 3) uint8 array."""
    nrow = max(1, math.ceil(math.sqrt(len(images))))
    grid = make_grid(images.detach().cpu().float(), nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)
    return (grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()


def grid_columns(panels: int, widest: int = 5) -> int:
    """Columns for ``panels`` equal panels: the count in 3..widest (or fewer panels) leaving the fewest empty cells,
    the widest on a tie."""
    if panels <= widest:
        return max(1, panels)
    return min(range(widest, 2, -1), key=lambda c: -(-panels // c) * c - panels)


def draw_image_panels(panels: Sequence[tuple[str, np.ndarray]], size: float = 2.2, widest: int = 5) -> Figure:
    """Equal-size panels of images (H, W, 3) with their titles, as few empty cells as the count allows."""
    ncols = grid_columns(len(panels), widest)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.45) * nrows), squeeze=False)
    cells = [ax for row in axes for ax in row]
    width = int(size * 72 / (8 * 0.6))  # characters of an 8-point title that fit the panel's width
    for ax, (title, image) in zip(cells, panels):
        ax.imshow(image)
        ax.set_title("\n".join(part for line in title.split("\n") for part in textwrap.wrap(line, width)), fontsize=8)
    for ax in cells:
        ax.axis("off")
    return fig


def _plane(ax: Axes, title: str) -> None:
    """A 2-D panel: equal scales (the panel keeps its size, the limits adapt), no ticks, a title."""
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.spines[["top", "right"]].set_visible(True)
