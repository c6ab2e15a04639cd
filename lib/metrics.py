"""Metrics on point sets and sampling paths.

- :func:`exact_ot_cost` and :func:`w2`: exact optimal transport between two equal-size point sets
  (one exact assignment, so exact for the empirical measures).
- :func:`optimality_gap`: how far a pairing's cost is above the exact global optimum.
- :func:`straightness` and :func:`curvature_per_step`: how straight the sampling paths are
  (the paper's Fig. 6: 1 - cos of consecutive velocities along a fixed-grid path).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lib.couplings import CostName, cost_matrix, cost_matrix_diagonal, exact_assignment


def exact_ot_cost(x: Tensor, y: Tensor, cost: CostName = "sqeuclidean") -> float:
    """Minimum mean cost over all pairings of x (N, *shape) with y (N, *shape)."""
    if x.shape != y.shape:
        raise ValueError(f"exact OT here needs two sets of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    costs = cost_matrix(x, y, cost, exact=True)
    perm = torch.as_tensor(exact_assignment(costs, x[0].numel()), device=costs.device)
    return costs[torch.arange(len(perm), device=costs.device), perm].mean().item()


def w2(x: Tensor, y: Tensor) -> float:
    """2-Wasserstein distance between the empirical measures of x (N, *shape) and y (N, *shape)."""
    return math.sqrt(max(exact_ot_cost(x, y, "sqeuclidean"), 0.0))


def pairing_cost(x: Tensor, z: Tensor, cost: CostName = "sqeuclidean") -> float:
    """Mean cost of the given pairing x_i <-> z_i: x, z (N, *shape)."""
    return cost_matrix_diagonal(x, z, cost).double().mean().item()


def optimality_gap(cost: float, optimum: float) -> float:
    """Relative excess of a pairing's mean cost over the global optimum: (cost - optimum) / optimum."""
    return (cost - optimum) / optimum


def path_velocities(trajectory: Tensor, times: Tensor) -> Tensor:
    """Finite-difference velocities of a fixed-grid path: (T, B, *shape) -> (T - 1, B, *shape).

    For Euler these are exactly the network's velocities at each grid point.
    """
    dt = (times[1:] - times[:-1]).reshape(-1, *([1] * (trajectory.ndim - 1)))
    return (trajectory[1:] - trajectory[:-1]) / dt


def straightness(trajectory: Tensor, times: Tensor) -> float:
    """Rectified-flow straightness: mean over steps and samples of ||v_k - (x_1 - x_0)||^2 / dim.

    0 means every path is a straight line traversed at constant speed.
    """
    v = path_velocities(trajectory, times)
    chord = (trajectory[-1] - trajectory[0]).unsqueeze(0)
    weights = (times[1:] - times[:-1]).reshape(-1, *([1] * (trajectory.ndim - 1)))
    return ((v - chord).square() * weights).sum(0).flatten(1).mean().item()


def curvature_per_step(trajectory: Tensor, times: Tensor) -> Tensor:
    """Paper Fig. 6: 1 - cos(v_k, v_{k+1}) for consecutive velocities, averaged over samples.

    trajectory: (T, B, *shape) -> (T - 2,) float; entry k compares steps k and k + 1.
    """
    v = path_velocities(trajectory, times).flatten(2)
    cos = torch.nn.functional.cosine_similarity(v[:-1], v[1:], dim=-1)
    return (1 - cos).mean(dim=1)
