"""lib.autoencoder: LDM <-> diffusers names, the architecture read off the weights, loading, the latent decoder,
and released-format FFHQ checkpoints (backbone.* + ae.* + ae.scale) through lib.sample."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lib import sample
from lib.autoencoder import (
    LatentDecoder,
    build_autoencoder,
    diffusers_config,
    diffusers_to_ldm,
    encode_mean,
    ldm_layout,
    ldm_to_diffusers,
)
from lib.checkpoints import load_autoencoder
from lib.fabricate import tiny_autoencoder
from lib.models import CheckpointError
from lib.unet import build_unet

# The released FFHQ autoencoder (ae.* without ae.scale): number of keys, parameters and sha256 of the sorted
# "name [shape]" lines of lib/reference/released_checkpoint_keys.json.
RELEASED_AE = (298, 88912103, "fe7cd16ea73acc9fbabbcb0b5169cb372c73efb6d4f3f5dbd9b681ee5f5f60a0")


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _round_trip(ae, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ae.decode(encode_mean(ae, x)).sample


# --- names and layout -----------------------------------------------------------------------------------
@pytest.mark.parametrize("post_quant_conv", [True, False])
def test_ldm_names_round_trip_and_give_equal_outputs(post_quant_conv: bool) -> None:
    ae = tiny_autoencoder(seed=1, post_quant_conv=post_quant_conv)
    ldm = diffusers_to_ldm(ae.state_dict())
    # LDM naming: levels numbered from full resolution on both sides, attention as 1x1 convs, nin_shortcut.
    assert ldm["encoder.down.3.attn.0.q.weight"].shape == (32, 32, 1, 1)
    assert ldm["decoder.up.3.attn.1.proj_out.weight"].shape == (32, 32, 1, 1)  # decoder: one block more
    assert "decoder.up.3.upsample.conv.weight" in ldm and "decoder.up.0.upsample.conv.weight" not in ldm
    assert "encoder.down.3.downsample.conv.weight" not in ldm and "encoder.mid.attn_1.k.bias" in ldm
    assert not any(".attn." in k for k in ldm if k.startswith(("encoder.down.0", "decoder.up.0")))
    assert ("post_quant_conv.weight" in ldm) == post_quant_conv
    layout = ldm_layout(ldm)
    assert layout.encoder_attention == layout.decoder_attention == (False, False, False, True)
    assert layout.post_quant_conv == post_quant_conv and layout.latent_channels == 4
    config, back = ldm_to_diffusers(ldm)
    assert config["use_post_quant_conv"] == post_quant_conv
    assert back.keys() == ae.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ae.state_dict().items())
    loaded = load_autoencoder(ldm)
    x = _images()
    assert torch.equal(_round_trip(loaded, x), _round_trip(ae, x))


def test_attention_block_is_ldms_single_head_attention() -> None:
    """The mapped 1x1-conv weights reproduce LDM's AttnBlock: x + proj_out(v softmax(q^T k / sqrt(C)))."""
    ae = tiny_autoencoder(seed=2)
    ldm = diffusers_to_ldm(ae.state_dict())
    w = {k.removeprefix("encoder.mid.attn_1."): v for k, v in ldm.items() if k.startswith("encoder.mid.attn_1.")}
    x = torch.randn(2, 32, 4, 4)
    h = F.group_norm(x, 32, w["norm.weight"], w["norm.bias"], eps=1e-6)
    q, k, v = (F.conv2d(h, w[f"{n}.weight"], w[f"{n}.bias"]).flatten(2) for n in "qkv")  # (B, C, HW)
    attention = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(32), dim=-1)  # (B, HW_q, HW_k)
    out = (v @ attention.transpose(1, 2)).reshape(x.shape)
    want = x + F.conv2d(out, w["proj_out.weight"], w["proj_out.bias"])
    with torch.no_grad():
        got = ae.encoder.mid_block.attentions[0](x)
    assert torch.allclose(got, want, atol=1e-5)


def _released_ae_layout() -> dict[str, tuple[int, ...]]:
    """The released FFHQ checkpoint's ae.* layout as lib.autoencoder builds it (meta device, no weights)."""
    meta = {k: torch.empty(s, device="meta") for k, s in _released_shapes_from_facts().items()}
    config, _ = ldm_to_diffusers(meta)
    ldm = diffusers_to_ldm(build_autoencoder(config, meta=True).state_dict())
    return {f"ae.{k}": tuple(v.shape) for k, v in ldm.items()}


def _released_shapes_from_facts() -> dict[str, tuple[int, ...]]:
    """The architecture facts (sd kl-f8 widths, attention in the last level) as an LDM layout, JSON-free."""
    layout = ldm_layout(diffusers_to_ldm(tiny_autoencoder().state_dict()))
    config = diffusers_config(layout)
    config.update(block_out_channels=[128, 256, 512, 512], layers_per_block=2)
    return {k: tuple(v.shape) for k, v in diffusers_to_ldm(build_autoencoder(config, meta=True).state_dict()).items()}


def test_released_autoencoder_layout_matches_the_keys(released_keys) -> None:
    layout = _released_ae_layout()
    text = "\n".join(f"{k} {list(s)}" for k, s in sorted(layout.items()))
    assert (len(layout), sum(math.prod(s) for s in layout.values())) == RELEASED_AE[:2]
    assert hashlib.sha256(text.encode()).hexdigest() == RELEASED_AE[2]
    keys = released_keys["configs"]["ffhq256_latent"]["keys"]
    want = {k: tuple(v) for k, v in keys.items() if k.startswith("ae.") and k != "ae.scale"}
    assert layout == want and keys["ae.scale"] == [1]
    # Read off the released names themselves: attention at the lowest-resolution level, post_quant_conv present.
    config, _ = ldm_to_diffusers({k[3:]: torch.empty(s, device="meta") for k, s in want.items()})
    assert (
        config["down_block_types"][-1] == "AttnDownEncoderBlock2D"
        and config["up_block_types"][0] == "AttnUpDecoderBlock2D"
    )
    assert config["use_post_quant_conv"] and config["block_out_channels"] == [128, 256, 512, 512]


# --- loading and errors ---------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # diffusers -> hf_hub
def test_load_from_folder_weights_file_and_offline_hub(tmp_path: Path) -> None:
    ae = tiny_autoencoder(seed=3, post_quant_conv=False)
    ae.save_pretrained(tmp_path / "ae")
    x = _images()
    assert torch.equal(_round_trip(load_autoencoder(tmp_path / "ae"), x), _round_trip(ae, x))
    torch.save({"state_dict": diffusers_to_ldm(ae.state_dict())}, tmp_path / "vae.ckpt")  # an LDM .ckpt
    assert torch.equal(_round_trip(load_autoencoder(str(tmp_path / "vae.ckpt")), x), _round_trip(ae, x))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load_autoencoder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_autoencoder(tmp_path / "nowhere" / "vae.safetensors")
    with pytest.raises(FileNotFoundError, match="hf download stabilityai/sd-vae-ft-mse"):
        load_autoencoder("stabilityai/sd-vae-ft-mse", offline=True, cache_dir=tmp_path / "hf")


def test_weights_of_another_architecture_are_refused_with_what_does_not_fit() -> None:
    ldm = diffusers_to_ldm(tiny_autoencoder(seed=4).state_dict())
    missing = {k: v for k, v in ldm.items() if k != "decoder.up.2.upsample.conv.weight"}
    with pytest.raises(CheckpointError, match=r"(?s)1 missing keys:.*decoder\.up\.2\.upsample\.conv\.weight"):
        load_autoencoder(missing)
    with pytest.raises(CheckpointError, match=r"(?s)1 unexpected keys:.*encoder\.down\.0\.extra\.weight"):
        load_autoencoder({**ldm, "encoder.down.0.extra.weight": torch.zeros(1)})
    wrong = {**ldm, "decoder.mid.block_1.conv1.weight": torch.zeros(32, 16, 3, 3)}
    with pytest.raises(
        CheckpointError,
        match=r"(?s)1 shape mismatches:.*decoder\.mid\.block_1\.conv1\.weight: "
        r"checkpoint \[32, 16, 3, 3\] vs model \[32, 32, 3, 3\]",
    ):
        load_autoencoder(wrong)
    with pytest.raises(CheckpointError, match="not an LDM"):
        load_autoencoder(build_unet("tiny").state_dict())


def test_latent_decoder_multiplies_by_the_scale_and_clamps() -> None:
    ae = tiny_autoencoder(seed=5)
    decoder = LatentDecoder(ae, 0.5, chunk=2)
    z = torch.randn(5, 4, 4, 4)
    with torch.no_grad():
        want = ae.decode(z * 0.5).sample.clamp(-1, 1)
    assert torch.allclose(decoder(z), want, atol=1e-5) and decoder(z).shape == (5, 3, 32, 32)
    with pytest.raises(ValueError, match=r"expected latents \(B, 4, h, w\)"):
        decoder(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="positive"):
        LatentDecoder(ae, 0.0)


# --- released-format FFHQ checkpoints through lib.sample ------------------------------------------------
def _released_ffhq(tmp_path: Path, ae_state: dict[str, torch.Tensor], scale: torch.Tensor | None) -> Path:
    """A tiny checkpoint in the released FFHQ layout: backbone.* (tiny latent UNet), ae.* (LDM names), ae.scale."""
    torch.manual_seed(0)
    unet = build_unet("tiny_latent")
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))  # a non-zero velocity, so the samples move
    state = {f"module.backbone.{k}": v for k, v in unet.state_dict().items()}
    state.update({f"module.ae.{k}": v for k, v in ae_state.items()})
    if scale is not None:
        state["module.ae.scale"] = scale
    path = tmp_path / "loom-cfm_ffhq256.pt"
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "global_step": 11}, path)
    return path


def test_released_ffhq_format_loads_with_its_decoder(tmp_path: Path) -> None:
    ae = tiny_autoencoder(seed=6)
    path = _released_ffhq(tmp_path, diffusers_to_ldm(ae.state_dict()), torch.tensor([0.7]))
    loaded = sample.load_model(path)
    assert (
        loaded.info["preset"] == "tiny_latent"
        and loaded.shape == (4, 8, 8)
        and loaded.info["latent_scale"] == pytest.approx(0.7)
    )
    x, nfe = next(sample.generate(loaded, 3, "midpoint-2", seed=1))
    images = sample.to_images(loaded, x)
    assert nfe == 4 and images.shape == (3, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    with torch.no_grad():
        want = ae.decode(x * 0.7).sample.clamp(-1, 1)
    assert torch.allclose(images, want, atol=1e-5) and images.std() > 0


def test_released_ffhq_with_wrong_autoencoder_is_refused(tmp_path: Path) -> None:
    ldm = diffusers_to_ldm(tiny_autoencoder(seed=7).state_dict())
    truncated = {k: v for k, v in ldm.items() if not k.startswith("decoder.up.1.")}
    with pytest.raises(CheckpointError, match=r"(?s)missing keys:.*decoder\.up\.1\.block\.0\.conv1\.weight"):
        sample.load_model(_released_ffhq(tmp_path, truncated, torch.tensor([0.7])))
    with pytest.raises(CheckpointError, match="no ae.scale"):
        sample.load_model(_released_ffhq(tmp_path, ldm, None))
    three = {**ldm, "decoder.conv_in.weight": torch.zeros(32, 3, 3, 3), "quant_conv.weight": torch.zeros(6, 6, 1, 1)}
    with pytest.raises(CheckpointError, match="encoder.conv_out makes 8 channels but the decoder takes 3"):
        sample.load_model(_released_ffhq(tmp_path, three, torch.tensor([0.7])))
