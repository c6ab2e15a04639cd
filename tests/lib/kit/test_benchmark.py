"""python -m lib.kit.benchmark: the coupling benchmark written to results/ with its run.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.kit import benchmark
from lib.kit.results import read_table


def test_benchmarks_cli_writes_the_targets_with_their_tables(tmp_path: Path) -> None:
    tiny = ["--num-examples", "64", "--batch-size", "8", "--steps", "1", "--unet-batches", "4", "--mlp-batches", "8"]
    tiny += ["--ranks", "0", "--assign-sizes", "8", "1024", "--assign-steps", "1"]
    assert benchmark.main([*tiny, "--training-steps", "1", "--block", "1", "--results-dir", str(tmp_path)]) == 0
    folder = tmp_path / "quick" / "benchmarks"
    summary = json.loads((folder / "coupling_cost.json").read_text())
    assert summary["batch_size"] == 8 and summary["ms_loom"] > 0 and summary["torch_threads"] == 1
    targets = json.loads((folder / "targets.json").read_text())
    assert [(t["model"], t["batch_size"], t["target"]) for t in targets["training"]] == [
        ("digits UNet", 4, 1.05),
        ("2-D MLP", 8, 1.10),
    ]
    assert all(t["met"] == (t["loom_pipelined_over_independent"] <= t["target"]) for t in targets["training"])
    assert {"run.json", "training_steps.csv", "training_step_ratios.csv"} <= {p.name for p in folder.iterdir()}
    # Issue 21: which solver and noise source ran, the assignment at m = 1024 and the released code's ratio.
    assert targets["assignment_solver"] == summary["assignment_solver"] == "lapjv"  # 3x32x32 examples
    assert json.loads((folder / "run.json").read_text())["assignment_solver"].startswith("lapjv")
    assert summary["loom_noise"] == "memory"  # 64 rows of 3x32x32 noise fit the default budget
    assert [(t["coupling"], t["target"]) for t in summary["coupling_targets"]] == [("loom", 1.3), ("minibatch_ot", 1.2)]
    assert targets["assignment"]["m"] == 1024 and targets["assignment"]["met"] == (targets["assignment"]["ms"] <= 40)
    assert targets["released"]["met"] == (targets["released"]["released_over_kit_low"] >= 100)
    assert all(r["same_permutation"] == "True" for r in read_table(folder / "assignment.csv"))


@pytest.mark.slow
def test_the_rank_data_timing_runs_under_torchrun() -> None:
    """Two gloo ranks time holding the global batch's data: fetched whole by each rank vs slices all-gathered."""
    rows = benchmark.time_rank_data_under_torchrun(ranks=2, batch_size=8, steps=2)
    assert [(r["dataset"], r["shape"], r["ranks"], r["global_batch"]) for r in rows] == [
        ("digits (in memory)", "1x8x8", 2, 16),
        ("3x32x32 HDF5 (on disk)", "3x32x32", 2, 16),
    ]
    assert all(r["fetch_ms"] > 0 and r["gather_ms"] > 0 for r in rows)


def test_bad_numbers_and_devices_are_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, message in (
        (["--steps", "0"], "--steps: must be a positive integer, got 0"),
        (["--batch-size", "-8"], "--batch-size: must be a positive integer, got -8"),
        (["--num-examples", "4", "--batch-size", "8"], "--batch-size 8 exceeds --num-examples 4"),
        (["--device", "cuda"], "no usable CUDA GPU; pass --device cpu"),
    ):
        assert benchmark.main([*argv, "--results-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "quick").exists()
