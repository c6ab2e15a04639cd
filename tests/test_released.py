"""Released checkpoints through huggingface_hub, tested offline on a fake local hub cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib import released, sample
from lib.unet import CheckpointError, build_unet

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo: str, preset: str) -> Path:
    """The Hugging Face cache layout (models--org--name/refs/main, snapshots/<commit>/) holding one checkpoint."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    torch.manual_seed(0)
    state = {f"backbone.{k}": v for k, v in build_unet(preset).state_dict().items()}
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "global_step": 11}, snapshot / "last.pt")
    return snapshot / "last.pt"


def test_fetch_from_the_cache_offline_and_load_into_the_preset(tmp_path: Path, monkeypatch) -> None:
    path = fake_hub_cache(tmp_path, released.RELEASED_REPOS["cifar10"], "cifar10")
    assert released.fetch_released("cifar10", cache_dir=tmp_path, offline=True) == path
    loaded = released.load_released("cifar10", cache_dir=tmp_path, offline=True)
    assert loaded.info["preset"] == "cifar10" and loaded.info["global_step"] == 11 and loaded.shape == (3, 32, 32)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert sample.load_model("released:cifar10").info["kind"] == "released"


def test_a_missing_release_says_how_to_place_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="huggingface-cli download cvg-unibe/loom-cfm_imagenet64"):
        released.fetch_released("imagenet64", cache_dir=tmp_path, offline=True)
    with pytest.raises(ValueError, match="unknown released checkpoint 'cifar100'"):
        released.fetch_released("cifar100")


def test_a_release_of_the_wrong_architecture_is_refused(tmp_path: Path) -> None:
    fake_hub_cache(tmp_path, released.RELEASED_REPOS["imagenet32"], "cifar10")  # a CIFAR-10 model in its place
    with pytest.raises(CheckpointError, match="expected 'imagenet32'"):
        released.load_released("imagenet32", cache_dir=tmp_path, offline=True)
