"""The exact assignment: lapjv returns scipy's permutation (the reference and the released code's solver) on random
problems of every size and dtype; ties, degenerate and tiny inputs go to scipy; without lapjv, scipy alone."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from lib import assignment
from lib.couplings import cost_matrix, exact_assignment

pytestmark = pytest.mark.skipif(
    assignment.solver_for(assignment.LAPJV_MIN_DIM) != "lapjv", reason="lapjv is not installed"
)


def scipy_perm(costs: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(costs)
    return cols[np.argsort(rows)]


def pairing_costs(m: int, d: int, seed: int, cost: str = "l2") -> np.ndarray:
    """The float32 training cost matrix (m, m) of uniform data in [-1, 1]^d against Gaussian noise, as in a step."""
    generator = torch.Generator().manual_seed(seed)
    x, z = torch.rand(m, d, generator=generator) * 2 - 1, torch.randn(m, d, generator=generator)
    return cost_matrix(x, z, cost).numpy()


def test_lapjv_certifies_and_returns_scipys_permutation_on_random_pairing_problems():
    """120 problems, m 3..256, d 2..3072, both costs, float32 as trained and float64: lapjv's own answer (not the
    fallback) is certified every time and equals scipy's permutation."""
    rng = np.random.default_rng(0)
    for trial in range(120):
        m, d = int(rng.integers(3, 257)), int(rng.choice([2, 3, 64, 3072]))
        costs = pairing_costs(m, d, trial, "l2" if trial % 2 else "sqeuclidean")
        for c in (costs, costs.astype(np.float64)):
            fast = assignment.lapjv_if_unique(c)
            assert fast is not None, (m, d)  # random problems have a unique optimum: lapjv's answer is used
            assert np.array_equal(fast, scipy_perm(c)) and np.array_equal(exact_assignment(c, d), fast)


def test_ties_go_to_scipy_which_breaks_them_as_the_released_code_does():
    """Equal costs leave a solver a choice: raw lapjv picks another optimal permutation than scipy, so the
    certificate refuses it and exact_assignment returns scipy's."""
    ones = np.ones((6, 6))
    raw = assignment._lapjv.lapjv(ones, force_doubles=True)[0]
    assert not np.array_equal(raw, scipy_perm(ones))  # what the certificate guards against
    assert assignment.lapjv_if_unique(ones) is None
    assert np.array_equal(exact_assignment(ones, 64), scipy_perm(ones))
    # Duplicate data rows (the same image twice in a batch): their rows of the matrix are equal.
    x = torch.rand(40, 12, generator=torch.Generator().manual_seed(3))
    x[7], x[30], x[31] = x[2], x[5], x[5]
    costs = cost_matrix(x, torch.randn(40, 12, generator=torch.Generator().manual_seed(4))).numpy()
    assert assignment.lapjv_if_unique(costs) is None
    assert np.array_equal(exact_assignment(costs, 12), scipy_perm(costs))
    for degenerate in (np.zeros((5, 5)), np.arange(25.0).reshape(5, 5), np.add.outer(np.arange(5.0), np.arange(5.0))):
        assert np.array_equal(exact_assignment(degenerate, 64), scipy_perm(degenerate))  # every permutation ties


@pytest.mark.parametrize("m", [0, 1, 2, 3])
def test_tiny_problems(m):
    costs = pairing_costs(max(m, 1), 5, m)[:m, :m]
    perm = exact_assignment(costs, 64)
    assert perm.dtype == np.int64 and sorted(perm.tolist()) == list(range(m))
    assert np.array_equal(perm, scipy_perm(costs))


def test_the_certificate_refuses_a_wrong_answer():
    costs = pairing_costs(30, 8, 1).astype(np.float64)
    perm, _, (_, u, v) = assignment._lapjv.lapjv(costs, force_doubles=True)
    perm = perm.astype(np.int64)
    assert assignment.unique_optimum(costs, perm, u, v)
    swapped = perm.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert not assignment.unique_optimum(costs, swapped, u, v)  # not optimal: a reduced cost on it is > 0
    assert not assignment.unique_optimum(costs, perm, u + 1.0, v)  # duals that violate r >= 0
    repeated = perm.copy()
    repeated[0] = repeated[1]
    assert not assignment.unique_optimum(costs, repeated, u, v)  # not a permutation


def test_without_lapjv_scipy_solves_alone_with_the_same_answers(monkeypatch):
    costs = [pairing_costs(m, 16, m) for m in (4, 64, 128)]
    fast = [exact_assignment(c, 16) for c in costs]
    monkeypatch.setattr(assignment, "_lapjv", None)
    assert assignment.solver_for(16) == "scipy"
    assert assignment.solver_description().startswith("scipy")
    for c, perm in zip(costs, fast):
        assert np.array_equal(exact_assignment(c, 16), perm)
    with pytest.raises(ValueError, match="lapjv solver is not installed"):
        assignment.exact_assignment(costs[0], solver="lapjv")


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="square cost matrix"):
        exact_assignment(np.ones((3, 4)), 64)
    with pytest.raises(ValueError, match="unknown assignment solver"):
        assignment.exact_assignment(np.ones((3, 3)), solver="hungarian")
    nan = np.ones((4, 4))
    nan[1, 2] = np.nan
    assert assignment.lapjv_if_unique(nan) is None  # left to scipy, which refuses it with its own message
    with pytest.raises(ValueError):
        exact_assignment(nan, 64)


def test_another_matching_on_the_tight_edges_is_found_exactly_when_there_is_one():
    """perm = identity on 4 rows; off-perm tight edges (row, column) form a cycle 0 -> 1 -> 2 -> 0 (swap along it:
    another optimal matching) or only a chain (no other matching)."""
    identity, diagonal = np.arange(4), [(i, i) for i in range(4)]

    def cycle(edges):
        rows, cols = np.array([e[0] for e in edges + diagonal]), np.array([e[1] for e in edges + diagonal])
        return assignment.alternating_cycle(4, rows, cols, identity)

    assert cycle([(0, 1), (1, 2), (2, 0)]) and cycle([(0, 1), (1, 0), (3, 0)])
    assert not cycle([(0, 1), (1, 2), (2, 3)]) and not cycle([]) and not cycle([(3, 0), (3, 1), (2, 1)])


def test_low_dimensional_points_go_to_scipy_where_lapjv_crawls():
    """lapjv's augmenting row reduction is 5-25x slower than scipy on 2-D point sets (lib.assignment's docstring): the
    solver is chosen by the points' dimension (0: unknown, scipy)."""
    assert [assignment.solver_for(d) for d in (0, 2, 4, 7, 8, 64, 3072)] == ["scipy"] * 4 + ["lapjv"] * 3
    assert assignment.solver_description().startswith("lapjv") and "8 values" in assignment.solver_description()


def test_loom_on_digits_pairs_the_same_with_lapjv_as_with_scipy_alone(monkeypatch):
    """Three epochs of LOOM on scikit-learn's digits (64 values, lapjv's side of LAPJV_MIN_DIM; digits repeats some
    images, so ties occur): the seed table and every returned noise are the same, bit for bit, as with scipy alone."""
    from lib.couplings import LoomCoupling, epoch_batches
    from lib.toy import digits_vectors

    x = digits_vectors()[0].flatten(1).float()

    def run():
        loom, generator, out = LoomCoupling(len(x), 2, seed=1), torch.Generator().manual_seed(0), []
        for _ in range(3):
            out += [loom(x[index], index).z for index in epoch_batches(len(x), 128, generator)]
        return loom.seeds, out

    calls, solve = [], assignment.lapjv_if_unique

    def counted(costs):
        perm = solve(costs)
        calls.append(perm is not None)
        return perm

    monkeypatch.setattr(assignment, "lapjv_if_unique", counted)
    fast_seeds, fast = run()
    assert len(calls) == 42 and sum(calls) >= 40  # lapjv's own answer certified on nearly every step
    monkeypatch.setattr(assignment, "_lapjv", None)
    slow_seeds, slow = run()
    assert torch.equal(fast_seeds, slow_seeds) and all(torch.equal(a, b) for a, b in zip(fast, slow, strict=True))
