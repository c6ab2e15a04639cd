"""papermill smoke runs: each notebook with tiny parameters, then assertions on the metrics it wrote.

nbval (``pytest notebooks --nbval-lax``) separately runs the committed quick defaults.
"""

from __future__ import annotations
import csv
import json
from pathlib import Path
import pytest

from lib.kit.results import read_table
import torch
from lib.kit import reproduce


pytestmark = pytest.mark.slow


def test_03_toy_generation(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("03_toy_generation", tmp_path, TOYS=["moons"], DATASET_SIZE=512, STEPS=60,
                      BATCH_SIZE=64, EVAL_SAMPLES=128, SOLVERS=["euler-2", "midpoint-2", "dopri5"],
                      CHECK_CLAIMS=False, COST_TOYS=["moons"])
    rows = read_table(folder / "w2_by_nfe.csv")
    assert {r["coupling"] for r in rows} == {"independent", "minibatch_ot", "loom"}
    nfe = {r["solver"]: int(r["nfe"]) for r in rows}
    assert nfe["euler-2"] == 2 and nfe["midpoint-2"] == 4 and nfe["dopri5"] >= 6
    assert all(float(r["w2"]) > 0 for r in rows)
    # Plain vs squared Euclidean pairing cost: LOOM trained both ways on COST_TOYS, scored at every solver.
    costs = read_table(folder / "cost_choice_w2.csv")
    assert [(r["toy"], r["cost"], r["solver"]) for r in costs] == [
        ("moons", cost, solver) for cost in ("l2", "sqeuclidean") for solver in ("euler-2", "midpoint-2", "dopri5")]
    assert all(float(r["w2"]) > 0 for r in costs)


def test_a_failing_notebook_names_itself_and_the_cell(tmp_path: Path, run_tiny) -> None:
    with pytest.raises(reproduce.NotebookFailed, match=r"03_toy_generation failed in cell \d+.*unknown toy"):
        reproduce.run_notebook("03_toy_generation", {"TOYS": ["donut"], "STEPS": 1}, results_dir=tmp_path)
