"""lib.ablations (paper Table 5 at digits scale) and a papermill smoke run of notebooks/04_digits.ipynb."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lib.kit.results import read_table

# ---------------------------------------------------------------------------------------------------------
# papermill smoke run of the notebook with tiny parameters
# ---------------------------------------------------------------------------------------------------------
TINY_04 = {
    "STEPS": 40,
    "HIDDEN": 32,
    "EMA_DECAY": 0.9,
    "MAIN_CACHES": 2,
    "MAIN_BATCH": 128,
    "CACHES": [1],
    "BATCH_SIZES": [64],
    "NFES": [2, 4],
    "METHODS": ["midpoint", "euler"],
    "CURVATURE_STEPS": 5,
    "STEP_BENCH_STEPS": 2,
    "CHECK_CLAIMS": False,
}


@pytest.mark.slow
def test_04_digits_notebook_writes_every_row_with_true_nfe(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("04_digits", tmp_path, **TINY_04)
    metrics = read_table(folder / "table5_digits.csv")
    expected_rows = {
        "I-CFM",
        "w/o saving local reassignments",
        "fixed source w/o reassignments",
        "train after convergence",
        "LOOM-CFM",
        "LOOM-CFM 1 caches bs128",
        "LOOM-CFM 2 caches bs64",
    }
    assert {r["label"] for r in metrics} == expected_rows
    for label in expected_rows:
        nfe = {r["solver"]: int(r["nfe"]) for r in metrics if r["label"] == label}
        assert {k: v for k, v in nfe.items() if k != "dopri5"} == {
            "midpoint-1": 2,
            "midpoint-2": 4,
            "euler-2": 2,
            "euler-4": 4,
        }
        assert nfe["dopri5"] >= 6
    assert all(math.isfinite(float(r[m])) and float(r[m]) > 0 for r in metrics for m in ("fd", "w2"))
    ratio = json.loads((folder / "step_time_ratio.json").read_text())
    assert ratio["ms_loom"] > 0
    assert ratio["loom_over_independent"] == pytest.approx(ratio["ms_loom"] / ratio["ms_independent"])
    curvature = read_table(folder / "curvature_per_step.csv")
    assert len(curvature) == 3 * (TINY_04["CURVATURE_STEPS"] - 1)
    assert read_table(folder / "ordering_vs_paper.csv")
    assert {"quality_vs_nfe.png", "curvature_per_step.png", "claims.json"} <= {p.name for p in folder.iterdir()}
    # Plain vs squared Euclidean cost: LOOM-CFM retrained with the squared cost, both scored at every solver.
    costs = read_table(folder / "cost_choice_digits.csv")
    assert [(r["label"], r["cost"]) for r in costs][:: len(costs) // 2] == [
        ("LOOM-CFM", "l2"),
        ("LOOM-CFM (sqeuclidean)", "sqeuclidean"),
    ]
    assert {r["solver"] for r in costs} == {r["solver"] for r in metrics}
    assert all(float(r["fd"]) > 0 and float(r["w2"]) > 0 for r in costs)
