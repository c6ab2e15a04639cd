"""Assertions on what the committed notebook (its quick defaults) wrote: nbval runs it in ``make test`` just before
this test (root conftest.py); run alone, this test runs it through papermill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.kit.profiles import notebook_defaults
from lib.kit.results import read_table

pytestmark = pytest.mark.slow


def test_01_toy_couplings(tmp_path: Path, committed_run) -> None:
    folder = committed_run("01_toy_couplings", tmp_path)
    polygon_n = notebook_defaults("01_toy_couplings")["POLYGON_N"]
    straight = {r["paths"]: float(r["straightness"]) for r in read_table(folder / "fig1_straightness.csv")}
    # Fig. 1's text: the trained independent field bends its paths the same way as the closed form, less; LOOM's
    # paths are nearly straight.
    assert (
        straight["trained, loom coupling"]
        < straight["trained, independent coupling"]
        < straight["closed form (independent)"]
    )
    fig2 = json.loads((folder / "fig2_local_reassignment.json").read_text())
    assert fig2["pairs_changed_outside_batch"] == 0
    polygon = read_table(folder / "fig5_polygon.csv")
    assert [int(r["batch_size"]) for r in polygon] == list(range(2, polygon_n + 1))
    assert abs(float(polygon[-1]["final_cost"]) - float(polygon[-1]["global_optimum"])) < 1e-6
    assert {"fig1_gaussian_paths.png", "fig1_gaussian_paths.pdf"} <= {p.name for p in folder.iterdir()}
