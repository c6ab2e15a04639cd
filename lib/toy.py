"""Small datasets for CPU work: 2-D toy distributions and scikit-learn's digits as flat vectors.

Every sampler takes a ``torch.Generator`` so results are reproducible. Finite datasets carry
example indices, the identity LOOM stores seeds against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Sampler = Callable[[int, torch.Generator], Tensor]  # (n, generator) -> (n, 2)


def gaussian(n: int, generator: torch.Generator) -> Tensor:
    """Standard 2-D Gaussian N(0, I) -> (n, 2)."""
    return torch.randn(n, 2, generator=generator)


def eight_gaussians(n: int, generator: torch.Generator, radius: float = 4.0, std: float = 0.4) -> Tensor:
    """Eight Gaussians on a circle of ``radius`` -> (n, 2)."""
    k = torch.randint(8, (n,), generator=generator).float()
    centers = radius * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], dim=1)
    return centers + std * torch.randn(n, 2, generator=generator)


def moons(n: int, generator: torch.Generator, noise: float = 0.1) -> Tensor:
    """Two interleaving half circles, centred and scaled to about unit spread -> (n, 2)."""
    upper = torch.rand(n, generator=generator) < 0.5
    angle = math.pi * torch.rand(n, generator=generator)
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x, y], dim=1) + noise * torch.randn(n, 2, generator=generator)
    return (points - torch.tensor([0.5, 0.25])) * 2.0


def checkerboard(n: int, generator: torch.Generator) -> Tensor:
    """Uniform on the dark squares of a 4x4 board on [-4, 4]^2 -> (n, 2) (the FFJORD layout)."""
    x1 = torch.rand(n, generator=generator) * 4 - 2
    x2 = torch.rand(n, generator=generator) - 2 * torch.randint(2, (n,), generator=generator).float()
    x2 = x2 + torch.floor(x1) % 2  # shift every other column up by one square
    return torch.stack([x1, x2], dim=1) * 2


def spirals(n: int, generator: torch.Generator, noise: float = 0.1) -> Tensor:
    """Two interleaved spirals scaled to about [-4, 4]^2 -> (n, 2)."""
    r = torch.sqrt(torch.rand(n, generator=generator)) * 3 * math.pi
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    points = sign[:, None] * torch.stack([r * torch.cos(r), r * torch.sin(r)], dim=1) / math.pi
    return points * 1.3 + noise * torch.randn(n, 2, generator=generator)


TOYS: dict[str, Sampler] = {
    "gaussian": gaussian,
    "8gaussians": eight_gaussians,
    "moons": moons,
    "checkerboard": checkerboard,
    "spirals": spirals,
}


def sample_toy(name: str, n: int, seed: int = 0) -> Tensor:
    """n points of toy distribution ``name`` -> (n, 2), reproducible from ``seed``."""
    if name not in TOYS:
        raise ValueError(f"unknown toy distribution {name!r}; use one of {sorted(TOYS)}")
    return TOYS[name](n, torch.Generator().manual_seed(seed))


def toy_dataset(name: str, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A finite sample with example indices: (index (n,) int64, x (n, 2)); x[i] is example i."""
    return torch.arange(n), sample_toy(name, n, seed)


def digits_vectors() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 digits as flat vectors in [-1, 1]: (x (1797, 64) float32, labels (1797,))."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 8.0 - 1.0  # pixels are 0..16
    return x, torch.tensor(digits.target, dtype=torch.int64)


def digits_split_indices(
    split: Literal["all", "train", "test"], test_fraction: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Indices into scikit-learn's 1797 digits for a split, sorted ascending -> (n,) int64.

    The split is stratified by label with ``train_test_split(random_state=seed)``: the one split of the
    kit: the flows, lib.fid's digits classifier and the ablations all train on "train" and score on "test".
    """
    from sklearn.model_selection import train_test_split  # scikit-learn's import costs ~1 s: only when splitting

    labels = digits_vectors()[1].numpy()
    every = np.arange(len(labels))
    if split == "all":
        return every
    if split not in ("train", "test"):
        raise ValueError(f"unknown digits split {split!r}; use 'all', 'train' or 'test'")
    train, test = train_test_split(every, test_size=test_fraction, random_state=seed, stratify=labels)
    return np.sort(train if split == "train" else test)
