"""lib.kit.notebooks: the check that an executed notebook shows every figure it saved."""

from __future__ import annotations

import json
from pathlib import Path

from lib.kit.notebooks import figures_not_shown

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
