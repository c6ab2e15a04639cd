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


TINY_05 = {"FAKE_TRAIN": 32, "FAKE_TEST": 16, "STEPS": 4, "BATCH_SIZE": 8, "SOLVERS": ["euler-1", "midpoint-1"],
           "NUM_FID_SAMPLES": 16, "CURVATURE_PATHS": 8, "GRID_IMAGES": 4, "STEP_BENCH_BATCH": 16, "STEP_BENCH_STEPS": 2}


def test_05_cifar10_trains_every_row_through_torchrun(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("05_cifar10", tmp_path, RUNS_DIR=str(tmp_path / "runs"),
                      ROWS=["I-CFM", "LOOM-CFM"], **TINY_05)
    rows = read_table(folder / "fid_vs_paper.csv")
    assert [(r["method"], r["solver"], float(r["nfe"])) for r in rows] == [
        ("I-CFM", "euler-1", 1.0), ("I-CFM", "midpoint-1", 2.0), ("LOOM-CFM", "euler-1", 1.0), ("LOOM-CFM", "midpoint-1", 2.0)]
    assert all(float(r["fid"]) >= 0 and r["feature_extractor"].endswith("not_inception") for r in rows)
    history = read_table(folder / "training_history.csv")
    assert {r["method"] for r in history} == {"I-CFM", "LOOM-CFM"}
    assert all(int(r["swaps"]) == 0 for r in history if r["method"] == "I-CFM")
    [checkpoint] = (tmp_path / "runs").glob("loomcfm-*/checkpoint.pt")  # the row's run, keyed by settings and code
    assert checkpoint.is_file()
    assert len(read_table(folder / "curvature_per_step.csv")) == 2 * 19
    steps = read_table(folder / "training_step_cost.csv")
    assert [r["part"] for r in steps][::2] == ["independent: training step", "minibatch_ot: training step",
                                               "loom: training step"]


def test_05_cifar10_evaluates_a_released_format_checkpoint(tmp_path: Path, run_tiny) -> None:
    from lib.unet import build_unet

    released = tmp_path / "loom-cfm_cifar10.pt"
    torch.manual_seed(0)
    state = {f"backbone.{k}": v for k, v in build_unet("tiny").state_dict().items()}
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "global_step": 123}, released)
    folder = run_tiny("05_cifar10", tmp_path, RUNS_DIR=str(tmp_path / "runs"), EVAL_CHECKPOINT=str(released),
                      FID_PROTOCOL="paper-torcheval", **TINY_05)
    rows = read_table(folder / "fid_vs_paper.csv")
    assert {r["method"] for r in rows} == {"loom-cfm_cifar10"}
    assert all(r["kind"] == "released" and r["global_step"] == "123" for r in rows)
    # The paper's protocol against the 16 fabricated test images, drawn 16 times with replacement.
    assert all(r["fid_protocol"] == "paper-torcheval" and r["library"] == "torcheval" and r["num_reference"] == "16"
               for r in rows)
    assert [(r["solver_steps_accepted"], r["solver_steps_attempted"]) for r in rows] == [("1.0", "1.0")] * 2
    assert not (folder / "training_history.csv").exists()
