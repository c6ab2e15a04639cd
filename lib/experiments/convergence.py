"""How LOOM's pairing converges (Theorem 1 in practice) and how far it ends from the global optimum.

Here the whole dataset fits one exact assignment, so the gap to the global optimum is measured, not
bounded. With C caches the table pairs N*C noises with N*C slots (every example C times) and the
write-back can move a seed between caches, so the global problem is the (NC x NC) assignment.

At CIFAR-10 scale (2N = 100k examples x 4 caches) that assignment is out of reach, so :func:`converge_table`
converges a seed table by re-pairing alone (no training) and :func:`subset_gaps` measures its gap on random
subsets of table slots small enough for an exact assignment: the gap of the slots' current pairing to the best
pairing of the same data and noises (notebook 05).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lib.couplings import (
    CostName,
    LoomCoupling,
    MinibatchOTCoupling,
    converge_pairing,
    cost_matrix,
    epoch_batches,
    exact_assignment,
    noise_from_seeds,
    total_pairing_cost,
)
from lib.metrics import exact_ot_cost, optimality_gap

Fetch = Callable[[Tensor], Tensor]  # example indices (B,) -> their data (B, *shape) on the working device


@dataclass(frozen=True)
class ConvergenceSetting:
    """One convergence run: data (N, *shape) is passed separately."""

    batch_size: int
    num_caches: int = 1
    epochs: int = 60
    cost: CostName = "l2"
    seed: int = 0


def table_noise(loom: LoomCoupling, shape: tuple[int, ...]) -> Tensor:
    """All noises of the seed table, cache-major: (C * N, *shape); row c*N + i is example i's cache c."""
    index = torch.arange(loom.num_examples)
    return torch.cat([loom.noise(index, c, "cpu", shape) for c in range(loom.num_caches)])


def global_optimum(loom: LoomCoupling, data: Tensor) -> float:
    """Mean cost of the best possible re-pairing of the table's noises with (data repeated C times)."""
    slots = data.repeat(loom.num_caches, *([1] * (data.ndim - 1)))
    return exact_ot_cost(slots, table_noise(loom, tuple(data.shape[1:])), loom.cost)


def run_loom_convergence(data: Tensor, setting: ConvergenceSetting) -> list[dict[str, float]]:
    """Re-pair with LOOM for ``setting.epochs`` epochs (no training: the pairing alone converges).

    data: (N, *shape). One record per epoch (epoch 0 = the initial random pairing): swaps in the
    epoch, mean cost of the whole table, and its relative gap to the exact global optimum.
    """
    loom = LoomCoupling(len(data), setting.num_caches, seed=setting.seed, cost=setting.cost)
    optimum = global_optimum(loom, data)
    generator = torch.Generator().manual_seed(setting.seed + 1)
    records = [_record(0, 0, total_pairing_cost(loom, data), optimum)]
    for epoch in range(1, setting.epochs + 1):
        swaps = sum(
            loom(data[index], index).stats.swaps for index in epoch_batches(len(data), setting.batch_size, generator)
        )
        records.append(_record(epoch, swaps, total_pairing_cost(loom, data), optimum))
    return records


def _record(epoch: int, swaps: int, cost: float, optimum: float) -> dict[str, float]:
    return {"epoch": epoch, "swaps": swaps, "cost": cost, "optimum": optimum, "gap": (cost - optimum) / optimum}


def minibatch_ot_expected_cost(
    data: Tensor, batch_size: int, cost: CostName = "l2", epochs: int = 5, seed: int = 0
) -> float:
    """Mean pairing cost minibatch OT-CFM trains on: fresh noise, exact in-batch assignment, averaged."""
    coupling = MinibatchOTCoupling(seed=seed, cost=cost)
    generator = torch.Generator().manual_seed(seed + 1)
    costs = [
        coupling(data[index], index).stats.cost_after
        for _ in range(epochs)
        for index in epoch_batches(len(data), batch_size, generator)
    ]
    return float(np.mean(costs))


def independent_expected_cost(data: Tensor, cost: CostName = "l2", seed: int = 0) -> float:
    """Mean cost of a random pairing with fresh noise (what I-CFM trains on)."""
    z = torch.randn(data.shape, generator=torch.Generator().manual_seed(seed))
    return cost_matrix(data, z, cost).diagonal().double().mean().item()


# ---------------------------------------------------------------------------------------------
# Dataset scale: converge without training, then the gap on subsets an exact assignment can solve
# ---------------------------------------------------------------------------------------------


def converge_table(
    num_examples: int,
    fetch: Fetch,
    setting: ConvergenceSetting,
) -> tuple[LoomCoupling, Tensor, list[dict[str, float]]]:
    """Re-pair a fresh LOOM seed table (num_examples, setting.num_caches) over shuffled epochs of
    ``setting.batch_size`` until an epoch makes no swap or ``setting.epochs`` pass, without training.

    fetch: example indices (B,) -> data (B, *shape) (a dataset with flipped copies: all of them, each owns seeds).
    Returns (the converged coupling, the initial seed table (num_examples, C), one record per epoch: epoch,
    swaps, batch_cost; see lib.couplings.converge_pairing, the pass "train after convergence" makes).
    """
    loom = LoomCoupling(num_examples, setting.num_caches, seed=setting.seed, cost=setting.cost)
    initial = loom.seeds.clone()
    examples = torch.arange(num_examples)  # converge_pairing takes any sized data; fetch reads the real one
    history = converge_pairing(loom, examples, setting.batch_size, setting.epochs, setting.seed + 1, fetch)
    return loom, initial, history


def subset_gaps(
    tables: dict[str, Tensor],
    fetch: Fetch,
    sizes: Sequence[int],
    repeats: int,
    cost: CostName = "l2",
    seed: int = 0,
) -> list[dict[str, float | str]]:
    """The optimality gap of seed tables on random subsets of their slots.

    tables: name -> seed table (N, C) int64 (e.g. "initial" and "converged", the same seed multiset). For each
    size M and repeat, M distinct slots (example i, cache c) are drawn (the same slots for every table); their data
    x_i and noises z(seed[i, c]) are paired as the table pairs them, and the gap is (pairing cost - cost of the
    exact optimal pairing of the same M data and M noises) / that optimum. A table that is m-locally optimal has
    no improving cycle inside one minibatch; larger subsets show how far it is from the global optimum.
    Returns rows {table, size, repeat, cost, optimum, gap}.
    """
    first = next(iter(tables.values()))
    slots, num_caches = first.numel(), first.shape[1]
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, float | str]] = []
    for size in sizes:
        if not 2 <= size <= slots:
            raise ValueError(f"subset size {size} must be between 2 and the table's {slots} slots")
        for repeat in range(repeats):
            chosen = torch.randperm(slots, generator=generator)[:size]
            examples, caches = chosen // num_caches, chosen % num_caches
            x = fetch(examples)
            for name, seeds in tables.items():
                z = noise_from_seeds(seeds[examples, caches], tuple(x.shape[1:]), x.device)
                costs = cost_matrix(x, z, cost, exact=True)  # float64: the pairing and the optimum alike
                perm = torch.as_tensor(exact_assignment(costs, x[0].numel()), device=costs.device)
                now = costs.diagonal().mean().item()
                best = costs[torch.arange(size, device=costs.device), perm].mean().item()
                rows.append(
                    {
                        "table": name,
                        "size": size,
                        "repeat": repeat,
                        "cost": now,
                        "optimum": best,
                        "gap": optimality_gap(now, best),
                    }
                )
    return rows


def mean_gaps(rows: Sequence[dict[str, float | str]]) -> list[dict[str, float | str]]:
    """Rows of :func:`subset_gaps` averaged over repeats -> {table, size, gap, gap_min, gap_max, repeats}."""
    out = []
    for key in dict.fromkeys((r["table"], r["size"]) for r in rows):
        gaps = [float(r["gap"]) for r in rows if (r["table"], r["size"]) == key]
        out.append(
            {
                "table": key[0],
                "size": key[1],
                "gap": float(np.mean(gaps)),
                "gap_min": min(gaps),
                "gap_max": max(gaps),
                "repeats": len(gaps),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Explicit point sets: Fig. 2 (one local reassignment) and the regular-polygon counterexample
# ---------------------------------------------------------------------------------------------


def reassign_batch(x: Tensor, z: Tensor, pairing: Tensor, batch: Tensor, cost: CostName = "l2") -> Tensor:
    """One local reassignment on an explicit pairing (what a LOOM step does to its seed table).

    x: (N, d) data, z: (M, d) noise, pairing: (N,) noise index of each example, batch: (B,) examples.
    Returns the new pairing (N,): the batch's noises re-assigned exactly among the batch, the rest kept.
    """
    chosen = pairing[batch]
    perm = torch.as_tensor(exact_assignment(cost_matrix(x[batch], z[chosen], cost), x[0].numel()))
    new = pairing.clone()
    new[batch] = chosen[perm]
    return new


def polygon_counterexample(n: int, eps: float = 0.05) -> tuple[Tensor, Tensor, Tensor]:
    """Data on alternate vertices of a regular 2n-gon, noise on the others rotated by ``eps``.

    Returns x (n, 2), z (n, 2) and the stuck pairing (n,): example k is paired with the noise just
    counter-clockwise of it (angle gap pi/n + eps). Shifting every pair by one (gap pi/n - eps) is
    cheaper, but only as one cycle through all n points: inside a minibatch a partial shift must
    close its cycle with a long jump back, which costs more than the shift saves unless the batch
    covers most of the polygon. So small-minibatch re-pairing (OT-CFM, LOOM) is stuck at an m-local
    optimum that is not global (the paper's counterexample); notebook 01 measures which m escape.
    """
    k = torch.arange(n, dtype=torch.float64)
    data_angle = 2 * torch.pi * k / n
    noise_angle = data_angle + torch.pi / n + eps
    to_xy = lambda a: torch.stack([torch.cos(a), torch.sin(a)], dim=1).float()  # noqa: E731
    return to_xy(data_angle), to_xy(noise_angle), torch.arange(n)


def minibatch_sweeps(
    x: Tensor, z: Tensor, pairing: Tensor, batch_size: int, epochs: int, cost: CostName = "l2", seed: int = 0
) -> tuple[Tensor, list[float]]:
    """Repeated local reassignments over shuffled epochs; returns the final pairing and the mean cost per epoch."""
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        for batch in epoch_batches(len(x), batch_size, generator):
            pairing = reassign_batch(x, z, pairing, batch, cost)
        history.append(cost_matrix(x, z[pairing], cost).diagonal().double().mean().item())
    return pairing, history
