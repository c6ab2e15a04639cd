"""Tests of lib.unet: the released state-dict layout, the forward pass, checkpoint loading and its errors.

The four paper UNets are only ever built on the meta device or run at batch 1, so the file stays fast on CPU.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest
import torch

from lib import fabricate, sample, toy
from lib.checkpoints import (
    fetch_released,
    infer_preset,
    load_checkpoint_state,
    load_model,
    load_released,
    load_released_unet,
    unet_state_from_checkpoint,
)
from lib.couplings import make_coupling
from lib.models import MLP, CheckpointError
from lib.train import TrainConfig, train_flow
from lib.unet import UNet, UNetConfig, build_unet, expected_shapes


def _random_weights(model: UNet, seed: int = 0) -> UNet:
    """Fill every parameter with noise so that weight identity and outputs are actually tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def _released_format(model: UNet, extra: dict[str, torch.Tensor] | None = None, step: int = 1234) -> dict:
    """A checkpoint dict laid out like the released ones, saved from a DDP-wrapped backbone."""
    state = {f"module.backbone.{k}": v for k, v in model.state_dict().items()}
    state.update({f"module.{k}": v for k, v in (extra or {}).items()})
    return {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": [0]}]},
        "lr_scheduler": {"base_lrs": [2e-4], "last_epoch": step},
        "global_step": step,
    }


# --- loading checkpoints ------------------------------------------------------------------------------
def test_round_trip_released_format_tiny(tmp_path: Path) -> None:
    model = _random_weights(build_unet("tiny"))
    path = tmp_path / "checkpoint.pt"
    ae = {"ae.scale": torch.tensor([0.18]), "ae.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)}
    torch.save(_released_format(model, extra=ae), path)

    loaded, info = load_released_unet(path)
    assert info["preset"] == "tiny" and info["global_step"] == 1234
    assert info["extra_keys"] == ["ae.scale", "ae.encoder.conv_in.weight"]
    assert not loaded.training
    want, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model.eval()(x, t))


def test_round_trip_released_format_cifar10(tmp_path: Path, released_keys) -> None:
    model = _random_weights(build_unet("cifar10"))
    path = tmp_path / "cifar10.pt"
    torch.save(_released_format(model), path)
    loaded, info = load_released_unet(path)
    assert info["preset"] == "cifar10" and info["num_params"] == int(
        released_keys["configs"]["cifar10"]["num_unet_params"]
    )
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())


def test_prefix_stripping_ddp_compile_and_extras() -> None:
    state = {
        "module._orig_mod.backbone.out.2.bias": torch.zeros(3),
        "module.ae.scale": torch.ones(1),
        "backbone.module.time_embed.0.bias": torch.zeros(4),
    }
    unet, extra = unet_state_from_checkpoint(state)
    assert set(unet) == {"out.2.bias", "time_embed.0.bias"} and extra == ["ae.scale"]
    bare, none = unet_state_from_checkpoint({"module.out.2.bias": torch.zeros(3)})
    assert set(bare) == {"out.2.bias"} and none == []


def test_other_architecture_lists_missing_unexpected_and_mismatched(tmp_path: Path) -> None:
    torch.save(_released_format(build_unet("tiny")), tmp_path / "tiny.pt")
    with pytest.raises(ValueError) as err:  # explicit preset of another architecture
        load_released_unet(tmp_path / "tiny.pt", preset="digits")
    message = str(err.value)
    assert "'digits'" in message and "shape mismatches" in message
    assert "input_blocks.0.0.weight: checkpoint [32, 3, 3, 3] vs model [32, 1, 3, 3]" in message

    other = UNetConfig(32, 3, 3, 32, (1, 2), 2, (2,))  # tiny with two ResBlocks per level
    state = {k: torch.zeros(s) for k, s in expected_shapes(other).items()}
    with pytest.raises(ValueError) as err:  # inference finds no preset and names the closest
        infer_preset(state)
    message = str(err.value)
    assert "Closest is 'tiny'" in message
    assert "22 missing keys:\n    input_blocks.2.0.op.weight" in message
    assert "78 unexpected keys:\n    input_blocks.2.0.in_layers.0.weight" in message
    assert "18 shape mismatches:" in message
    assert "... and 68 more" in message  # long lists are cut to the first ten, with the count


def test_truncated_checkpoint_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save(_released_format(build_unet("digits")), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint.*Re-download"):
        load_released_unet(path)


def test_non_torch_and_lfs_pointer_files_give_clear_errors(tmp_path: Path) -> None:
    html = tmp_path / "html.pt"
    html.write_bytes(b"<!DOCTYPE html><html>Not Found</html>")
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint"):
        load_checkpoint_state(html)
    pointer = tmp_path / "lfs.pt"
    pointer.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        load_checkpoint_state(pointer)


def test_missing_file_and_missing_model_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*nothing.pt"):
        load_released_unet(tmp_path / "nothing.pt")
    torch.save({"ema": {}, "global_step": 3}, tmp_path / "no_model.pt")
    with pytest.raises(CheckpointError, match="expected a dict with 'model'.*'ema'"):
        load_checkpoint_state(tmp_path / "no_model.pt")


def test_objects_beyond_weights_are_refused_with_no_way_around(tmp_path: Path) -> None:
    checkpoint = _released_format(build_unet("digits"))
    checkpoint["lr_scheduler"] = {"lr_lambda": functools.partial(min, 1.0)}  # not loadable weights-only
    torch.save(checkpoint, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="never unpickles.*state_dict"):
        load_checkpoint_state(tmp_path / "pickled.pt")
    assert "trusted" not in inspect.signature(load_checkpoint_state).parameters  # no opt-in to unpickling


def test_loading_from_memory_does_not_share_storage() -> None:
    source = _random_weights(build_unet("digits"))
    loaded, info = load_released_unet(source.state_dict(), preset="digits")
    assert info["global_step"] is None and info["extra_keys"] == []
    with torch.no_grad():
        next(loaded.parameters()).add_(1.0)
    assert not torch.equal(next(loaded.parameters()), next(source.parameters()))


CONFIG = TrainConfig(steps=4, batch_size=8, seed=0, progress=False, ema_decay=0.5)


def trained_checkpoint(tmp_path: Path, model: torch.nn.Module, data: torch.Tensor):
    path = tmp_path / "checkpoint.pt"
    result = train_flow(model, data, make_coupling("loom", len(data)), CONFIG, checkpoint=path)
    return path, result


def test_mlp_checkpoint_loads_its_ema_weights(tmp_path: Path) -> None:
    path, result = trained_checkpoint(tmp_path, MLP(2, hidden=16, depth=2), toy.sample_toy("moons", 32))
    loaded = sample.load_model(path)
    assert loaded.shape == (2,) and loaded.info["preset"] == "mlp" and loaded.info["global_step"] == 4
    x, t = torch.randn(5, 2), torch.rand(5)
    assert torch.equal(loaded.model(x, t), result.ema(x, t))


def test_unet_checkpoint_and_released_format_load_the_right_preset(tmp_path: Path) -> None:
    data = torch.rand(16, 1, 8, 8) * 2 - 1
    path, result = trained_checkpoint(tmp_path, build_unet("digits"), data)
    loaded = sample.load_model(path)
    assert loaded.info["preset"] == "digits" and loaded.shape == (1, 8, 8)
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    assert torch.allclose(loaded.model(x, t), result.ema(x, t))
    released = tmp_path / "released.pt"
    torch.save(
        {
            "model": {f"module.backbone.{k}": v for k, v in result.ema.state_dict().items()},
            "optimizer": {},
            "lr_scheduler": {},
            "global_step": 7,
        },
        released,
    )
    loaded = sample.load_model(released)
    assert loaded.info["kind"] == "released" and loaded.info["global_step"] == 7
    assert torch.allclose(loaded.model(x, t), result.ema(x, t))


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"backbone.input_blocks.0.0.weight": torch.zeros(7, 3, 3, 3)}, "global_step": 1}, foreign)
    with pytest.raises(CheckpointError):
        sample.load_model(foreign)


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
