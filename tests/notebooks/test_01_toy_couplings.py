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


def test_01_toy_couplings(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("01_toy_couplings", tmp_path, NUM_PATHS=16, DATASET_SIZE=256, TRAIN_STEPS=300,
                      BATCH_SIZE=64, POLYGON_N=6, POLYGON_EPOCHS=5)
    straight = {r["paths"]: float(r["straightness"]) for r in read_table(folder / "fig1_straightness.csv")}
    assert straight["trained, loom coupling"] < straight["trained, independent coupling"]
    fig2 = json.loads((folder / "fig2_local_reassignment.json").read_text())
    assert fig2["pairs_changed_outside_batch"] == 0
    polygon = read_table(folder / "fig5_polygon.csv")
    assert [int(r["batch_size"]) for r in polygon] == list(range(2, 7))
    assert abs(float(polygon[-1]["final_cost"]) - float(polygon[-1]["global_optimum"])) < 1e-6
    assert {"fig1_gaussian_paths.png", "fig1_gaussian_paths.pdf"} <= {p.name for p in folder.iterdir()}
