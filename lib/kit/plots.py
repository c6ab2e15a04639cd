"""Matplotlib drawing helpers shared by the notebooks (drawing only; numbers come from lib)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
from torch import Tensor


def figure(ncols: int = 1, nrows: int = 1, size: float = 3.2, **kwargs: object) -> tuple[plt.Figure, object]:
    """A figure of ncols x nrows square panels."""
    return plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False, **kwargs)


def draw_paths(ax: plt.Axes, trajectory: Tensor, title: str = "", max_paths: int = 64) -> None:
    """2-D sampling paths: trajectory (T, B, 2); noise ends blue, data ends red."""
    traj = trajectory[:, :max_paths].detach().cpu()
    ax.plot(traj[:, :, 0], traj[:, :, 1], color="0.5", lw=0.7, alpha=0.8)
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=6, color="tab:blue", zorder=3, label="noise (t=0)")
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=6, color="tab:red", zorder=3, label="sample (t=1)")
    _square(ax, title)


def draw_spacetime(ax: plt.Axes, trajectory: Tensor, times: Tensor, title: str = "", max_paths: int = 64) -> None:
    """First coordinate of each path against t: trajectory (T, B, d), times (T,). Shows in-and-out curves."""
    traj = trajectory[:, :max_paths, 0].detach().cpu()
    ax.plot(times.cpu(), traj, color="0.4", lw=0.7, alpha=0.8)
    ax.set(xlabel="t", ylabel="$x_1$")
    ax.set_title(title, fontsize=9)


def draw_pairing(
    ax: plt.Axes, x: Tensor, z: Tensor, pairing: Tensor, highlight: Tensor | None = None, title: str = ""
) -> None:
    """Straight conditional paths z[pairing[i]] -> x[i]; x (N, 2), z (M, 2); ``highlight`` examples in orange."""
    marked = set(highlight.tolist()) if highlight is not None else set()
    for i in range(len(x)):
        zi = z[pairing[i]]
        ax.plot(
            [zi[0], x[i, 0]],
            [zi[1], x[i, 1]],
            color="tab:orange" if i in marked else "0.7",
            lw=1.4 if i in marked else 0.7,
            zorder=2 if i in marked else 1,
        )
    ax.scatter(z[:, 0], z[:, 1], s=8, color="tab:blue", zorder=3, label="noise")
    ax.scatter(x[:, 0], x[:, 1], s=8, color="tab:red", zorder=3, label="data")
    _square(ax, title)


def draw_curves(
    ax: plt.Axes,
    rows: Sequence[Mapping[str, object]],
    x: str,
    y: str,
    group: str,
    title: str = "",
    logy: bool = False,
    groups: Iterable[object] | None = None,
) -> None:
    """Line plot of rows[y] against rows[x], one line per value of rows[group]."""
    for value in groups if groups is not None else dict.fromkeys(r[group] for r in rows):
        sel = [r for r in rows if r[group] == value]
        ax.plot([r[x] for r in sel], [r[y] for r in sel], marker="o", ms=3, label=f"{group}={value}")
    ax.set(xlabel=x, ylabel=y, title=title)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _square(ax: plt.Axes, title: str) -> None:
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
