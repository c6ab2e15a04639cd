"""papermill smoke run of notebook 09 (performance) with tiny parameters, then assertions on the tables it wrote.

Timings are not asserted (speed is reported in results/, never tested); what must hold is that every table and
figure is written, every part is timed, and the conclusion is the one built from the written rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.experiments import benchmarks
from lib.kit.results import read_table

pytestmark = pytest.mark.slow


TINY_09 = {
    "SHAPES": [[2], [3, 8, 8]],
    "BATCH_SIZES": [8, 16],
    "NUM_EXAMPLES": 64,
    "STEPS": 1,
    "WARMUP": 0,
    "ASSIGN_SIZES": [8, 16, 32],
    "ASSIGN_STEPS": 1,
    "FIT_MIN_SIZE": 8,
    "SOLVERS": ["euler-1", "midpoint-1"],
    "SAMPLE_BATCH": 4,
    "SAMPLE_STEPS": 1,
    "STEP_BATCH": 8,
    "STEP_STEPS": 1,
    "SHARE_BATCH_SIZES": [8, 16],
    "SHARE_STEPS": 1,
    "TABLE_EXAMPLES": {"cifar10": 1000, "imagenet32": 2000},
    "TRAIN_BATCH_SIZES": [8, 16],
    "TRAIN_STEPS": 1,
    "RANKS": [1, 2],
    "PER_RANK_BATCH": 8,
    "RANK_SHAPE": [3, 4, 4],
}


def test_09_performance_writes_every_table_and_its_conclusion(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("09_performance", tmp_path, **TINY_09)
    run = json.loads((folder / "run.json").read_text())
    for figure in ("coupling_breakdown", "assignment_fit", "training_steps", "share_and_throughput"):
        assert {f"{figure}.png", f"{figure}.pdf"} <= set(run["files"])

    breakdown = read_table(folder / "coupling_breakdown.csv")
    assert [(r["shape"], int(r["batch_size"])) for r in breakdown] == [("2", 8), ("2", 16), ("3x8x8", 8), ("3x8x8", 16)]
    timed = [benchmarks.column(p) for p in benchmarks.LOOM_PARTS] + ["independent_ms", "minibatch_ot_ms", "loom_ms"]
    assert all(float(r[c]) > 0 for r in breakdown for c in timed)

    assignment = read_table(folder / "assignment_scaling.csv")
    assert [int(r["m"]) for r in assignment] == [8, 16, 32] and all(float(r["assignment_ms"]) > 0 for r in assignment)
    fit = read_table(folder / "assignment_fit.csv")[0]
    refit = benchmarks.fit_power_law([8, 16, 32], [float(r["assignment_ms"]) for r in assignment])
    assert abs(float(fit["exponent"]) - refit.exponent) < 1e-9 and int(fit["points"]) == 3

    sampling = read_table(folder / "sampling_throughput.csv")
    assert [(r["solver"], int(r["nfe"])) for r in sampling] == [("euler-1", 1), ("midpoint-1", 2)]
    training = read_table(folder / "training_step_per_preset.csv")
    assert [(r["preset"], r["coupling"], r["pairing"]) for r in training] == [
        ("digits", c, p) for c in benchmarks.COUPLINGS for p in ("pipelined", "synchronous")
    ]
    assert all(float(r["peak_rss_mib"]) > 0 for r in training)

    steps = read_table(folder / "training_steps.csv")
    assert {(r["model"], int(r["batch_size"])) for r in steps} == {
        (m, b) for m in ("digits UNet", "2-D MLP") for b in (8, 16)
    }
    assert len(steps) == 2 * 2 * 6 and all(float(r["step_ms"]) > 0 and r["torch_threads"] == "1" for r in steps)
    ratios = read_table(folder / "training_step_ratios.csv")
    assert len(ratios) == 2 * 2 * 3 and all(float(r["pipelined_over_independent"]) > 0 for r in ratios)
    ranks = read_table(folder / "global_batch_assignment.csv")
    assert [(int(r["ranks"]), int(r["m"])) for r in ranks] == [(1, 8), (2, 16)]
    released = read_table(folder / "released_comparison.csv")
    assert [r["torch_threads"] for r in released] == ["1", "2", "2"]
    assert all("official_measurements.md" in r["source"] and float(r["kit_loom_ms"]) > 0 for r in released)

    share = read_table(folder / "coupling_share.csv")
    assert [int(r["batch_size"]) for r in share] == [8, 16] and all(0 < float(r["coupling_share"]) < 1 for r in share)
    memory = {r["dataset"]: r for r in read_table(folder / "seed_table_memory.csv")}
    assert float(memory["cifar10"]["seed_bytes_per_example"]) == 32 and memory["imagenet32"]["num_caches"] == "1"

    conclusion = json.loads((folder / "conclusion.json").read_text())
    assert conclusion["share_last"] == {"batch_size": 16, "share": float(share[-1]["coupling_share"])}
    assert abs(conclusion["assignment_exponent"] - refit.exponent) < 1e-9
    assert conclusion["text"] == (folder / "conclusion.md").read_text()
    assert f"at batch {share[0]['batch_size']}" in conclusion["text"] and "not measured" in conclusion["text"]
    assert "Pairing ahead of the step" in conclusion["text"] and len(conclusion["pipelined"]) == 4
