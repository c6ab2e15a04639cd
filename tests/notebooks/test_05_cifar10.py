"""papermill smoke runs: each notebook with tiny parameters, then assertions on the metrics it wrote.

nbval (``pytest notebooks --nbval-lax``) separately runs the committed quick defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lib.kit.results import read_table

pytestmark = pytest.mark.slow


TINY_05 = {
    "FAKE_TRAIN": 32,
    "FAKE_TEST": 16,
    "STEPS": 4,
    "BATCH_SIZE": 8,
    "SOLVERS": ["euler-1", "midpoint-1"],
    "NUM_FID_SAMPLES": 16,
    "CURVATURE_PATHS": 8,
    "GRID_IMAGES": 4,
    "STEP_BENCH_BATCH": 16,
    "STEP_BENCH_STEPS": 2,
    "GRID_CACHES": [2],
    "GRID_BATCH_SIZES": [],
    "GRID_SOLVERS": ["euler-1"],
    "KEEP_CHECKPOINTS_EVERY": 2,
    "STEP_FID_SOLVER": "euler-1",
    "STEP_FID_SAMPLES": 8,
    "GAP_EPOCHS": 60,
    "GAP_SUBSETS": [8, 64],
    "GAP_REPEATS": 2,
}


def test_05_cifar10_trains_every_row_through_torchrun(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("05_cifar10", tmp_path, RUNS_DIR=str(tmp_path / "runs"), ROWS=["I-CFM", "LOOM-CFM"], **TINY_05)
    rows = read_table(folder / "fid_vs_paper.csv")
    assert [(r["method"], r["solver"], float(r["nfe"])) for r in rows] == [
        ("I-CFM", "euler-1", 1.0),
        ("I-CFM", "midpoint-1", 2.0),
        ("LOOM-CFM", "euler-1", 1.0),
        ("LOOM-CFM", "midpoint-1", 2.0),
        ("LOOM-CFM 2 caches bs8", "euler-1", 1.0),
    ]  # Table 5's grid around LOOM-CFM (1 cache, OT batch 8)
    assert all(float(r["fid"]) >= 0 and r["feature_extractor"].endswith("not_inception") for r in rows)
    history = read_table(folder / "training_history.csv")
    assert {r["method"] for r in history} == {"I-CFM", "LOOM-CFM", "LOOM-CFM 2 caches bs8"}
    assert all(int(r["swaps"]) == 0 for r in history if r["method"] == "I-CFM")
    [checkpoint] = (tmp_path / "runs").glob("loomcfm-*/checkpoint.pt")  # the row's run, keyed by settings and code
    assert checkpoint.is_file()
    assert (folder / "training_pairing.png").is_file()
    [grid_run] = (tmp_path / "runs").glob("loomcfm_2_caches_bs8-*")
    grid_config = json.loads((grid_run / "config.json").read_text())
    assert (grid_config["coupling"], grid_config["caches"], grid_config["batch_size"]) == ("loom", 2, 8)
    # FID along training from the checkpoints kept every 2 steps, for the curve rows only (not the grid's).
    steps = read_table(folder / "fid_vs_step.csv")
    assert [(r["method"], int(r["step"]), r["solver"]) for r in steps] == [
        (m, s, "euler-1") for m in ("I-CFM", "LOOM-CFM") for s in (2, 4)
    ]
    assert all(float(r["fid"]) >= 0 and int(r["global_step"]) == int(r["step"]) for r in steps)
    assert (checkpoint.parent / "checkpoint_step00000002.pt").is_file()
    assert not list(grid_run.glob("checkpoint_step*"))
    # The gap of a seed table converged without training, on exact subsets (64 slots = the whole table here).
    gaps = {(r["table"], int(r["size"])): float(r["gap"]) for r in read_table(folder / "gap_by_subset_size.csv")}
    assert set(gaps) == {(t, n) for t in ("initial", "converged") for n in (8, 64)}
    assert 0 <= gaps["converged", 64] < gaps["initial", 64] and min(gaps.values()) >= 0
    assert int(read_table(folder / "gap_converging.csv")[-1]["swaps"]) == 0
    assert len(read_table(folder / "curvature_per_step.csv")) == 2 * 19
    steps = read_table(folder / "training_step_cost.csv")
    couplings = ["independent", "minibatch_ot", "loom"]  # each coupling's full training step, paired both ways
    assert [(r["coupling"], r["pairing"]) for r in steps] == [
        (c, mode) for c in couplings for mode in ("pipelined", "synchronous")
    ]
    assert all(float(r["step_ms"]) > 0 and 0 < float(r["share_of_step"]) for r in steps)


def test_05_cifar10_evaluates_a_released_format_checkpoint(tmp_path: Path, run_tiny) -> None:
    from lib.unet import build_unet

    released = tmp_path / "loom-cfm_cifar10.pt"
    torch.manual_seed(0)
    state = {f"backbone.{k}": v for k, v in build_unet("tiny").state_dict().items()}
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "global_step": 123}, released)
    folder = run_tiny(
        "05_cifar10",
        tmp_path,
        RUNS_DIR=str(tmp_path / "runs"),
        EVAL_CHECKPOINT=str(released),
        FID_PROTOCOL="paper-torcheval",
        **TINY_05,
    )
    rows = read_table(folder / "fid_vs_paper.csv")
    assert {r["method"] for r in rows} == {"loom-cfm_cifar10"}
    assert all(r["kind"] == "released" and r["global_step"] == "123" for r in rows)
    # The paper's protocol against the 16 fabricated test images, drawn 16 times with replacement.
    assert all(
        r["fid_protocol"] == "paper-torcheval" and r["library"] == "torcheval" and r["num_reference"] == "16"
        for r in rows
    )
    assert [(r["solver_steps_accepted"], r["solver_steps_attempted"]) for r in rows] == [("1.0", "1.0")] * 2
    assert not (folder / "training_history.csv").exists() and not (folder / "fid_vs_step.csv").exists()


def test_05_draws_the_gap_at_scale_one_line_per_table(notebook_definitions) -> None:
    """Notebook 05's gap figure: swaps per epoch, and one gap curve per seed table (initial, converged)."""
    gaps = [{"table": t, "size": n, "gap": g} for t, g in (("initial", 0.3), ("converged", 0.01)) for n in (8, 64)]
    figure = notebook_definitions("05_cifar10")["subset_gap_figure"]
    fig = figure([{"epoch": 1, "swaps": 5}, {"epoch": 2, "swaps": 0}], gaps)
    assert len(fig.axes[1].lines) == 2
