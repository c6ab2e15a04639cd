"""Conditional flow matching: the straight interpolation path, its velocity, time sampling, loss.

Path (paper Sec. 2): x_t = (1 - t) z + t x + sigma * eps, with z ~ N(0, I) the noise, x the data,
t ~ U(0, 1); the network v_theta(x_t, t) regresses the target velocity u_t = x - z with an MSE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

VelocityField = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, *shape), t (B,)) -> v (B, *shape)


def sample_time(
    batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> Tensor:
    """t ~ U(0, 1) -> (B,) float32. Uniform, as in the paper and the released code."""
    return torch.rand(batch_size, generator=generator, device="cpu").to(device)


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """Broadcast t (B,) against like (B, *shape) -> (B, 1, ..., 1)."""
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(z: Tensor, x: Tensor, t: Tensor, sigma: float = 0.0) -> Tensor:
    """x_t = (1 - t) z + t x (+ sigma * eps, eps ~ N(0, I)): z, x (B, *shape), t (B,) -> (B, *shape)."""
    tt = _expand(t, x)
    x_t = (1 - tt) * z + tt * x
    if sigma > 0:
        x_t = x_t + sigma * torch.randn_like(x)
    return x_t


def target_velocity(z: Tensor, x: Tensor) -> Tensor:
    """u_t = d x_t / dt = x - z: (B, *shape). Constant in t: the conditional paths are straight."""
    return x - z


def cfm_loss(model: VelocityField, z: Tensor, x: Tensor, t: Tensor, sigma: float = 0.0) -> Tensor:
    """Flow-matching loss: mean over batch and dimensions of ||v_theta(x_t, t) - (x - z)||^2 -> scalar."""
    v = model(interpolate(z, x, t, sigma), t)
    return (v - target_velocity(z, x)).square().mean()
