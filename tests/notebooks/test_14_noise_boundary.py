"""papermill smoke run of notebook 14 (the capacity-aware noise-table boundary) with tiny held-out runs of every
kind, then assertions on what it wrote.

Whether the capacity model predicts better than V alone needs the notebook's paper-profile runs; here the model
must be fit on every plain-LOOM point of notebook 12's committed results, be written so lib.boundary reads it back
unchanged, predict the held-out runs before they are trained, and apply lib.boundary to the released configs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lib.boundary import FEATURES, Boundary, CapacityModel, load_boundary
from lib.experiments import study
from lib.kit.results import REPO_ROOT, read_table
from lib.paper import RELEASED_CONFIGS

pytestmark = pytest.mark.slow

TINY_14 = {
    "BOOTSTRAP": 4,
    "HELD_OUT_CAPACITY": [["mlp", 16, 160]],
    "HELD_OUT_VISITS": [5, 10],
    "HELD_OUT_DOSE": [],  # multi-cache runs on all 1,437 digits: left to the paper profile (same code path)
    "HELD_OUT_DIMS": [4],
    "REDRAW_STEPS": 40,
    "REDRAW_HIDDEN": 16,
    "REDRAW_EVERY": 1,
    "REFRESH": 0.5,
}
STUDY = REPO_ROOT / "results" / "paper" / "12_noise_table_study"


def test_14_noise_boundary_fits_writes_and_predicts(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("14_noise_boundary", tmp_path / "results", **TINY_14)
    written = json.loads((folder / "capacity_model.json").read_text())
    model = CapacityModel.from_json(written)
    # Fit on every plain-LOOM point of notebook 12 at the boundary's solver, and its domain spans exactly those.
    expected = sum(
        1
        for part in ("dose", "capacity", "dimension")
        for r in read_table(STUDY / f"{part}_ratio.csv")
        if r["plain_loom"] in (True, "True") and r["solver"] == written["solver"]
    )
    new_points = [r for r in read_table(folder / "held_out_ratio.csv") if r["plain_loom"] in (True, "True")]
    assert written["points"] == expected + len(new_points) and expected > 50  # the refit: notebook 12's and the new
    # Used only where the prospective test held: digits alone keep the dimension at 64.
    assert set(written["holds_for"]) <= {"digits", "mixtures"}
    if written["holds_for"] == ["digits"]:
        assert model.domain["dim"] == (64.0, 64.0)
    assert set(model.coef) == set(FEATURES)

    # Leave-one-run-out and held-out scores: both models, sane values.
    cv = {r["model"]: r for r in read_table(folder / "cross_validation.csv")}
    assert set(cv) == {"capacity", "visits alone"}
    for r in cv.values():
        assert 0 <= float(r["leave_one_run_out_log_loss"]) and 0 <= float(r["leave_one_run_out_accuracy"]) <= 1
        assert float(r["in_sample_log_loss"]) <= float(r["leave_one_run_out_log_loss"]) + 1e-9  # fitting sees the run

    # Each held-out plain-LOOM run (one per kind) was predicted, trained and scored.
    predictions = read_table(folder / "held_out_predictions.csv")
    assert sorted(p["task"] for p in predictions) == ["digits-160", "gmm-4d"]
    crossings = read_table(folder / "held_out_crossings.csv")
    assert len(crossings) == len(predictions)
    ratio = [r for r in read_table(folder / "held_out_ratio.csv") if r["plain_loom"] in (True, "True")]
    scores = {(r["model"], r["kind"]): r for r in read_table(folder / "held_out_scores.csv")}
    assert int(scores["capacity", "all"]["points"]) == len(ratio) == 2 + 2
    assert int(scores["capacity", "digits"]["points"]) == 2 and int(scores["capacity", "mixtures"]["points"]) == 2
    by_kind = {
        k: float(scores["capacity", k]["held_out_log_loss"]) <= float(scores["visits alone", k]["held_out_log_loss"])
        for k in ("digits", "mixtures")
    }
    assert written["holds_for"] == [k for k, held in by_kind.items() if held]

    # The released configs: V from lib.boundary's TableRun equals notebook 12's epochs x visits per epoch / caches.
    released = {r["config"]: r for r in read_table(folder / "released_configs.csv")}
    assert set(released) == {k for k, v in RELEASED_CONFIGS.items() if not v.get("reflow")}
    for name, r in released.items():
        cfg = RELEASED_CONFIGS[name]
        v = cfg["epochs"] * study.visits_per_epoch(cfg["flip"]) / cfg["caches"]
        assert float(r["v"]) == pytest.approx(v, rel=0.01), name  # released_steps drops the partial batch
        assert r["basis"].startswith("visits alone") and "dim" in r["outside"]  # all far outside the fitted range
    cifar = read_table(folder / "cifar10_out_of_range.csv")
    assert [float(r["v"]) for r in cifar] == pytest.approx([250, 500 / 3, 125], rel=0.01)  # 1000 epochs / 2 / caches

    # Part 2: every redraw variant trained and scored against minibatch OT; a redraw whose pairing is rebuilt at once
    # starts the next epoch from cheaper stored pairs than a plain redraw, which starts from fresh random ones.
    quality = {r["variant"]: r for r in read_table(folder / "redraw_quality.csv")}
    assert len(quality) == 5 and float(quality["minibatch OT"]["over_ot_midpoint-6"]) == 1.0
    recovery = read_table(folder / "redraw_recovery.csv")
    plain = [float(r["cost_first_epoch_after"]) for r in recovery if not r["variant"].endswith("rebuilt")]
    rebuilt = [float(r["cost_first_epoch_after"]) for r in recovery if r["variant"].endswith("rebuilt")]
    assert len(plain) == len(rebuilt) >= 2
    assert all(b < a for a, b in zip(plain, rebuilt))

    # lib.boundary reads the written model back as fitted, and answers with it inside its range.
    rule = tmp_path / "rule.json"
    rule.write_text((STUDY / "rule.json").read_text())
    loaded = load_boundary(rule, folder / "capacity_model.json")
    assert loaded == Boundary(json.loads(rule.read_text()), model)
    assert math.isfinite(float(written["bootstrap_95"]["v_star_04"][0]))
