"""Shared pieces of the velocity-field networks v_theta(x_t, t) -> (B, *shape), and the toy MLP.

The ADM UNet (the released architecture) is in :mod:`lib.unet`, the latent autoencoder in :mod:`lib.autoencoder`;
both use :func:`timestep_embedding` and raise :class:`CheckpointError` for weights that do not fit them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CheckpointError(ValueError):
    """A checkpoint file or state dict that cannot be loaded: corrupt, incomplete or another architecture."""


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [cos(t f_k), sin(t f_k)], f_k = max_period^(-k / half), k < half = dim // 2.

    t (B,) float -> (B, dim) float32; an odd dim is padded with one zero column. At t = 0 the embedding is
    [1, ..., 1, 0, ..., 0]. The UNet takes t in [0, 1] as is (flow-matching time, no x1000 as in diffusion models).
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class MLP(nn.Module):
    """Velocity field for flat data: x (B, dim), t (B,) -> (B, dim).

    Time enters through a sinusoidal embedding of 100 t (toys need frequencies that vary over
    [0, 1]); SiLU hidden layers of width ``hidden``.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 32) -> None:
        super().__init__()
        self.dim, self.time_dim = dim, time_dim
        layers: list[nn.Module] = [nn.Linear(dim + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        shape = x.shape
        h = torch.cat([x.flatten(1), timestep_embedding(100 * t, self.time_dim)], dim=1)
        return self.net(h).reshape(shape)
