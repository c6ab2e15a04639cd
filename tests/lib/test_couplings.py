"""Invariants of the couplings: permutations, monotone LOOM cost, seed multiset, exactness."""

import pytest
import torch

from lib.couplings import (
    SEED_HIGH,
    IndependentCoupling,
    LoomCoupling,
    MinibatchOTCoupling,
    _fresh_noise,
    cost_matrix,
    epoch_batches,
    exact_assignment,
    flipped_epoch_batches,
    make_coupling,
    noise_from_seeds,
    total_pairing_cost,
)
from lib.metrics import exact_ot_cost


def data(n=64, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + 3.0


def test_exact_assignment_is_a_permutation_and_optimal_on_small_case():
    costs = torch.rand(7, 7, generator=torch.Generator().manual_seed(1))
    perm = exact_assignment(costs)
    assert sorted(perm.tolist()) == list(range(7))
    import itertools

    best = min(sum(costs[i, p[i]].item() for i in range(7)) for p in itertools.permutations(range(7)))
    assert sum(costs[i, perm[i]].item() for i in range(7)) == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("name", ["independent", "minibatch_ot", "loom"])
def test_coupling_returns_a_permutation_of_its_noise(name):
    x = data()
    index = torch.arange(len(x))
    coupling = make_coupling(name, len(x), seed=3)
    fresh = make_coupling(name, len(x), seed=3)
    out = coupling(x, index)
    assert torch.equal(out.x, x)
    # The same coupling state draws the same noise; the output rows are that noise permuted.
    if name == "loom":
        unpaired = noise_from_seeds(fresh.seeds[index, 0], (5,), "cpu")
    else:
        unpaired = _fresh_noise(x, fresh.generator)
    rows = [int(torch.nonzero((unpaired == row).all(dim=1))[0]) for row in out.z]
    assert sorted(rows) == list(range(len(x)))


def test_minibatch_ot_cost_matches_exact_ot_and_never_exceeds_before():
    x = data()
    out = MinibatchOTCoupling(seed=0, cost="sqeuclidean")(x, torch.arange(len(x)))
    assert out.stats.cost_after <= out.stats.cost_before + 1e-6
    assert out.stats.cost_after == pytest.approx(exact_ot_cost(x, out.z, "sqeuclidean"), rel=1e-5)


def test_independent_keeps_order_and_reports_no_swaps():
    out = IndependentCoupling(seed=0)(data(), torch.arange(64))
    assert out.stats.swaps == 0 and out.stats.cost_before == out.stats.cost_after


@pytest.mark.parametrize("cost", ["l2", "sqeuclidean"])
@pytest.mark.parametrize("caches", [1, 3])
def test_loom_never_increases_total_cost_and_keeps_seed_multiset(cost, caches):
    x = data(96)
    loom = LoomCoupling(len(x), caches, seed=1, cost=cost)
    multiset = sorted(loom.seeds.flatten().tolist())
    generator = torch.Generator().manual_seed(0)
    previous = total_pairing_cost(loom, x)
    for _ in range(4):
        for index in epoch_batches(len(x), 16, generator):
            stats = loom(x[index], index).stats
            assert stats.cost_after <= stats.cost_before + 1e-6
            now = total_pairing_cost(loom, x)
            assert now <= previous + 1e-5 * abs(previous)
            previous = now
            assert sorted(loom.seeds.flatten().tolist()) == multiset


def test_loom_writes_back_so_returned_noise_is_what_the_table_now_holds():
    x = data(32)
    loom = LoomCoupling(len(x), 1, seed=0)
    index = torch.randperm(32, generator=torch.Generator().manual_seed(2))[:16]
    out = loom(x[index], index)
    assert torch.equal(out.z, loom.noise(index, 0, "cpu", (5,)))


def test_loom_with_batch_equal_dataset_reaches_the_exact_optimum_in_one_pass():
    x = data(50)
    loom = LoomCoupling(len(x), 1, seed=4, cost="sqeuclidean")
    z = loom.noise(torch.arange(50), 0, "cpu", (5,))
    optimum = exact_ot_cost(x, z, "sqeuclidean")
    loom(x, torch.arange(50))
    assert total_pairing_cost(loom, x) == pytest.approx(optimum, rel=1e-5)
    assert loom(x, torch.arange(50)).stats.swaps == 0  # converged: nothing left to improve


def test_regenerating_a_seed_gives_the_same_noise_every_call():
    seeds = torch.tensor([5, 2**31 + 7, 5])
    a = noise_from_seeds(seeds, (3, 4), "cpu")
    b = noise_from_seeds(seeds, (3, 4), "cpu")
    assert torch.equal(a, b) and torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])


def test_cpu_noise_is_the_released_codes_noise_bit_for_bit():
    """Row b is torch.randn from a CPU generator seeded with seeds[b] (how the released code draws an example's
    noise; official_measurements.md: bit-identical), pinned to values recorded before the coupling was optimised."""
    seeds = torch.tensor([0, 12345, 2**32 - 1])
    z = noise_from_seeds(seeds, (3, 8), "cpu")  # 24 values: torch's vectorised path (16 or more)
    for row, seed in zip(z, seeds.tolist()):
        assert torch.equal(row, torch.randn((3, 8), generator=torch.Generator().manual_seed(seed)))
    assert z[:, 0, :2].tolist() == [
        [-1.1258398294448853, -1.152360200881958],
        [-1.479807734489441, 0.48730599880218506],
        [-2.664297580718994, -1.0910485982894897],
    ]
    assert noise_from_seeds(torch.tensor([7]), (2,), "cpu").tolist() == [[-0.1467950940132141, 0.7861412763595581]]


def test_training_cost_matrix_is_the_exact_one_in_float32():
    """One float32 matrix product over precomputed norms agrees with float64 direct differences, never negative."""
    x, z = torch.rand(40, 3, 4, 4) * 2 - 1, torch.randn(50, 3, 4, 4)
    for cost in ("l2", "sqeuclidean"):
        fast, exact = cost_matrix(x, z, cost), cost_matrix(x, z, cost, exact=True)
        assert fast.dtype == torch.float32 and exact.dtype == torch.float64 and fast.shape == (40, 50)
        torch.testing.assert_close(fast.double(), exact, rtol=1e-5, atol=1e-5)
    assert cost_matrix(x, x).min() >= 0 and cost_matrix(x, x).diagonal().max() < 1e-2  # cancellation clamped


def test_seed_range_is_the_generators_real_seed_space():
    """torch's CPU generator ignores seed bits above 32, so the table draws from [0, 2**32) and no wider."""
    same = noise_from_seeds(torch.tensor([9, 9 + 2**32]), (8,), "cpu")
    assert torch.equal(same[0], same[1])  # why SEED_HIGH is 2**32: wider seeds would collide silently
    loom = LoomCoupling(4096, 2, seed=0)
    assert int(loom.seeds.max()) < SEED_HIGH == 2**32
    assert loom.seeds.unique().numel() >= loom.seeds.numel() - 2  # birthday bound: ~1e-3 expected repeats


def test_no_swaps_keeps_the_table_fixed_and_redraw_changes_it():
    x = data(32)
    loom = LoomCoupling(32, 2, no_swaps=True)
    before = loom.seeds.clone()
    assert loom(x, torch.arange(32)).stats.swaps == 0
    assert torch.equal(loom.seeds, before)
    loom.redraw()
    assert not torch.equal(loom.seeds, before)


def test_first_visit_draws_seeds_lazily():
    loom = LoomCoupling(40, 1, seed_init="first_visit")
    assert (loom.seeds == LoomCoupling.UNSEEN).all()
    loom(data(40)[:8], torch.arange(8))
    assert (loom.seeds[:8] != LoomCoupling.UNSEEN).all() and (loom.seeds[8:] == LoomCoupling.UNSEEN).all()


def test_first_visit_refuses_noise_of_unvisited_slots():
    """An unvisited slot has no seed yet: its noise (and the table's total cost) is an error, not the noise of the
    placeholder seed shared by every such slot."""
    loom = LoomCoupling(40, 1, seed_init="first_visit")
    x = data(40)
    loom(x[:8], torch.arange(8))
    assert loom.noise(torch.arange(8), 0, "cpu", (5,)).shape == (8, 5)
    with pytest.raises(ValueError, match=r"2 example\(s\) \(e.g. \[8, 9\]\) have no noise in cache 0"):
        loom.noise(torch.arange(6, 10), 0, "cpu", (5,))
    with pytest.raises(ValueError, match="first_visit"):
        total_pairing_cost(loom, x)
    loom(x[8:], torch.arange(8, 40))
    assert total_pairing_cost(loom, x) > 0


def test_state_dict_round_trip_continues_identically():
    x = data(48)
    a = LoomCoupling(48, 2, seed=9)
    a(x[:16], torch.arange(16))
    b = LoomCoupling(48, 2, seed=0)
    b.load_state_dict(a.state_dict())
    out_a, out_b = a(x[16:32], torch.arange(16, 32)), b(x[16:32], torch.arange(16, 32))
    assert torch.equal(out_a.z, out_b.z) and torch.equal(a.seeds, b.seeds)


def test_cost_option_changes_the_matrix():
    x, z = data(4), data(4, seed=1)
    assert torch.allclose(cost_matrix(x, z, "sqeuclidean"), cost_matrix(x, z, "l2") ** 2, rtol=1e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda: make_coupling("sinkhorn", 4), "unknown coupling 'sinkhorn'"),
        (lambda: make_coupling("loom", 4, cost="l1"), "unknown cost 'l1'"),
        (lambda: LoomCoupling(8)(data(4), torch.arange(3)), "index must have shape"),
        (lambda: LoomCoupling(8)(data(4), torch.tensor([0, 1, 1, 2])), "repeats an example index"),
        (lambda: LoomCoupling(8)(data(4), torch.arange(6, 10)), "out of range"),
        (lambda: LoomCoupling(8).load_state_dict(LoomCoupling(9).state_dict()), "seed table in the state"),
        (lambda: LoomCoupling(8).load_state_dict(IndependentCoupling().state_dict()), "coupling state is for"),
    ],
)
def test_bad_input_names_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_fixed_pairs_coupling_gives_each_example_its_own_noise():
    from lib.couplings import fixed_pairs_coupling

    seeds = torch.tensor([11, 7, 5, 3, 2])
    coupling = fixed_pairs_coupling(seeds)
    x, index = data(3), torch.tensor([4, 0, 2])
    out = coupling(x, index)
    assert torch.equal(out.z, noise_from_seeds(seeds[index], (5,), "cpu")) and out.stats.swaps == 0
    assert torch.equal(coupling.seeds[:, 0], seeds)


def _flip_pairs(n):
    """Images k of a flipped dataset of n images: examples [k, k + n] (lib.datasets.IndexedImages.flip_pairs)."""
    return torch.stack([torch.arange(n), torch.arange(n) + n], dim=1)


def test_a_released_epoch_visits_each_image_once_as_itself_or_its_flipped_copy():
    n = 600
    epoch = torch.cat(flipped_epoch_batches(_flip_pairs(n), 50, torch.Generator().manual_seed(0)))
    assert len(epoch) == n and sorted((epoch % n).tolist()) == list(range(n))  # each image exactly once
    assert 0 < int((epoch >= n).sum()) < n  # some as the flipped copy i + N, some as themselves
    # The last partial batch is dropped, as in epoch_batches: 600 images at batch 128 are 4 steps of distinct images.
    batches = flipped_epoch_batches(_flip_pairs(n), 128, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [128] * 4 and len(set((torch.cat(batches) % n).tolist())) == 512
    # The epoch depends only on the generator's state: every DDP rank (same seed) and a resumed run draw the same.
    again = torch.cat(flipped_epoch_batches(_flip_pairs(n), 50, torch.Generator().manual_seed(0)))
    assert torch.equal(epoch, again)


def test_flipped_and_unflipped_copies_are_drawn_equally_often():
    """Over E epochs of N images each image is drawn flipped Binomial(E, 1/2) times. Two checks at fixed seeds:
    the overall flipped fraction is within 5 standard errors of 1/2 (E N = 200,000 draws: |p - 1/2| < 0.0056), and
    a chi-square test (N degrees of freedom) of the per-image flipped/unflipped counts against E/2 each does not
    reject (p > 0.001)."""
    from scipy.stats import chisquare

    n, epochs = 500, 400
    generator = torch.Generator().manual_seed(1)
    flipped = torch.zeros(n)
    for _ in range(epochs):
        epoch = torch.cat(flipped_epoch_batches(_flip_pairs(n), 100, generator))
        flipped[epoch[epoch >= n] - n] += 1
    draws = n * epochs
    tolerance = 5 * (0.25 / draws) ** 0.5
    assert abs(float(flipped.sum()) / draws - 0.5) < tolerance
    counts = torch.stack([flipped, epochs - flipped], dim=1).flatten().numpy()
    assert chisquare(counts, [epochs / 2] * len(counts), ddof=n - 1).pvalue > 1e-3
