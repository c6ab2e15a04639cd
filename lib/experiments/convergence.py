"""How far LOOM's pairing ends from the global optimum: the optimum itself, and its estimate at dataset scale.

Where the whole dataset fits one exact assignment (notebook 02 re-pairs digits and 2-D toys; notebook 12 measures
its tables), :func:`global_optimum` gives the gap to the global optimum, measured, not bounded. With C caches the
table pairs N*C noises with N*C slots (every example C times) and the write-back can move a seed between caches,
so the global problem is the (NC x NC) assignment.

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
    converge_pairing,
    cost_matrix,
    exact_assignment,
    noise_from_seeds,
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
