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


def test_02_assignment_convergence(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("02_assignment_convergence", tmp_path, EPOCHS=6, BATCH_SIZES=[64, 256], MAIN_BATCH=64,
                      CACHES=[1, 2], CACHE_STUDY_SIZE=128, TOY_SIZES=[128], BENCH_EXAMPLES=1000,
                      BENCH_BATCH=32, BENCH_STEPS=3)
    headline = json.loads((folder / "headline_digits.json").read_text())
    assert headline["epochs"] == 6 and headline["examples"] == 1797
    assert 0 <= headline["loom_gap"] < headline["minibatch_ot_gap"] < headline["independent_gap"]
    epochs = read_table(folder / "headline_digits_epochs.csv")
    costs = [float(r["cost"]) for r in epochs]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(costs, costs[1:]))
    bench = json.loads((folder / "coupling_cost.json").read_text())
    assert bench["num_examples"] == 1000 and bench["ms_loom"] > 0
