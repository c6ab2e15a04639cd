"""lib.ablations (paper Table 5 at digits scale) and a papermill smoke run of notebooks/04_digits.ipynb."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lib.kit.profiles import notebook_defaults
from lib.kit.results import read_table


# ---------------------------------------------------------------------------------------------------------
# the committed notebook (quick defaults), run by nbval just before this test (root conftest.py)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_04_digits_notebook_writes_every_row_with_true_nfe(tmp_path: Path, committed_run) -> None:
    folder = committed_run("04_digits", tmp_path)
    defaults = notebook_defaults("04_digits")
    main_caches, main_batch = defaults["MAIN_CACHES"], defaults["MAIN_BATCH"]
    metrics = read_table(folder / "table5_digits.csv")
    # Table 5's sweep: each cache count at the main batch, each batch at the main cache count (the main run aside).
    sweep = {f"LOOM-CFM {c} caches bs{main_batch}" for c in defaults["CACHES"] if c != main_caches} | {
        f"LOOM-CFM {main_caches} caches bs{b}" for b in defaults["BATCH_SIZES"] if b != main_batch
    }
    expected_rows = {
        "I-CFM",
        "w/o saving local reassignments",
        "fixed source w/o reassignments",
        "train after convergence",
        "LOOM-CFM",
    } | sweep
    assert {r["label"] for r in metrics} == expected_rows and sweep == {
        "LOOM-CFM 1 caches bs128",
        "LOOM-CFM 4 caches bs64",
    }
    fixed_grid = {f"midpoint-{n // 2}": n for n in defaults["NFES"]} | {f"euler-{n}": n for n in defaults["NFES"]}
    for label in expected_rows:
        nfe = {r["solver"]: int(r["nfe"]) for r in metrics if r["label"] == label}
        assert {k: v for k, v in nfe.items() if k != "dopri5"} == fixed_grid
        assert nfe["dopri5"] >= 6
    assert all(math.isfinite(float(r[m])) and float(r[m]) > 0 for r in metrics for m in ("fd", "w2"))
    ratio = json.loads((folder / "step_time_ratio.json").read_text())
    assert ratio["ms_loom"] > 0
    assert ratio["loom_over_independent"] == pytest.approx(ratio["ms_loom"] / ratio["ms_independent"])
    curvature = read_table(folder / "curvature_per_step.csv")
    assert len(curvature) == 3 * (defaults["CURVATURE_STEPS"] - 1)
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
