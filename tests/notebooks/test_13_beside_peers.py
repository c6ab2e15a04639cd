"""papermill smoke run of notebook 13 (the kit beside torchcfm) with tiny parameters, then assertions on what it wrote.

Whether the implementations agree needs the notebook's own budget (its CHECK_CLAIMS cell); here every method must
have been trained and scored at every solver on every dataset and seed, the summary and the paired differences must
follow from the per-seed rows, and torchcfm's draws from the OT plan must be counted as they are.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from lib.kit.results import read_table

pytestmark = pytest.mark.slow

TINY_13 = {
    "SEEDS": [0, 1],
    "DATASET_SIZE": 256,
    "TOY_STEPS": 10,
    "TOY_BATCH": 64,
    "TOY_HIDDEN": 16,
    "DIGITS_STEPS": 10,
    "DIGITS_BATCH": 64,
    "DIGITS_HIDDEN": 16,
    "EVAL_SAMPLES": 64,
    "SOLVERS": ["euler-1", "euler-2", "dopri5"],
    "PLAN_BATCHES": 8,
    "CHECK_CLAIMS": False,
}
METHODS = {
    "kit I-CFM",
    "torchcfm I-CFM",
    "kit OT-CFM",
    "kit OT-CFM (l2)",
    "torchcfm OT-CFM",
    "torchcfm OT-CFM (permutation)",
    "LOOM in torchcfm's loop",
}


def test_13_beside_peers_writes_consistent_tables(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("13_beside_peers", tmp_path / "results", **TINY_13)
    datasets = {"8gaussians", "digits"}
    runs = read_table(folder / "per_seed_scores.csv")
    keys = {(r["dataset"], r["method"], int(r["seed"]), r["solver"]) for r in runs}
    assert len(keys) == len(runs) == len(datasets) * len(METHODS) * 2 * 3
    assert {k[:2] for k in keys} == {(d, m) for d in datasets for m in METHODS}
    assert all(int(r["nfe"]) == int(r["solver"][-1]) for r in runs if r["solver"].startswith("euler"))
    assert all(int(r["nfe"]) >= 6 for r in runs if r["solver"] == "dopri5")
    # The score is W2 on the toy and the Frechet distance on the digits.
    assert all(r["score"] == r["w2" if r["dataset"] != "digits" else "fd"] for r in runs)

    # The side-by-side table is the mean and std over seeds of those rows.
    comparison = read_table(folder / "comparison.csv")
    assert len(comparison) == len(datasets) * len(METHODS) * 3
    for c in comparison:
        scores = [
            float(r["score"])
            for r in runs
            if (r["dataset"], r["method"], r["solver"]) == (c["dataset"], c["method"], c["solver"])
        ]
        assert float(c["mean"]) == pytest.approx(statistics.mean(scores))
        assert float(c["std"]) == pytest.approx(statistics.stdev(scores))

    # Paired differences: a - b averaged over the seeds, "beyond noise" exactly when p < 0.05.
    differences = read_table(folder / "paired_differences.csv")
    assert {(r["a"], r["b"]) for r in differences} >= {
        ("kit I-CFM", "torchcfm I-CFM"),
        ("kit OT-CFM", "torchcfm OT-CFM"),
    }
    score = {(r["dataset"], r["method"], r["solver"], r["seed"]): float(r["score"]) for r in runs}
    for d in differences:
        diffs = [
            score[d["dataset"], d["a"], d["solver"], s] - score[d["dataset"], d["b"], d["solver"], s]
            for s in ("0", "1")
        ]
        assert float(d["mean_diff"]) == pytest.approx(statistics.mean(diffs))
        assert (d["beyond_noise"] == "True") == (float(d["p"]) < 0.05)

    # torchcfm's plan is a permutation; drawn with replacement it keeps fewer distinct examples, without all of them.
    summary = json.loads((folder / "plan_draws_summary.json").read_text())
    assert set(summary) == datasets
    for s in summary.values():
        assert s["plan_nonzeros"] == s["B"] == 64
        assert s["distinct_examples_without"] == s["distinct_noises_without"] == 1.0
        assert 0.55 < s["distinct_examples_with"] < 0.72 and s["cost_rel_diff"] < 1e-5
    assert {p.name for p in folder.glob("*.png")} == {"score_vs_nfe.png", "distinct_examples_per_batch.png"}
