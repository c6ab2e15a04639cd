"""LOOM's pairing at dataset scale: converging a seed table without training, and its gap on exact subsets."""

from __future__ import annotations

import pytest
import torch

from lib.couplings import total_pairing_cost
from lib.experiments import convergence
from lib.experiments.convergence import ConvergenceSetting


def points(n: int = 48, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0)) + 2.0


def test_converge_table_stops_without_swaps_and_keeps_the_seed_multiset() -> None:
    x = points()
    loom, initial, history = convergence.converge_table(len(x), x.__getitem__, ConvergenceSetting(8, 2, epochs=200))
    assert history[-1]["swaps"] == 0 and history[0]["swaps"] > 0
    assert torch.equal(loom.seeds.flatten().sort().values, initial.flatten().sort().values)
    assert not torch.equal(loom.seeds, initial)


def test_subset_gaps_measure_the_pairing_against_the_exact_optimum_of_the_same_points() -> None:
    x = points()
    loom, initial, _ = convergence.converge_table(len(x), x.__getitem__, ConvergenceSetting(8, 2, epochs=200))
    tables = {"initial": initial, "converged": loom.seeds}
    rows = convergence.subset_gaps(tables, x.__getitem__, [8, 96], repeats=2, seed=3)
    assert [(r["table"], r["size"], r["repeat"]) for r in rows[:4]] == [
        ("initial", 8, 0),
        ("converged", 8, 0),
        ("initial", 8, 1),
        ("converged", 8, 1),
    ]
    assert all(r["gap"] >= -1e-9 and r["optimum"] <= r["cost"] + 1e-9 for r in rows)
    # 96 = every slot (48 examples x 2 caches): the subset's optimum is the global one, its cost the table's.
    whole = {r["table"]: r for r in rows if r["size"] == 96 and r["repeat"] == 0}
    assert whole["converged"]["optimum"] == pytest.approx(convergence.global_optimum(loom, x), rel=1e-5)
    assert whole["converged"]["cost"] == pytest.approx(total_pairing_cost(loom, x), rel=1e-5)
    assert whole["converged"]["optimum"] == pytest.approx(whole["initial"]["optimum"], rel=1e-9)  # same noises
    assert whole["converged"]["gap"] < 0.25 * whole["initial"]["gap"]
    summary = {(r["table"], r["size"]): r for r in convergence.mean_gaps(rows)}
    assert (
        summary["converged", 96]["repeats"] == 2
        and summary["converged", 96]["gap_min"] <= summary["converged", 96]["gap"]
    )
    with pytest.raises(ValueError, match="subset size 97 must be between 2 and the table's 96 slots"):
        convergence.subset_gaps(tables, x.__getitem__, [97], repeats=1)
