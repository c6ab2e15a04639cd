"""papermill smoke run of notebooks/07_ffhq_latent.ipynb with tiny parameters, then assertions on what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.kit.results import portable, read_table

pytestmark = pytest.mark.slow


TINY_07 = {
    "FAKE_IMAGES": 16,
    "ENCODE_BATCH": 8,
    "STEPS": 3,
    "BATCH_SIZE": 8,
    "SOLVERS": ["midpoint-1", "midpoint-2"],
    "NUM_FID_SAMPLES": 8,
    "CURVATURE_PATHS": 4,
    "GRID_IMAGES": 4,
}


def test_07_ffhq_latent_encodes_trains_and_scores_decoded_samples(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("07_ffhq_latent", tmp_path, RUNS_DIR=str(tmp_path / "runs"), **TINY_07)
    latents = json.loads((folder / "latents.json").read_text())
    assert latents["examples"] == 2 * 16 and latents["flipped_copies"] and latents["latent_shape"] == [4, 8, 8]
    assert latents["scale"] > 0 and latents["autoencoder"] == portable(
        tmp_path / "runs" / "autoencoder", tmp_path.parent
    )
    rows = read_table(folder / "fid_vs_paper.csv")
    assert [(r["method"], r["solver"], float(r["nfe"])) for r in rows] == [
        ("I-CFM", "midpoint-1", 2.0),
        ("I-CFM", "midpoint-2", 4.0),
        ("LOOM-CFM", "midpoint-1", 2.0),
        ("LOOM-CFM", "midpoint-2", 4.0),
    ]
    assert all(r["decoded_shape"] == "3x64x64" and r["preset"] == "tiny_latent" for r in rows)
    assert all(float(r["fid"]) >= 0 and r["feature_extractor"].endswith("not_inception") for r in rows)
    # Our LOOM-CFM rows sit beside the paper's Table 3 numbers at the same NFE; I-CFM has none there.
    assert [r["paper_fid"] for r in rows] == ["", "", "14.89", "6.76"]
    assert {r["method"] for r in read_table(folder / "paper_table3.csv")} >= {"LOOM-CFM", "LFM-ADM", "LDM"}
    assert {r["method"] for r in read_table(folder / "training_history.csv")} == {"I-CFM", "LOOM-CFM"}
    assert len(read_table(folder / "curvature_per_step.csv")) == 2 * 19
    assert (folder / "sample_grids.png").is_file() and (folder / "fid_vs_nfe_and_curvature.png").is_file()
    assert (folder / "training_pairing.png").is_file()
