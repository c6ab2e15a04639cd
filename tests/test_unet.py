"""Tests of lib.unet: the released state-dict layout, the forward pass, checkpoint loading and its errors.

The four paper UNets are only ever built on the meta device or run at batch 1, so the file stays fast on CPU.
"""

from __future__ import annotations

import hashlib
import json
import functools
import math
import os
from pathlib import Path

import pytest
import torch

from lib.checkpoints import infer_preset, load_checkpoint_state, load_released_unet, unet_state_from_checkpoint
from lib.models import CheckpointError, timestep_embedding
from lib.unet import PAPER_PRESETS, PRESETS, UNet, UNetConfig, build_unet, expected_shapes, qkv_attention_legacy

# Fingerprint of each released `backbone.*` layout: (number of keys, num_unet_params, sha256 of the sorted
# "name [shape]" lines), taken from released_checkpoint_keys.json so the check runs without that file.
RELEASED = {
    "cifar10": (304, 35746307, "458e72873bb7a628a7b47857414e5da8c55d0697bec7150c486f4c400bad16d1"),
    "imagenet32": (446, 49062787, "0e48b96bb147e00c7d1739d6fcf19c6ae1d27d49dd0eb0aca3942002d8bddaaa"),
    "imagenet64": (308, 186591171, "78b3dfa3571af9e0b452ae767cdce342bf9ec9611050ecb503cc2a85ba5ecb10"),
    "ffhq256_latent": (368, 357923588, "7971bf44224bc2928fb43d82bd9cd1268a226705fbe4fb65d3386a15bedd96a1"),
}


def _reference_json() -> Path | None:
    """released_checkpoint_keys.json, if a copy is reachable (env var, repo, shared reference folder)."""
    candidates = [Path(os.environ.get("LOOM_REFERENCE_DIR", "/nonexistent")),
                  Path(__file__).resolve().parents[1] / "reference",
                  # The team's shared folder sits beside the checkout (../shared/reference).
                  Path(__file__).resolve().parents[2] / "shared" / "reference"]
    for folder in candidates:
        if (folder / "released_checkpoint_keys.json").is_file():
            return folder / "released_checkpoint_keys.json"
    return None


def _released_layout(preset: str) -> dict[str, tuple[int, ...]]:
    """Our UNet's state dict as it appears in a released checkpoint: `backbone.` + name -> shape."""
    return {f"backbone.{k}": v for k, v in expected_shapes(preset).items()}


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
    return {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": [0]}]},
            "lr_scheduler": {"base_lrs": [2e-4], "last_epoch": step}, "global_step": step}


# --- released layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_preset_matches_released_fingerprint(preset: str) -> None:
    layout = _released_layout(preset)
    num_keys, num_params, digest = RELEASED[preset]
    text = "\n".join(f"{k} {list(s)}" for k, s in sorted(layout.items()))
    assert len(layout) == num_keys
    assert sum(math.prod(s) for s in layout.values()) == num_params
    assert hashlib.sha256(text.encode()).hexdigest() == digest


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_preset_matches_released_keys_json(preset: str) -> None:
    path = _reference_json()
    if path is None:
        pytest.skip("released_checkpoint_keys.json not found (set LOOM_REFERENCE_DIR)")
    facts = json.loads(path.read_text())["configs"][preset]
    want = {k: tuple(v) for k, v in facts["keys"].items() if k.startswith("backbone.")}
    got = _released_layout(preset)
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    assert list(got) == list(want)  # even the order of the released state dict
    assert sum(math.prod(s) for s in got.values()) == facts["num_unet_params"]


def test_build_real_cifar10_has_released_param_count() -> None:
    model = build_unet("cifar10")
    assert sum(p.numel() for p in model.parameters()) == RELEASED["cifar10"][1]
    with torch.no_grad():
        v = model(torch.randn(1, 3, 32, 32), torch.tensor([0.3]))
    assert v.shape == (1, 3, 32, 32)


# --- forward pass -------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset,shape", [("digits", (4, 1, 8, 8)), ("tiny", (2, 3, 32, 32))])
def test_forward_shape_and_zero_at_init(preset: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_unet(preset).eval()
    x, t = torch.randn(shape), torch.rand(shape[0])
    with torch.no_grad():
        v = model(x, t)
    assert v.shape == shape
    assert torch.count_nonzero(v) == 0  # zero-initialised output conv: v_theta = 0 before training
    with torch.no_grad():
        _random_weights(model)
        v = model(x, t)
        assert torch.equal(model(x, t[0]), model(x, t[0].expand(shape[0])))  # scalar t is broadcast
    assert v.shape == shape and v.abs().sum() > 0


def test_forward_rejects_sizes_the_unet_cannot_halve() -> None:
    with pytest.raises(ValueError, match="divisible by 2"):
        build_unet("tiny")(torch.randn(1, 3, 31, 31), torch.rand(1))


def test_timestep_embedding_cos_then_sin_without_rescaling() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)  # f_0 = 1: t = 1 gives cos 1, sin 1
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(freqs), torch.sin(freqs)]))
    assert timestep_embedding(torch.zeros(3), 7).shape == (3, 7)  # odd width padded with zeros


def test_attention_uses_legacy_qkv_order() -> None:
    torch.manual_seed(0)
    heads, ch, length = 2, 4, 5
    qkv = torch.randn(3, 3 * heads * ch, length)
    # guided-diffusion's QKVAttentionLegacy written out: per head, q k v are adjacent channel blocks.
    q, k, v = qkv.reshape(3 * heads, 3 * ch, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    want = torch.einsum("bts,bcs->bct", weight, v).reshape(3, heads * ch, length)
    torch.testing.assert_close(qkv_attention_legacy(qkv, heads), want)


def test_groupnorm_runs_in_float32_and_keeps_dtype() -> None:
    block = build_unet("digits").out[0]
    x = torch.randn(2, 32, 8, 8)
    y = block(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), block(x.to(torch.bfloat16).float()).to(torch.bfloat16).float())


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="cifar10.*digits"):
        build_unet("cifar100")


def test_config_refuses_unreachable_attention_rate() -> None:
    with pytest.raises(ValueError, match="never reached"):
        UNetConfig(32, 3, 3, 32, (1, 2), 1, (4,))


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


def test_round_trip_released_format_cifar10(tmp_path: Path) -> None:
    model = _random_weights(build_unet("cifar10"))
    path = tmp_path / "cifar10.pt"
    torch.save(_released_format(model), path)
    loaded, info = load_released_unet(path)
    assert info["preset"] == "cifar10" and info["num_params"] == RELEASED["cifar10"][1]
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())


def test_prefix_stripping_ddp_compile_and_extras() -> None:
    state = {"module._orig_mod.backbone.out.2.bias": torch.zeros(3), "module.ae.scale": torch.ones(1),
             "backbone.module.time_embed.0.bias": torch.zeros(4)}
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


def test_objects_beyond_weights_need_trust(tmp_path: Path) -> None:
    checkpoint = _released_format(build_unet("digits"))
    checkpoint["lr_scheduler"] = {"lr_lambda": functools.partial(min, 1.0)}  # not loadable weights-only
    torch.save(checkpoint, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="trusted=True"):
        load_checkpoint_state(tmp_path / "pickled.pt", trusted=False)
    with pytest.warns(UserWarning, match="full unpickling"):
        assert "model" in load_checkpoint_state(tmp_path / "pickled.pt", trusted=True)


def test_loading_from_memory_does_not_share_storage() -> None:
    source = _random_weights(build_unet("digits"))
    loaded, info = load_released_unet(source.state_dict(), preset="digits")
    assert info["global_step"] is None and info["extra_keys"] == []
    with torch.no_grad():
        next(loaded.parameters()).add_(1.0)
    assert not torch.equal(next(loaded.parameters()), next(source.parameters()))


def test_presets_table_is_complete() -> None:
    assert set(PAPER_PRESETS) | {"digits", "tiny", "tiny_latent"} == set(PRESETS)
    assert PRESETS["digits"].image_size == 8 and PRESETS["digits"].in_channels == 1
    assert PRESETS["ffhq256_latent"].in_channels == PRESETS["ffhq256_latent"].out_channels == 4
