"""lib.kit.notebooks: the check that an executed notebook shows every figure it saved."""

from __future__ import annotations

import json
from pathlib import Path

from lib import REPO_ROOT
from lib.kit.notebooks import NOTEBOOKS, figures_not_shown

PNG = {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Image>"}, "metadata": {}}
TEXT = {"output_type": "stream", "name": "stdout", "text": "saved\n"}


def executed(tmp_path: Path, cells: list[tuple[str, list[dict]]]) -> Path:
    """An executed notebook of code cells (source, outputs), as papermill writes one."""
    path = tmp_path / "executed.ipynb"
    path.write_text(
        json.dumps(
            {
                "cells": [
                    {"cell_type": "markdown", "metadata": {}, "source": ["run.save_figure(fig, 'in prose')"]},
                    *(
                        {"cell_type": "code", "metadata": {}, "source": [source], "outputs": outputs}
                        for source, outputs in cells
                    ),
                ],
                "metadata": {},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    return path


def test_figures_not_shown_counts_images_per_figure_call(tmp_path: Path) -> None:
    shown = executed(
        tmp_path,
        [
            ("run.save_figure(a, 'a')\nrun.save_figure(b, 'b')", [PNG, PNG]),
            ("figures.save_sample_grids(run, grids, 'euler-1', 'cifar10')", [PNG]),
            ("x = 1", []),
        ],
    )
    assert figures_not_shown(shown) == []
    hidden = executed(tmp_path, [("run.save_figure(a, 'a')\nrun.save_figure(b, 'b')", [PNG, TEXT]), ("y", [])])
    assert figures_not_shown(hidden) == ["cell 1: 2 figure calls, 1 images"]


def test_a_figure_a_branch_skips_is_not_missing(tmp_path: Path) -> None:
    """A figure call under ``if`` may rightly not run (no training curves for a released checkpoint); one that
    always runs must show its image, and one in a loop at least once."""
    skipped = executed(tmp_path, [("if history:\n    run.save_figure(a, 'a')\nelse:\n    pass", [])])
    assert figures_not_shown(skipped) == []
    looped = executed(tmp_path, [("for f in figs:\n    run.save_figure(f, 'f')\nrun.save_figure(b, 'b')", [PNG])])
    assert figures_not_shown(looped) == ["cell 1: 2 figure calls, 1 images"]


def test_every_published_executed_copy_shows_its_figures() -> None:
    """What a reader opens in results/: each notebook's executed copy shows every figure it saved (nbval's runs in
    make test keep no executed copy to check, so the published ones are checked here)."""
    copies = sorted(REPO_ROOT.glob("results/*/*/[0-9][0-9]_*.ipynb"))
    assert {p.stem for p in copies if p.parent.parent.name == "quick"} == set(NOTEBOOKS)
    unshown = {str(p.relative_to(REPO_ROOT)): figures_not_shown(p) for p in copies}
    assert not any(unshown.values()), unshown
