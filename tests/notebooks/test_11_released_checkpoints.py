"""papermill smoke run of 11_released_checkpoints on fake releases in a fabricated Hugging Face cache: the fetch,
load (the latent release with its decoder) and evaluate path, every row beside the paper's."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib.fabricate import FAKE_NOTE
from lib.kit.results import read_table

pytestmark = pytest.mark.slow


def test_11_released_checkpoints_fake_reflow_and_latent_releases(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny(
        "11_released_checkpoints",
        tmp_path,
        RUNS_DIR=str(tmp_path / "runs"),
        RELEASES=["cifar10_reflow", "ffhq256"],
        NUM_FID_SAMPLES=8,
        FAKE_REFERENCE=8,
        GRID_IMAGES=4,
        FID_PROTOCOL="paper-torcheval",
    )
    rows = read_table(folder / "released_vs_paper.csv")
    assert [(r["dataset"], r["release"], r["method"], r["solver"]) for r in rows] == [
        ("cifar10", "cifar10_reflow", "LOOM-CFM + 1 Reflow", s) for s in ("euler-1", "euler-2", "midpoint-1")
    ] + [("ffhq256_latent", "ffhq256", "LOOM-CFM", s) for s in ("midpoint-1", "midpoint-2", "midpoint-4", "dopri5")]
    assert [float(r["nfe"]) for r in rows[:-1]] == [1, 2, 2, 2, 4, 8] and float(rows[-1]["nfe"]) >= 6
    dopri = rows[-1]  # true network calls and the solver's steps, both recorded
    assert float(dopri["nfe"]) == 6 * float(dopri["solver_steps_attempted"]) + 2
    assert all(r["fid_protocol"] == "paper-torcheval" and r["num_reference"] == "8" for r in rows)
    assert [float(r["paper_fid"]) for r in rows] == [7.63, 4.49, 4.49, 14.89, 6.76, 5.50, 4.77]
    assert all(r["paper_provenance"].startswith("secondary") for r in rows)
    assert all(r["release_weights"] == FAKE_NOTE and r["kind"] == "released" for r in rows)
    assert all(float(r["fid"]) >= 0 and r["feature_extractor"].endswith("not_inception") for r in rows)
    assert all("hf_cache/models--cvg-unibe--loom-cfm_" in r["checkpoint"] for r in rows)  # through the hub cache
    releases = {r["release"]: r for r in read_table(folder / "releases.csv")}
    assert releases["ffhq256"]["example_shape"] == "[4, 8, 8]" and releases["ffhq256"]["image_shape"] == "[3, 64, 64]"
    assert releases["ffhq256"]["latent"] == "True" and releases["cifar10_reflow"]["image_shape"] == "[3, 32, 32]"
    assert {"samples_cifar10_reflow.png", "samples_ffhq256.png"} <= {p.name for p in folder.iterdir()}


def test_11_closing_text_sets_paper_numbers_beside_real_releases_only(notebook_definitions) -> None:
    """Fake releases (random tiny weights) are never set beside the paper's numbers; real ones are."""
    definitions = notebook_definitions("11_released_checkpoints")
    rows = [
        {"release": "cifar10", "solver": s, "nfe": n, "fid": 3.0, "paper_fid": 2.5, "release_weights": FAKE_NOTE}
        for s, n in (("midpoint-2", 4), ("dopri5", 142))
    ]
    definitions["FAKE_RELEASES"] = True
    fake = definitions["closing_text"](rows)
    assert f"Weights: {FAKE_NOTE}." in fake and "cifar10: midpoint-2 (NFE 4): 3, dopri5 (NFE 142): 3." in fake
    definitions["FAKE_RELEASES"] = False
    assert "midpoint-2 (NFE 4): 3 (paper 2.5)" in definitions["closing_text"](rows)
