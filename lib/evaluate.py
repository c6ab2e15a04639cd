"""Evaluate a trained velocity field: sample quality per solver and NFE, and path straightness.

For point clouds (toys, digits as vectors) quality is the exact W2 to held-out target samples.
Every row records the solver and the TRUE number of network calls.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from lib.flow import VelocityField
from lib.metrics import curvature_per_step, straightness, w2
from lib.solvers import parse_solver, sample


def w2_table(model: VelocityField, z: Tensor, reference: Tensor, solvers: Sequence[str]) -> list[dict[str, object]]:
    """One row per solver: samples from noise z (N, *shape) compared with reference (N, *shape) by exact W2.

    Fixed-grid rows also carry the straightness of their own sampling paths.
    """
    rows: list[dict[str, object]] = []
    for spec in solvers:
        result = sample(model, z, spec, return_trajectory=parse_solver(spec).steps is not None)
        row: dict[str, object] = {"solver": result.spec.label, "method": result.spec.method,
                                  "nfe": result.nfe, "w2": w2(result.x, reference)}
        if result.trajectory is not None and result.trajectory.shape[0] > 2:
            row["straightness"] = straightness(result.trajectory, result.times)
        rows.append(row)
    return rows


def path_curvature(model: VelocityField, z: Tensor, steps: int = 20) -> Tensor:
    """Paper Fig. 6: 1 - cos of consecutive velocities along ``steps``-step Euler paths -> (steps - 1,)."""
    result = sample(model, z, f"euler-{steps}", return_trajectory=True)
    return curvature_per_step(result.trajectory, result.times)


def noise_like(reference: Tensor, seed: int) -> Tensor:
    """Evaluation noise N(0, I) shaped like ``reference`` (N, *shape), fixed by ``seed``."""
    return torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed))
