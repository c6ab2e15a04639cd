"""Velocity-field networks v_theta(x_t, t) -> (B, *shape).

The toy MLP lives here; the ADM UNet (which loads the released checkpoints) is in :mod:`lib.unet`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [cos(t f_k), sin(t f_k)], f_k = exp(-ln(max_period) k / half): t (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


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
