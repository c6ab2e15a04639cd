"""The latent autoencoder of FFHQ-256: Stable Diffusion's kl-f8 VAE as a diffusers ``AutoencoderKL``.

FFHQ-256 is trained on latents (4, 32, 32) of the kl-f8 autoencoder ("ft-mse" weights, hub id
``stabilityai/sd-vae-ft-mse``), divided by their std measured on the first batch (the ``scale``). Samples are
multiplied back and decoded before FID: images = decode(sample * scale).

Weights come in two namings:

- diffusers (``encoder.down_blocks.0.resnets.0.norm1.weight``, attention as Linear ``to_q/to_k/to_v/to_out.0``):
  what ``AutoencoderKL.save_pretrained`` writes and the hub holds;
- LDM / CompVis latent-diffusion (``encoder.down.0.block.0.norm1.weight``, ``nin_shortcut``, ``mid.attn_1``,
  attention as 1x1 convs ``q/k/v/proj_out``, decoder levels ``up.<i>`` numbered from the full-resolution end):
  what the released LOOM-CFM FFHQ checkpoint stores under ``ae.*`` (beside ``ae.scale``).

:func:`ldm_to_diffusers` / :func:`diffusers_to_ldm` convert between them. The architecture (widths per level,
blocks per level, which levels have attention, latent channels, quant convs) is read off the weights, never
assumed: the released checkpoint's autoencoder has attention in its lowest-resolution level (encoder
``down.3.attn.*``, decoder ``up.3.attn.*``), which the hub's sd-vae-ft-mse does not, and both load.

    ae = autoencoder_from_ldm(ldm_state_dict)                  # files and hub ids: lib.checkpoints.load_autoencoder
    decoder = LatentDecoder(ae, scale)                         # scaled latents (B, 4, h, w) -> images (B, 3, H, W)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lib.models import CheckpointError
from lib.unet import StateDiff

DEFAULT_AUTOENCODER = "stabilityai/sd-vae-ft-mse"  # the paper's kl-f8 "ft-mse" weights
AE_PREFIX = "ae."  # released checkpoints: the autoencoder's keys under model["ae.*"]
SCALE_KEY = "ae.scale"  # ... and the latent std divisor, shape [1]
ATTENTION_LINEAR = ("to_q", "to_k", "to_v", "to_out.0")  # diffusers Linear <-> LDM 1x1 conv weights


# ---------------------------------------------------------------------------------------------------------
# The architecture, read off LDM-named weights
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LDMLayout:
    """What an LDM-named autoencoder state dict says about its architecture.

    Level l of the encoder has width ``block_out_channels[l]`` and ``layers_per_block`` ResBlocks; the decoder
    mirrors it with one ResBlock more per level. ``encoder_attention[l]`` / ``decoder_attention[l]``: whether
    level l (LDM numbering, 0 = full resolution, on both sides) has an attention block after each ResBlock.
    """

    in_channels: int
    out_channels: int
    latent_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    encoder_attention: tuple[bool, ...]
    decoder_attention: tuple[bool, ...]
    mid_attention: bool
    quant_conv: bool
    post_quant_conv: bool


def _indices(state: Mapping[str, Tensor], prefix: str) -> list[int]:
    """Sorted integers i of the keys ``prefix<i>.*`` (levels, blocks)."""
    found = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    return sorted(found)


def ldm_layout(state: Mapping[str, Tensor]) -> LDMLayout:
    """Read the architecture off an LDM-named state dict (no ``ae.`` prefix). Not an autoencoder -> CheckpointError."""
    levels = _indices(state, "encoder.down.")
    first_convs = [f"encoder.down.{i}.block.0.conv1.weight" for i in levels]  # each level's width
    anchors = ("encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_in.weight", "decoder.conv_out.weight")
    absent = [k for k in (*anchors, *first_convs) if k not in state]
    if absent or not levels:
        raise CheckpointError(
            f"not an LDM (CompVis) autoencoder state dict, or an incomplete one: it lacks "
            f"{absent or ['encoder.down.0.*']} (first keys: {sorted(state)[:5]}). Pass weights named "
            "encoder.down.<i>.block.<j>..., decoder.up.<i>..., quant_conv..."
        )
    return LDMLayout(
        in_channels=state["encoder.conv_in.weight"].shape[1],
        out_channels=state["decoder.conv_out.weight"].shape[0],
        latent_channels=state["decoder.conv_in.weight"].shape[1],
        block_out_channels=tuple(state[k].shape[0] for k in first_convs),
        layers_per_block=len(_indices(state, "encoder.down.0.block.")),
        encoder_attention=tuple(any(k.startswith(f"encoder.down.{i}.attn.") for k in state) for i in levels),
        decoder_attention=tuple(any(k.startswith(f"decoder.up.{i}.attn.") for k in state) for i in levels),
        mid_attention="encoder.mid.attn_1.q.weight" in state,
        quant_conv="quant_conv.weight" in state,
        post_quant_conv="post_quant_conv.weight" in state,
    )


def diffusers_config(layout: LDMLayout) -> dict[str, Any]:
    """``AutoencoderKL(**config)`` arguments of the layout: attention levels become Attn* block types.

    diffusers lists decoder blocks in processing order (lowest resolution first), LDM by level, hence the reversal.
    """
    down = ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in layout.encoder_attention]
    up = ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(layout.decoder_attention)]
    return {
        "in_channels": layout.in_channels,
        "out_channels": layout.out_channels,
        "latent_channels": layout.latent_channels,
        "block_out_channels": list(layout.block_out_channels),
        "layers_per_block": layout.layers_per_block,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_add_attention": layout.mid_attention,
        "use_quant_conv": layout.quant_conv,
        "use_post_quant_conv": layout.post_quant_conv,
    }


def build_autoencoder(config: Mapping[str, Any], meta: bool = False) -> Any:
    """A diffusers AutoencoderKL for ``config`` (randomly initialised; on the meta device with ``meta``)."""
    from diffusers import AutoencoderKL

    if any(width % 32 for width in config["block_out_channels"]):  # GroupNorm(32) in every block
        raise CheckpointError(f"autoencoder widths {config['block_out_channels']} must be multiples of 32")
    if meta:
        with torch.device("meta"):
            return AutoencoderKL(**config)
    return AutoencoderKL(**config)


# ---------------------------------------------------------------------------------------------------------
# Names: diffusers <-> LDM
# ---------------------------------------------------------------------------------------------------------
_LEAF = {
    "conv_shortcut": "nin_shortcut",
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "conv_norm_out": "norm_out",
}


def _leaf(rest: str) -> str:
    """The tail of a name (``conv_shortcut.weight``, ``to_out.0.bias``) in LDM words."""
    for diffusers_word, ldm_word in _LEAF.items():
        if rest == diffusers_word or rest.startswith(diffusers_word + "."):
            return ldm_word + rest[len(diffusers_word) :]
    return rest


def ldm_name(name: str, num_levels: int) -> str:
    """One diffusers AutoencoderKL parameter name -> its LDM name (``num_levels`` = len(block_out_channels)).

    encoder.down_blocks.i.resnets.j -> encoder.down.i.block.j; .attentions.j -> .attn.j; .downsamplers.0 ->
    .downsample; decoder.up_blocks.i -> decoder.up.(L-1-i) (.upsamplers.0 -> .upsample); mid_block.resnets.0/1
    -> mid.block_1/2; mid_block.attentions.0 -> mid.attn_1; conv_shortcut -> nin_shortcut; group_norm -> norm;
    to_q/to_k/to_v/to_out.0 -> q/k/v/proj_out; conv_norm_out -> norm_out.
    """
    side, _, rest = name.partition(".")
    if side not in ("encoder", "decoder"):
        return name  # quant_conv, post_quant_conv
    parts = rest.split(".")
    if parts[0] in ("down_blocks", "up_blocks"):
        level = int(parts[1]) if parts[0] == "down_blocks" else num_levels - 1 - int(parts[1])
        kind, tail = parts[2], ".".join(parts[3:])
        where = f"{side}.{'down' if parts[0] == 'down_blocks' else 'up'}.{level}"
        if kind in ("downsamplers", "upsamplers"):  # ...samplers.0.conv.weight -> ...sample.conv.weight
            return f"{where}.{kind[:-2]}.{tail.partition('.')[2]}"
        block, _, tail = tail.partition(".")
        return f"{where}.{'block' if kind == 'resnets' else 'attn'}.{block}.{_leaf(tail)}"
    if parts[0] == "mid_block":
        kind, block, tail = parts[1], int(parts[2]), ".".join(parts[3:])
        return f"{side}.mid.{'block' if kind == 'resnets' else 'attn'}_{block + 1}.{_leaf(tail)}"
    return f"{side}.{_leaf(rest)}"


def _is_attention_linear(name: str) -> bool:
    """diffusers attention projection weights: Linear (C, C) here, 1x1 conv (C, C, 1, 1) in LDM."""
    return ".attentions." in name and name.endswith(tuple(f".{p}.weight" for p in ATTENTION_LINEAR))


def diffusers_to_ldm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A diffusers AutoencoderKL state dict -> the same weights in LDM names (attention weights as 1x1 convs)."""
    num_levels = len({k.split(".")[2] for k in state if k.startswith("encoder.down_blocks.")})
    return {ldm_name(k, num_levels): (v[:, :, None, None] if _is_attention_linear(k) else v) for k, v in state.items()}


def ldm_to_diffusers(state: Mapping[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """An LDM-named state dict -> (AutoencoderKL config read off it, the weights in diffusers names).

    Every key must map and every parameter be present with the expected shape; otherwise CheckpointError
    lists the missing and unexpected LDM names and the shape mismatches.
    """
    layout = ldm_layout(state)
    if state["encoder.conv_out.weight"].shape[0] != 2 * layout.latent_channels:  # mean and log-variance
        raise CheckpointError(
            f"encoder.conv_out makes {state['encoder.conv_out.weight'].shape[0]} channels but the "
            f"decoder takes {layout.latent_channels} latent channels: diffusers' AutoencoderKL needs "
            "encoder output = 2 x latent channels (LDM's z_channels != embed_dim is not supported)"
        )
    config = diffusers_config(layout)
    want = {name: tuple(p.shape) for name, p in build_autoencoder(config, meta=True).state_dict().items()}
    to_diffusers = {ldm_name(name, len(layout.block_out_channels)): name for name in want}
    diff = StateDiff(
        missing=[k for k in to_diffusers if k not in state], unexpected=[k for k in state if k not in to_diffusers]
    )
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in to_diffusers:
            continue
        name = to_diffusers[key]
        value = value[:, :, 0, 0] if _is_attention_linear(name) and value.ndim == 4 else value
        if tuple(value.shape) != want[name]:
            diff.mismatched.append((key, tuple(value.shape), want[name]))
        out[name] = value
    if not diff.ok:
        raise CheckpointError(
            f"the autoencoder weights do not fit the kl-f8 architecture read off them "
            f"({_describe_layout(layout)}):\n{diff.describe()}"
        )
    return config, out


def _describe_layout(layout: LDMLayout) -> str:
    return (
        f"widths {list(layout.block_out_channels)}, {layout.layers_per_block} blocks per level, attention at "
        f"encoder levels {[i for i, a in enumerate(layout.encoder_attention) if a]} and decoder levels "
        f"{[i for i, a in enumerate(layout.decoder_attention) if a]}, {layout.latent_channels} latent channels, "
        f"quant_conv {layout.quant_conv}, post_quant_conv {layout.post_quant_conv}"
    )


# ---------------------------------------------------------------------------------------------------------
# Weights, encoding, decoding
# ---------------------------------------------------------------------------------------------------------
def autoencoder_from_ldm(state: Mapping[str, Tensor]) -> Any:
    """An LDM-named autoencoder state dict (no prefixes) -> a diffusers AutoencoderKL holding those weights.

    The architecture is read off the weights (:func:`ldm_to_diffusers`); the tensors are copied to float32.
    Files, hub ids and checkpoint wrappers are lib.checkpoints.load_autoencoder's job.
    """
    config, weights = ldm_to_diffusers(state)
    ae = build_autoencoder(config, meta=True)
    ae.load_state_dict({k: v.detach().clone().float() for k, v in weights.items()}, strict=True, assign=True)
    return ae


def encode_mean(ae: Any, images: Tensor) -> Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> UNSCALED latents (B, C, H/f, W/f): the posterior mean.

    The mean, not a sample: the encoding of an image is then deterministic (data prep is reproducible and
    resumable bit for bit), and for the kl-f8 VAE the posterior std is tiny next to the latent spread.
    """
    with torch.no_grad():
        return ae.encode(images).latent_dist.mean


class LatentDecoder(nn.Module):
    """Scaled latents z (B, C, h, w) -> images (B, 3, H, W) in [-1, 1]: clamp(ae.decode(z * scale)).

    ``scale`` is the std divisor the training data was divided by (attrs["scale"] of the HDF5 latents, or the
    released checkpoint's ``ae.scale``). Decodes ``chunk`` latents at a time: the decoder's full-resolution
    activations (128 channels at 256 x 256) would not fit for a whole FID batch. The clamp is there because the
    decoder reaches [-1, 1] by training, not by construction.
    """

    def __init__(self, ae: Any, scale: float | Tensor, chunk: int = 32) -> None:
        super().__init__()
        scale = float(torch.as_tensor(scale).reshape(()))
        if not scale > 0 or scale == float("inf"):
            raise ValueError(f"the latent scale must be positive and finite, got {scale}")
        self.ae, self.chunk = ae, int(chunk)
        self.register_buffer("scale", torch.tensor(scale))

    @property
    def latent_channels(self) -> int:
        return int(self.ae.config.latent_channels)

    def forward(self, z: Tensor) -> Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, f h, f w) images in [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        with torch.no_grad():
            images = [self.ae.decode(part * self.scale).sample for part in z.split(self.chunk)]
        return torch.cat(images).clamp(-1, 1)
