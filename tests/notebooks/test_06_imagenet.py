"""papermill smoke run of 06_imagenet: fabricated .npz batches -> data_prep/imagenet.py shards -> two rows trained
through torchrun -> FID beside Table 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.kit.results import read_table

pytestmark = pytest.mark.slow


def test_06_imagenet_from_npz_batches_to_table_2(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny(
        "06_imagenet",
        tmp_path,
        RUNS_DIR=str(tmp_path / "runs"),
        FAKE_BATCHES=[12, 12],
        FAKE_VAL=16,
        SHARD_SIZE=10,
        STEPS=3,
        BATCH_SIZE=8,
        SOLVERS=["euler-1", "midpoint-2"],
        NUM_FID_SAMPLES=8,
        CURVATURE_PATHS=4,
        GRID_IMAGES=4,
        KEEP_CHECKPOINTS_EVERY=2,
        STEP_FID_SOLVER="euler-1",
        STEP_FID_SAMPLES=8,
    )
    data = json.loads((folder / "data.json").read_text())
    assert data["fabricated"] and data["train_shards"] == 3 and data["train_examples_with_flips"] == 48
    assert (
        data["image_shape"] == [3, 32, 32] and len(list((tmp_path.parent / data["fid_reference"]).glob("*.png"))) == 16
    )
    rows = read_table(folder / "fid_vs_paper.csv")
    assert [(r["method"], r["solver"], float(r["nfe"])) for r in rows] == [
        ("w/o saving local reassignments", "euler-1", 1.0),
        ("w/o saving local reassignments", "midpoint-2", 4.0),
        ("LOOM-CFM", "euler-1", 1.0),
        ("LOOM-CFM", "midpoint-2", 4.0),
    ]
    assert {r["dataset"] for r in rows} == {"imagenet32"}
    assert [r["paper_fid"] for r in rows] == ["", "", "", "13.47"]  # Table 2, LOOM-CFM at midpoint NFE 4
    assert all(float(r["fid"]) >= 0 and r["feature_extractor"].endswith("not_inception") for r in rows)
    [config_file] = (tmp_path / "runs").glob("loomcfm-*/config.json")  # the row's run, keyed by settings and code
    config = json.loads(config_file.read_text())
    assert config["dataset"] == "hdf5" and config["root"].endswith("imagenet32/train") and config["num_examples"] == 48
    assert {r["method"] for r in read_table(folder / "training_history.csv")} == {
        "w/o saving local reassignments",
        "LOOM-CFM",
    }
    assert len(read_table(folder / "curvature_per_step.csv")) == 2 * 19
    assert (folder / "sample_grids.png").is_file() and (folder / "training_pairing.png").is_file()
    steps = read_table(folder / "fid_vs_step.csv")  # the checkpoints kept at step 2 (3 is not a multiple of 2)
    assert [(r["method"], int(r["step"])) for r in steps] == [("w/o saving local reassignments", 2), ("LOOM-CFM", 2)]
    assert (
        all(float(r["fid"]) >= 0 and r["dataset"] == "imagenet32" for r in steps)
        and (folder / "fid_vs_step.png").is_file()
    )
