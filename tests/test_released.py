"""Released checkpoints through huggingface_hub, tested offline on a fake local hub cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib import fabricate, paper, sample
from lib.checkpoints import fetch_released, load_model, load_released
from lib.experiments import pipeline
from lib.models import CheckpointError
from lib.solvers import parse_solver


def test_fetch_from_the_cache_offline_and_load_into_the_preset(tmp_path: Path, monkeypatch) -> None:
    path = fabricate.write_fake_release(tmp_path, "cifar10", preset="cifar10")
    assert fetch_released("cifar10", cache_dir=tmp_path, offline=True) == path
    loaded = load_released("cifar10", cache_dir=tmp_path, offline=True)
    assert loaded.info["preset"] == "cifar10" and loaded.info["global_step"] == 11 and loaded.shape == (3, 32, 32)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert load_model("released:cifar10").info["kind"] == "released"


def test_a_missing_release_says_how_to_place_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="hf download cvg-unibe/loom-cfm_imagenet64"):
        fetch_released("imagenet64", cache_dir=tmp_path, offline=True)
    with pytest.raises(ValueError, match="unknown released checkpoint 'cifar100'"):
        fetch_released("cifar100")


def test_a_release_of_the_wrong_architecture_is_refused(tmp_path: Path) -> None:
    fabricate.write_fake_release(tmp_path, "imagenet32", preset="cifar10")  # a CIFAR-10 model in its place
    with pytest.raises(CheckpointError, match="expected 'imagenet32'"):
        load_released("imagenet32", cache_dir=tmp_path, offline=True)


def test_fakes_load_only_when_their_preset_is_named(tmp_path: Path) -> None:
    fabricate.write_fake_release(tmp_path, "imagenet64")
    with pytest.raises(CheckpointError, match="loads as preset 'tiny', expected 'imagenet64'"):
        load_released("imagenet64", cache_dir=tmp_path, offline=True)
    loaded = load_released("imagenet64", cache_dir=tmp_path, offline=True, preset="tiny")
    assert loaded.decoder is None and loaded.shape == (3, 32, 32)
    x, nfe = next(sample.generate(loaded, 2, "euler-2"))
    z = sample.noise_for_images(loaded, 0, 2)
    assert nfe == 2 and (x - z).abs().mean() > 1e-3  # a non-zero velocity: the samples moved off the noise


def test_the_fake_latent_release_decodes_through_its_own_autoencoder(tmp_path: Path) -> None:
    fabricate.write_fake_release(tmp_path, "ffhq256", seed=3)
    loaded = load_released("ffhq256", cache_dir=tmp_path, offline=True, preset=fabricate.FAKE_PRESETS["ffhq256"])
    assert loaded.info["preset"] == "tiny_latent" and loaded.shape == (4, 8, 8) and loaded.decoder is not None
    x, _ = next(sample.generate(loaded, 3, "midpoint-1"))
    images = sample.to_images(loaded, x)
    assert images.shape == (3, 3, 64, 64) and images.abs().max() <= 1 and images.std() > 0


def test_paper_evaluation_settings_match_the_paper_rows() -> None:
    """Each release is evaluated at exactly the fixed-grid NFEs the paper reports for its row, plus dopri5."""
    assert set(paper.PAPER_EVALUATION) == set(paper.RELEASED_REPOS)
    for name, spec in paper.PAPER_EVALUATION.items():
        rows = paper.paper_rows(spec.table, spec.dataset)
        reported = {(r["solver"], int(r["nfe"])) for r in rows if r["method"] == spec.method and r["solver"] != "dopri5"}
        ours = {parse_solver(s).expected_nfe for s in spec.solvers if s != "dopri5"}
        assert ours == {nfe for _, nfe in reported}, name
        assert all(solver in ("midpoint", "euler", "unknown") for solver, _ in reported)
        assert ("dopri5" in spec.solvers) == any(r["method"] == spec.method and r["solver"] == "dopri5" for r in rows)
    assert paper.PAPER_EVALUATION["cifar10_reflow"].grid_solver == "midpoint-1"
    assert paper.PAPER_EVALUATION["ffhq256"].grid_solver == "midpoint-4"


def test_evaluating_a_release_without_its_reference_names_the_dataset(tmp_path: Path) -> None:
    fabricate.write_fake_release(tmp_path, "imagenet64")
    loaded = load_released("imagenet64", cache_dir=tmp_path, offline=True, preset="tiny")
    with pytest.raises(ValueError, match=r"no FID reference for dataset\(s\) \['imagenet64'\]"):
        pipeline.evaluate_releases({"imagenet64": loaded}, 4, {"imagenet32": "imagenet32_train"}, {}, seed=0,
                                   device="cpu")
