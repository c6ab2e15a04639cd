"""Assertions on what the committed notebook (its quick defaults) wrote: nbval runs it in ``make test`` just before
this test (root conftest.py); run alone, this test runs it through papermill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.kit import reproduce
from lib.kit.profiles import notebook_defaults
from lib.kit.results import read_table

pytestmark = pytest.mark.slow


def test_03_toy_generation(tmp_path: Path, committed_run) -> None:
    folder = committed_run("03_toy_generation", tmp_path)
    defaults = notebook_defaults("03_toy_generation")
    rows = read_table(folder / "w2_by_nfe.csv")
    assert {r["coupling"] for r in rows} == {"independent", "minibatch_ot", "loom"}
    assert {(r["toy"], r["solver"]) for r in rows} == {(t, s) for t in defaults["TOYS"] for s in defaults["SOLVERS"]}
    nfe = {r["solver"]: int(r["nfe"]) for r in rows}
    assert nfe["euler-1"] == 1 and nfe["euler-8"] == 8 and nfe["dopri5"] >= 6
    assert all(float(r["w2"]) > 0 for r in rows)
    one_step = json.loads((folder / "one_step_w2.json").read_text())
    assert all(w["loom"] < w["independent"] and w["minibatch_ot"] < w["independent"] for w in one_step.values())
    # Plain vs squared Euclidean pairing cost: LOOM trained both ways on COST_TOYS, scored at every solver.
    costs = read_table(folder / "cost_choice_w2.csv")
    assert [(r["toy"], r["cost"], r["solver"]) for r in costs] == [
        (toy, cost, solver)
        for toy in defaults["COST_TOYS"]
        for cost in ("l2", "sqeuclidean")
        for solver in defaults["SOLVERS"]
    ]
    assert all(float(r["w2"]) > 0 for r in costs)


def test_a_failing_notebook_names_itself_and_the_cell(tmp_path: Path, run_tiny) -> None:
    with pytest.raises(reproduce.NotebookFailed, match=r"03_toy_generation failed in cell \d+.*unknown toy"):
        reproduce.run_notebook("03_toy_generation", {"TOYS": ["donut"], "STEPS": 1}, results_dir=tmp_path)
