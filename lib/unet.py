"""The ADM UNet velocity field v_theta(x_t, t) and loading of the released LOOM-CFM checkpoints.

The layout is the guided-diffusion ``UNetModel`` (Dhariwal & Nichol 2021, MIT licence), written here from
the published architecture facts; the LOOM-CFM repository itself is GPL-3.0 and none of it is copied.
Parameter names follow guided-diffusion exactly, so ``UNet(PRESETS["cifar10"]).state_dict()`` with the prefix
``backbone.`` is the state dict stored under ``model`` in the released checkpoints (loading them:
:mod:`lib.checkpoints`). The released architectures' hyper-parameters are facts of the paper (lib.paper).

Choices fixed by the released configs: GroupNorm(32) computed in float32, SiLU, the time embedding added
after ``in_layers`` (use_scale_shift_norm=False), conv down/up-sampling outside the ResBlocks
(resblock_updown=False), attention with 64 channels per head in the legacy QKV order, dropout 0.1 before the
last conv of every ResBlock, zero-initialised output convs (so v_theta = 0 at init). The time t in [0, 1]
enters the sinusoidal embedding directly (no x1000 rescaling as in diffusion models).

    model = build_unet("cifar10")        # the released CIFAR-10 architecture, zero output (v = 0)
    v = model(x_t, t)                    # x_t (B, 3, 32, 32), t (B,)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lib.models import timestep_embedding
from lib.paper import UNET_ARCHITECTURES

GROUPS = 32  # GroupNorm groups, as in guided-diffusion's normalization()


# ---------------------------------------------------------------------------------------------------------
# Configuration and presets
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of the ADM UNet (guided-diffusion names).

    attention_resolutions are downsample rates ds (1 = full resolution, 2 = half, ...), as in the
    released configs, not pixel sizes. Every channel count must be a multiple of 32 (GroupNorm groups).
    """

    image_size: int  # H = W of the network input (latent size for ffhq256_latent)
    in_channels: int
    out_channels: int
    model_channels: int  # "ch": width of the first level
    channel_mult: tuple[int, ...]  # width of level l = ch * channel_mult[l]; len = number of levels
    num_res_blocks: int  # ResBlocks per level on the way down (one more per level on the way up)
    attention_resolutions: tuple[int, ...]  # downsample rates ds that get self-attention
    num_head_channels: int = 64  # channels per attention head; heads = width // num_head_channels
    dropout: float = 0.1

    def __post_init__(self) -> None:
        # Accept lists (e.g. read back from run.json) but store tuples so the config stays hashable.
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(d) for d in self.attention_resolutions))
        self._validate()

    def _validate(self) -> None:
        levels = len(self.channel_mult)
        if levels < 1 or self.num_res_blocks < 1:
            raise ValueError("channel_mult needs at least one level and num_res_blocks must be >= 1")
        for width in self.widths:
            if width % GROUPS:
                raise ValueError(f"width {width} is not a multiple of {GROUPS} (GroupNorm groups)")
        reachable = self.downsample_rates
        for ds in self.attention_resolutions:
            if ds not in reachable:
                # A typo here would silently drop attention, so refuse it.
                raise ValueError(f"attention at ds={ds} is never reached; rates are {reachable}")
            width = self.model_channels * self.channel_mult[reachable.index(ds)]
            if width % self.num_head_channels:
                raise ValueError(f"width {width} at ds={ds} is not divisible by num_head_channels")
        if self.image_size % reachable[-1]:
            raise ValueError(f"image_size {self.image_size} must be divisible by {reachable[-1]}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width per level: ch * mult."""
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def downsample_rates(self) -> tuple[int, ...]:
        """ds of each level: 1, 2, 4, ..."""
        return tuple(2**level for level in range(len(self.channel_mult)))

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding MLP: 4 ch."""
        return 4 * self.model_channels


PRESETS: dict[str, UNetConfig] = {
    # The four released LOOM-CFM models (cifar10 also covers the cifar10_reflow checkpoint).
    **{name: UNetConfig(**settings) for name, settings in UNET_ARCHITECTURES.items()},
    # Small CPU models with the same layout: 8x8 grey digits, and a 32x32x3 stand-in for the CIFAR path.
    # digits uses 32-channel heads so the multi-head attention path runs on CPU too.
    "digits": UNetConfig(8, 1, 1, 32, (1, 2), 1, (2,), num_head_channels=32),
    "tiny": UNetConfig(32, 3, 3, 32, (1, 2), 1, (2,)),
    # The latent path on a CPU: 4 x 8 x 8 latents (a tiny autoencoder's; see lib.autoencoder). Its 4-channel
    # input and output convs tell it apart from "tiny" when a preset is read off the weights.
    "tiny_latent": UNetConfig(8, 4, 4, 32, (1, 2), 1, (2,)),
}


def resolve_config(preset: str | UNetConfig) -> UNetConfig:
    """A preset name or a config -> the config. Unknown names raise ValueError listing the valid ones."""
    if isinstance(preset, UNetConfig):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[preset]


def build_unet(preset: str | UNetConfig) -> UNet:
    """A freshly initialised UNet (output conv zero, so v_theta = 0) for a preset name or config."""
    return UNet(resolve_config(preset))


# ---------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------
class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) computed in float32 and cast back: half-precision statistics are too coarse."""

    def __init__(self, channels: int) -> None:
        super().__init__(GROUPS, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero all parameters: each residual branch (and the output) starts as the identity (resp. zero)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class ResBlock(nn.Module):
    """h = skip(x) + out_layers(in_layers(x) + emb_layers(emb)): x (B, C_in, H, W), emb (B, 4ch).

    Names: in_layers = [GN, SiLU, conv3x3], emb_layers = [SiLU, Linear], out_layers = [GN, SiLU, Dropout,
    zero conv3x3]; skip_connection is a 1x1 conv when the width changes, else the identity.
    """

    def __init__(self, channels: int, emb_dim: int, dropout: float, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        # use_scale_shift_norm=False: the embedding is simply added, broadcast over H, W.
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


def qkv_attention_legacy(qkv: Tensor, num_heads: int) -> Tensor:
    """Multi-head softmax attention with guided-diffusion's legacy QKV layout.

    qkv (B, 3 H C, T) is reshaped to (B H, 3 C, T) and split into q, k, v (each (B H, C, T)): the channels
    of one head's q, k, v are adjacent, which is what the released qkv weights assume. Attention weights
    softmax(q^T k / sqrt(C)) (guided-diffusion scales q and k by C^-1/4 each: the same number).
    Returns (B, H C, T).
    """
    batch, width3, length = qkv.shape
    ch = width3 // (3 * num_heads)
    q, k, v = qkv.reshape(batch * num_heads, 3 * ch, length).split(ch, dim=1)
    # SDPA wants (N, T, C); it picks a fused kernel on GPU, same maths as the einsum form.
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.0 / math.sqrt(ch)
    )
    return out.transpose(1, 2).reshape(batch, num_heads * ch, length)


class AttentionBlock(nn.Module):
    """x + proj_out(attention(qkv(norm(x)))) over the H W positions: x (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, num_head_channels: int) -> None:
        super().__init__()
        self.num_heads = channels // num_head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = qkv_attention_legacy(self.qkv(self.norm(x)), self.num_heads)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """conv3x3 with stride 2 (resblock_updown=False): (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then conv3x3: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """A Sequential that hands the time embedding to the ResBlocks among its layers."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


# ---------------------------------------------------------------------------------------------------------
# The UNet
# ---------------------------------------------------------------------------------------------------------
class UNet(nn.Module):
    """ADM UNet velocity field: forward(x (B, C_in, H, W), t (B,) in [0, 1]) -> v (B, C_out, H, W).

    input_blocks: conv_in, then per level num_res_blocks x [ResBlock (+ attention)] and a Downsample
    between levels; middle_block: ResBlock, attention, ResBlock; output_blocks: per level (deepest first)
    num_res_blocks + 1 x [ResBlock on concat(h, skip) (+ attention)], the last of each level but the top
    ending in an Upsample; out: GN, SiLU, zero conv3x3.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch, emb_dim = config.model_channels, config.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skip_widths = [ch]  # width of every input block's output, consumed in reverse by output_blocks
        width = ch
        for level, (ds, level_width) in enumerate(zip(config.downsample_rates, config.widths)):
            for _ in range(config.num_res_blocks):
                layers = self._res_and_attention(width, level_width, ds)
                width = level_width
                self.input_blocks.append(TimestepSequential(*layers))
                skip_widths.append(width)
            if level < len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(width)))
                skip_widths.append(width)

        self.middle_block = TimestepSequential(
            ResBlock(width, emb_dim, config.dropout, width),
            AttentionBlock(width, config.num_head_channels),
            ResBlock(width, emb_dim, config.dropout, width),
        )

        self.output_blocks = nn.ModuleList()
        levels = list(enumerate(zip(config.downsample_rates, config.widths)))
        for level, (ds, level_width) in reversed(levels):
            for i in range(config.num_res_blocks + 1):
                layers = self._res_and_attention(width + skip_widths.pop(), level_width, ds)
                width = level_width
                if level > 0 and i == config.num_res_blocks:
                    layers.append(Upsample(width))
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(width), nn.SiLU(), zero_init(nn.Conv2d(width, config.out_channels, 3, padding=1))
        )

    def _res_and_attention(self, in_width: int, out_width: int, ds: int) -> list[nn.Module]:
        """[ResBlock(in -> out)] plus an AttentionBlock when ds is an attention rate."""
        cfg = self.config
        layers: list[nn.Module] = [ResBlock(in_width, cfg.time_embed_dim, cfg.dropout, out_width)]
        if ds in cfg.attention_resolutions:
            layers.append(AttentionBlock(out_width, cfg.num_head_channels))
        return layers

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """x (B, C_in, H, W), t (B,) or a scalar in [0, 1] -> velocity (B, C_out, H, W)."""
        self._check_size(x)
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:  # ODE solvers call f(t, x) with one scalar t for the whole batch
            t = t.expand(x.shape[0])
        emb_in = timestep_embedding(t, self.config.model_channels)
        emb = self.time_embed(emb_in.to(self.time_embed[0].weight.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def _check_size(self, x: Tensor) -> None:
        """Fail early with a readable message instead of a concat shape error deep in the decoder."""
        factor = self.config.downsample_rates[-1]
        if x.ndim != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"expected x of shape (B, C, H, W) with H, W divisible by {factor}, got {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------------------
# Checking a state dict against an architecture
# ---------------------------------------------------------------------------------------------------------
@cache
def _expected_shapes_cached(config: UNetConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Built on the meta device: names and shapes without allocating or initialising any weights.
    with torch.device("meta"):
        model = UNet(config)
    return tuple((name, tuple(p.shape)) for name, p in model.state_dict().items())


def expected_shapes(preset: str | UNetConfig) -> dict[str, tuple[int, ...]]:
    """The UNet's state-dict names (in order) and shapes for a preset, without building real weights."""
    return dict(_expected_shapes_cached(resolve_config(preset)))


@dataclass
class StateDiff:
    """How a state dict differs from an architecture's: names only in one of them, and shape clashes."""

    missing: list[str] = field(default_factory=list)  # expected by the architecture, absent in the state
    unexpected: list[str] = field(default_factory=list)  # in the state, unknown to the architecture
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self, limit: int = 10) -> str:
        """Counts and the first `limit` names of each kind of difference, one line each."""
        shapes = [f"{n}: checkpoint {list(got)} vs model {list(want)}" for n, got, want in self.mismatched]
        lines = []
        for label, items in (
            ("missing keys", self.missing),
            ("unexpected keys", self.unexpected),
            ("shape mismatches", shapes),
        ):
            lines.append(f"  {len(items)} {label}" + (":" if items else ""))
            lines.extend(f"    {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")
        return "\n".join(lines)


def diff_state(unet_state: Mapping[str, Tensor], preset: str | UNetConfig) -> StateDiff:
    """Compare a bare UNet state dict (no prefixes) with a preset's expected names and shapes."""
    want = expected_shapes(preset)
    diff = StateDiff(
        missing=[k for k in want if k not in unet_state],
        unexpected=[k for k in unet_state if k not in want],
    )
    for k, v in unet_state.items():
        if k in want and tuple(v.shape) != want[k]:
            diff.mismatched.append((k, tuple(v.shape), want[k]))
    return diff
