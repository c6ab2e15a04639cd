"""Tests of lib.unet: the released state-dict layout, the forward pass, checkpoint loading and its errors.

The four paper UNets are only ever built on the meta device or run at batch 1, so the file stays fast on CPU.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from lib.paper import UNET_ARCHITECTURES
from lib.unet import PRESETS, UNet, UNetConfig, build_unet, expected_shapes, qkv_attention_legacy

# Fingerprint of each released `backbone.*` layout: (number of keys, num_unet_params, sha256 of the sorted
# "name [shape]" lines), taken from released_checkpoint_keys.json so the check runs without that file.
RELEASED = {
    "cifar10": (304, 35746307, "458e72873bb7a628a7b47857414e5da8c55d0697bec7150c486f4c400bad16d1"),
    "imagenet32": (446, 49062787, "0e48b96bb147e00c7d1739d6fcf19c6ae1d27d49dd0eb0aca3942002d8bddaaa"),
    "imagenet64": (308, 186591171, "78b3dfa3571af9e0b452ae767cdce342bf9ec9611050ecb503cc2a85ba5ecb10"),
    "ffhq256_latent": (368, 357923588, "7971bf44224bc2928fb43d82bd9cd1268a226705fbe4fb65d3386a15bedd96a1"),
}


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


# --- released layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", UNET_ARCHITECTURES)
def test_paper_preset_matches_released_fingerprint(preset: str) -> None:
    layout = _released_layout(preset)
    num_keys, num_params, digest = RELEASED[preset]
    text = "\n".join(f"{k} {list(s)}" for k, s in sorted(layout.items()))
    assert len(layout) == num_keys
    assert sum(math.prod(s) for s in layout.values()) == num_params
    assert hashlib.sha256(text.encode()).hexdigest() == digest


@pytest.mark.parametrize("preset", UNET_ARCHITECTURES)
def test_paper_preset_matches_released_keys_json(preset: str, released_keys) -> None:
    facts = released_keys["configs"][preset]
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


def test_presets_table_is_complete() -> None:
    assert set(UNET_ARCHITECTURES) | {"digits", "tiny", "tiny_latent"} == set(PRESETS)
    assert PRESETS["digits"].image_size == 8 and PRESETS["digits"].in_channels == 1
    assert PRESETS["ffhq256_latent"].in_channels == PRESETS["ffhq256_latent"].out_channels == 4
