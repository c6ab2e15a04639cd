"""Assertions on what the committed notebook (its quick defaults) wrote: nbval runs it in ``make test`` just before
this test (root conftest.py); run alone, this test runs it through papermill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.kit.profiles import notebook_defaults
from lib.kit.results import read_table

pytestmark = pytest.mark.slow


def test_02_assignment_convergence(tmp_path: Path, committed_run) -> None:
    folder = committed_run("02_assignment_convergence", tmp_path)
    defaults = notebook_defaults("02_assignment_convergence")
    headline = json.loads((folder / "headline_digits.json").read_text())
    assert headline["epochs"] == defaults["EPOCHS"] and headline["examples"] == 1797
    assert 0 <= headline["loom_gap"] < headline["minibatch_ot_gap"] < headline["independent_gap"]
    epochs = read_table(folder / "headline_digits_epochs.csv")
    costs = [float(r["cost"]) for r in epochs]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(costs, costs[1:]))
    bench = json.loads((folder / "coupling_cost.json").read_text())
    assert bench["num_examples"] == defaults["BENCH_EXAMPLES"] and bench["ms_loom"] > 0
    assert bench["loom_noise"] in {"memory", "seeds"}  # the coupling-cost text names where the noises come from
