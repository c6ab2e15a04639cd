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

    ae = load_autoencoder("stabilityai/sd-vae-ft-mse")        # hub id (cached), a save_pretrained folder,
    ae = load_autoencoder(ldm_state_dict)                      # ... or an LDM-named state dict / file
    decoder = LatentDecoder(ae, scale)                         # scaled latents (B, 4, h, w) -> images (B, 3, H, W)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lib.unet import WRAPPER_PREFIXES, CheckpointError, StateDiff

__all__ = [
    "DEFAULT_AUTOENCODER",
    "LDMLayout",
    "LatentDecoder",
    "build_autoencoder",
    "decoder_from_checkpoint",
    "diffusers_config",
    "diffusers_to_ldm",
    "encode_mean",
    "ldm_layout",
    "ldm_name",
    "ldm_to_diffusers",
    "load_autoencoder",
    "tiny_autoencoder",
]

DEFAULT_AUTOENCODER = "stabilityai/sd-vae-ft-mse"  # the paper's kl-f8 "ft-mse" weights
AE_PREFIX = "ae."  # released checkpoints: the autoencoder's keys under model["ae.*"]
SCALE_KEY = "ae.scale"  # ... and the latent std divisor, shape [1]
ATTENTION_LINEAR = ("to_q", "to_k", "to_v", "to_out.0")  # diffusers Linear <-> LDM 1x1 conv weights

Source = str | os.PathLike[str] | Mapping[str, Tensor]


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
    found = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return sorted(found)


def ldm_layout(state: Mapping[str, Tensor]) -> LDMLayout:
    """Read the architecture off an LDM-named state dict (no ``ae.`` prefix). Not an autoencoder -> CheckpointError."""
    levels = _indices(state, "encoder.down.")
    first_convs = [f"encoder.down.{i}.block.0.conv1.weight" for i in levels]  # each level's width
    anchors = ("encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_in.weight", "decoder.conv_out.weight")
    absent = [k for k in (*anchors, *first_convs) if k not in state]
    if absent or not levels:
        raise CheckpointError(f"not an LDM (CompVis) autoencoder state dict, or an incomplete one: it lacks "
                              f"{absent or ['encoder.down.0.*']} (first keys: {sorted(state)[:5]}). Pass weights named "
                              "encoder.down.<i>.block.<j>..., decoder.up.<i>..., quant_conv...")
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
    return {"in_channels": layout.in_channels, "out_channels": layout.out_channels,
            "latent_channels": layout.latent_channels, "block_out_channels": list(layout.block_out_channels),
            "layers_per_block": layout.layers_per_block, "down_block_types": down, "up_block_types": up,
            "mid_block_add_attention": layout.mid_attention, "use_quant_conv": layout.quant_conv,
            "use_post_quant_conv": layout.post_quant_conv}


def build_autoencoder(config: Mapping[str, Any], meta: bool = False) -> Any:
    """A diffusers AutoencoderKL for ``config`` (randomly initialised; on the meta device with ``meta``)."""
    from diffusers import AutoencoderKL

    if any(width % 32 for width in config["block_out_channels"]):  # GroupNorm(32) in every block
        raise CheckpointError(f"autoencoder widths {config['block_out_channels']} must be multiples of 32")
    if meta:
        with torch.device("meta"):
            return AutoencoderKL(**config)
    return AutoencoderKL(**config)


def tiny_autoencoder(seed: int = 0, levels: int = 4, width: int = 32, post_quant_conv: bool = True) -> Any:
    """A small randomly initialised autoencoder shaped like the released one, for CPU runs and tests.

    ``levels`` levels of ``width`` channels (images shrink by 2 ** (levels - 1): 64 x 64 -> 8 x 8 for 4 levels),
    one ResBlock per level, attention in the lowest-resolution level of encoder and decoder and in the middle,
    4 latent channels, quant_conv, and post_quant_conv as asked. The global RNG is left untouched.
    """
    layout = LDMLayout(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(width,) * levels,
                       layers_per_block=1, encoder_attention=(False,) * (levels - 1) + (True,),
                       decoder_attention=(False,) * (levels - 1) + (True,), mid_attention=True, quant_conv=True,
                       post_quant_conv=post_quant_conv)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_autoencoder(diffusers_config(layout)).eval()


# ---------------------------------------------------------------------------------------------------------
# Names: diffusers <-> LDM
# ---------------------------------------------------------------------------------------------------------
_LEAF = {"conv_shortcut": "nin_shortcut", "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
         "to_out.0": "proj_out", "conv_norm_out": "norm_out"}


def _leaf(rest: str) -> str:
    """The tail of a name (``conv_shortcut.weight``, ``to_out.0.bias``) in LDM words."""
    for diffusers_word, ldm_word in _LEAF.items():
        if rest == diffusers_word or rest.startswith(diffusers_word + "."):
            return ldm_word + rest[len(diffusers_word):]
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
        raise CheckpointError(f"encoder.conv_out makes {state['encoder.conv_out.weight'].shape[0]} channels but the "
                              f"decoder takes {layout.latent_channels} latent channels: diffusers' AutoencoderKL needs "
                              "encoder output = 2 x latent channels (LDM's z_channels != embed_dim is not supported)")
    config = diffusers_config(layout)
    want = {name: tuple(p.shape) for name, p in build_autoencoder(config, meta=True).state_dict().items()}
    to_diffusers = {ldm_name(name, len(layout.block_out_channels)): name for name in want}
    diff = StateDiff(missing=[k for k in to_diffusers if k not in state],
                     unexpected=[k for k in state if k not in to_diffusers])
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
        raise CheckpointError(f"the autoencoder weights do not fit the kl-f8 architecture read off them "
                              f"({_describe_layout(layout)}):\n{diff.describe()}")
    return config, out


def _describe_layout(layout: LDMLayout) -> str:
    return (f"widths {list(layout.block_out_channels)}, {layout.layers_per_block} blocks per level, attention at "
            f"encoder levels {[i for i, a in enumerate(layout.encoder_attention) if a]} and decoder levels "
            f"{[i for i, a in enumerate(layout.decoder_attention) if a]}, {layout.latent_channels} latent channels, "
            f"quant_conv {layout.quant_conv}, post_quant_conv {layout.post_quant_conv}")


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------
def _strip_wrappers(key: str) -> str:
    """Drop DDP / torch.compile prefixes at the front of a key."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _ldm_state_from_mapping(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """A state dict in either naming, bare or as an LDM ``.ckpt`` ({state_dict: ...}) / a released checkpoint
    ({model: {ae.*}}) -> LDM names without prefixes (training-only ``loss.*`` and ``ae.scale`` dropped)."""
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    clean = {_strip_wrappers(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if any(k.startswith(AE_PREFIX) for k in clean):
        clean = {k[len(AE_PREFIX):]: v for k, v in clean.items() if k.startswith(AE_PREFIX) and k != SCALE_KEY}
    # An LDM training checkpoint also holds its loss (LPIPS, discriminator); it is not part of the autoencoder.
    clean = {k: v for k, v in clean.items() if not k.startswith("loss.")}
    if any(".down_blocks." in k or ".up_blocks." in k for k in clean):
        clean = diffusers_to_ldm(clean)
    return clean


def _read_weights_file(path: Path) -> Mapping[str, Any]:
    """A .safetensors file or a torch file (weights only) -> its dict."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for foreign or torn files
        raise CheckpointError(f"{path} is not a readable weights file ({type(err).__name__}: {err})") from err


def _from_hub(repo_id: str, offline: bool, cache_dir: str | os.PathLike[str] | None) -> Any:
    """``AutoencoderKL.from_pretrained(repo_id)`` through the Hugging Face cache, with a placement hint offline."""
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(repo_id, local_files_only=offline, cache_dir=cache_dir,
                                             low_cpu_mem_usage=False)  # no accelerate needed
    except (OSError, ValueError) as err:  # diffusers reports a missing repo / offline cache miss as OSError
        raise FileNotFoundError(
            f"autoencoder {repo_id!r} is neither a local folder nor in the Hugging Face cache, and could not be "
            f"downloaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). On a machine with "
            f"internet run `huggingface-cli download {repo_id} --local-dir <folder>` (or "
            f"AutoencoderKL.from_pretrained('{repo_id}').save_pretrained('<folder>')) and pass <folder> instead, "
            f"or copy its cache folder models--{repo_id.replace('/', '--')} into "
            f"{os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')}") from err


def _looks_like_hub_id(text: str) -> bool:
    """``name`` or ``owner/name`` (letters, digits, - _ .), not a path or a weights file name."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", text) is not None \
        and not text.endswith((".pt", ".pth", ".ckpt", ".safetensors", ".bin"))


def load_autoencoder(source: Source, offline: bool = False,
                     cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """A diffusers AutoencoderKL in eval mode, frozen, on the CPU, from one of:

    - a folder written by ``AutoencoderKL.save_pretrained`` (config.json + weights);
    - a weights file (.pt / .ckpt / .safetensors): an LDM state dict, an LDM training checkpoint, or a
      released LOOM-CFM FFHQ checkpoint (its ``ae.*`` keys);
    - a state dict (LDM names; diffusers names are accepted too), architecture read off the weights;
    - a hub id (``stabilityai/sd-vae-ft-mse``) through ``from_pretrained`` and the Hugging Face cache;
      ``offline`` uses the cache only. Not available -> FileNotFoundError saying how to place the weights.
    """
    from diffusers import AutoencoderKL

    if isinstance(source, Mapping):
        config, weights = ldm_to_diffusers(_ldm_state_from_mapping(source))
        ae = build_autoencoder(config, meta=True)
        ae.load_state_dict({k: v.detach().clone().float() for k, v in weights.items()}, strict=True, assign=True)
    elif Path(source).is_dir():
        if not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"{source} is a folder without config.json: not written by "
                                    "AutoencoderKL.save_pretrained (pass that folder, a weights file or a hub id)")
        ae = AutoencoderKL.from_pretrained(str(source), local_files_only=True, low_cpu_mem_usage=False)
    elif Path(source).is_file():
        return load_autoencoder(_read_weights_file(Path(source)))
    elif not _looks_like_hub_id(str(source)):
        raise FileNotFoundError(f"autoencoder {source} does not exist: pass a save_pretrained folder, a weights "
                                f"file or a hub id such as {DEFAULT_AUTOENCODER}")
    else:
        ae = _from_hub(str(source), offline, cache_dir)
    return ae.float().eval().requires_grad_(False)


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


def decoder_from_checkpoint(model_state: Mapping[str, Tensor]) -> LatentDecoder | None:
    """A released checkpoint's ``model`` state -> its LatentDecoder (``ae.*`` + ``ae.scale``), or None if it has no
    autoencoder. ``ae.*`` without ``ae.scale`` (or the reverse) raises CheckpointError."""
    clean = {_strip_wrappers(k): v for k, v in model_state.items()}
    ae_keys = [k for k in clean if k.startswith(AE_PREFIX)]
    if not ae_keys:
        return None
    if SCALE_KEY not in clean or len(ae_keys) == 1:
        raise CheckpointError(f"the checkpoint's autoencoder is incomplete: it has {len(ae_keys)} ae.* keys "
                              f"{'with' if SCALE_KEY in clean else 'but no'} {SCALE_KEY}; a latent checkpoint "
                              "needs the ae.encoder/decoder weights and ae.scale (the latent std divisor)")
    return LatentDecoder(load_autoencoder({k: clean[k] for k in ae_keys}), clean[SCALE_KEY])
