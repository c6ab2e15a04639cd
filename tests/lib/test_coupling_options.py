"""Invariants of LOOM's noise-table options (issue 15): the returned noise stays N(0, I), the seed multiset
changes only where the option says, and resume through state_dict (and torch.save) is exact."""

import io
from collections import Counter

import pytest
import torch
from scipy import stats

from lib.couplings import (
    LoomCoupling,
    LoomOptions,
    caches_for_visits,
    epoch_batches,
    make_coupling,
    noise_from_seeds,
    visits_per_noise,
)

N, DIM, BATCH = 96, 6, 32
OPTIONS = {
    "plain": {},
    "refresh": {"refresh_prob": 0.2},
    "mix": {"mix_prob": 0.3},
    "jitter": {"jitter": 0.3},
    "grow": {"visit_cap": 2.0, "max_caches": 4},
    "all": {"refresh_prob": 0.1, "mix_prob": 0.2, "jitter": 0.2, "visit_cap": 3.0, "max_caches": 3},
}


def data(seed=0):
    return torch.randn(N, DIM, generator=torch.Generator().manual_seed(seed)) * 0.5 + 2.0


def batches(epochs, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [b for _ in range(epochs) for b in epoch_batches(N, BATCH, generator)]


def multiset(loom: LoomCoupling) -> Counter:
    """The stored seeds (slots in use only)."""
    return Counter(loom.seeds[loom.stored_slots(as_mask=True)].tolist())


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_returned_noise_is_standard_normal(name):
    """Pooled over fresh tables (independent seeds), every returned coordinate is N(0, 1): KS test, moments,
    and no correlation between coordinates."""
    x = data()
    rows = []
    for seed in range(40):  # a new table each time, so the pooled rows are independent draws
        loom = LoomCoupling(N, 1, seed=seed, options=LoomOptions(**OPTIONS[name]))
        for index in batches(1, seed)[:2]:
            rows.append(loom(x[index], index).z)
    z = torch.cat(rows)  # (40 * 2 * 32, DIM)
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    assert z.mean().abs() < 0.05 and (z.var() - 1).abs() < 0.06
    cov = torch.cov(z.t())
    assert (cov - torch.eye(DIM)).abs().max() < 0.12


@pytest.mark.parametrize("name", ["plain", "refresh", "grow"])
def test_table_rows_return_exactly_the_stored_noise(name):
    """Without mixing or jitter, the batch's noise is exactly the noise of the seeds the table now pairs with it."""
    x = data()
    loom = LoomCoupling(N, 1, seed=2, options=LoomOptions(**OPTIONS[name]))
    for index in batches(3):
        out = loom(x[index], index)
        stored = torch.cat(
            [
                noise_from_seeds(loom.seeds[index[i : i + 1], c], (DIM,), "cpu")
                for i in range(len(index))
                for c in range(int(loom.active[index[i]]))
            ]
        )
        # row i's noise is one of example index[i]'s stored noises
        assert all(any(torch.equal(out.z[i], s) for s in stored) for i in range(len(index)))


@pytest.mark.parametrize("name", ["plain", "mix", "jitter"])
def test_options_that_keep_the_multiset_keep_it(name):
    x = data()
    loom = LoomCoupling(N, 2, seed=3, options=LoomOptions(**OPTIONS[name]))
    before = multiset(loom)
    swaps = sum(loom(x[index], index).stats.swaps for index in batches(4))
    assert swaps > 0 and multiset(loom) == before


def test_refresh_changes_only_the_refreshed_slots():
    x = data()
    loom = LoomCoupling(N, 2, seed=4, options=LoomOptions(refresh_prob=0.2))
    for index in batches(3):
        before_table = loom.seeds.clone()
        out = loom(x[index], index)
        outside = torch.ones(N, dtype=torch.bool)
        outside[index] = False
        assert torch.equal(loom.seeds[outside], before_table[outside])  # examples not in the batch untouched
        lost = Counter(before_table.flatten().tolist()) - Counter(loom.seeds.flatten().tolist())
        gained = Counter(loom.seeds.flatten().tolist()) - Counter(before_table.flatten().tolist())
        assert sum(lost.values()) == sum(gained.values()) == out.stats.fresh_rows
    assert loom.options.refresh_prob == 0.2


def test_mixed_rows_leave_their_slots_alone_and_fresh_rows_are_counted():
    x = data()
    loom = LoomCoupling(N, 1, seed=5, options=LoomOptions(mix_prob=0.5))
    total_fresh = 0
    for index in batches(2):
        before = loom.seeds.clone()
        out = loom(x[index], index)
        total_fresh += out.stats.fresh_rows
        # table rows re-pair among themselves: the batch's stored seeds are a permutation of what they were
        assert Counter(loom.seeds[index, 0].tolist()) == Counter(before[index, 0].tolist())
        table_noise = noise_from_seeds(before[index, 0], (DIM,), "cpu")
        from_table = sum(any(torch.equal(row, t) for t in table_noise) for row in out.z)
        assert from_table == len(index) - out.stats.fresh_rows
    assert 0.35 * 6 * BATCH < total_fresh < 0.65 * 6 * BATCH


def test_jitter_is_the_stored_noise_plus_independent_fresh_noise():
    """z_out = sqrt(1 - eps^2) z + eps xi with z the stored noise the table pairs with the row: the residual
    xi is N(0, 1) and uncorrelated with z."""
    eps = 0.3
    x = data()
    loom = LoomCoupling(N, 1, seed=6, options=LoomOptions(jitter=eps))
    residuals, stored = [], []
    for index in batches(6):
        out = loom(x[index], index)
        z = noise_from_seeds(loom.seeds[index, 0], (DIM,), "cpu")  # what the assignment wrote back for each row
        residuals.append((out.z - (1 - eps**2) ** 0.5 * z) / eps)
        stored.append(z)
    xi, z = torch.cat(residuals).flatten(), torch.cat(stored).flatten()
    assert stats.kstest(xi.numpy(), "norm").pvalue > 1e-3
    assert abs(torch.corrcoef(torch.stack([xi, z]))[0, 1]) < 0.05


def test_jitter_keeps_the_table_monotone():
    """The assignment sees the stored noise only, so the table's total cost never rises (Theorem 1)."""
    from lib.couplings import total_pairing_cost

    x = data()
    loom = LoomCoupling(N, 2, seed=7, options=LoomOptions(jitter=0.5))
    costs = [total_pairing_cost(loom, x)]
    for index in batches(4):
        loom(x[index], index)
        costs.append(total_pairing_cost(loom, x))
    assert all(b <= a + 1e-5 for a, b in zip(costs, costs[1:])) and costs[-1] < costs[0]


def test_growing_table_only_gains_seeds_and_caps_visits():
    x = data()
    cap, most = 2.0, 4
    loom = LoomCoupling(N, 1, seed=8, options=LoomOptions(visit_cap=cap, max_caches=most))
    assert loom.seeds.shape == (N, most) and int(loom.active.sum()) == N
    for index in batches(7):
        before = multiset(loom)
        loom(x[index], index)
        after = multiset(loom)
        assert not (before - after)  # nothing lost
        assert sum((after - before).values()) == int(loom.active.sum()) - sum(before.values())
        unused = ~loom.stored_slots(as_mask=True)
        assert (loom.seeds[unused] == LoomCoupling.UNSEEN).all()
    assert int(loom.visits.sum()) == 7 * (N // BATCH) * BATCH
    assert (loom.active <= most).all() and int(loom.active.max()) == most
    growing = loom.active < most
    assert (loom.visits[growing] <= cap * loom.active[growing]).all()  # visits per stored noise capped


def test_redraw_of_a_growing_table_keeps_unused_slots_unused():
    loom = LoomCoupling(N, 1, seed=9, options=LoomOptions(visit_cap=1.0, max_caches=3))
    x = data()
    for index in batches(2):
        loom(x[index], index)
    mask = loom.stored_slots(as_mask=True)
    old = loom.seeds.clone()
    loom.redraw()
    assert (loom.seeds[~mask] == LoomCoupling.UNSEEN).all() and (loom.seeds[mask] != old[mask]).all()


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_resume_through_state_dict_is_exact(name):
    x = data()
    plan = batches(4)
    straight = LoomCoupling(N, 2, seed=10, options=LoomOptions(**OPTIONS[name]))
    first = LoomCoupling(N, 2, seed=10, options=LoomOptions(**OPTIONS[name]))
    outs = [straight(x[index], index).z for index in plan]
    for index in plan[:5]:
        first(x[index], index)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = LoomCoupling(N, 2, seed=99, options=LoomOptions(**OPTIONS[name]))
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for index, expected in zip(plan[5:], outs[5:]):
        assert torch.equal(resumed(x[index], index).z, expected)
    for attr in ("seeds", "active", "visits"):
        assert torch.equal(getattr(resumed, attr), getattr(straight, attr))


def test_a_state_with_other_options_is_refused():
    saved = LoomCoupling(N, 1, options=LoomOptions(refresh_prob=0.1)).state_dict()
    with pytest.raises(ValueError, match="refresh_prob: saved 0.1, here 0.0"):
        LoomCoupling(N, 1).load_state_dict(saved)
    legacy = {
        k: v for k, v in LoomCoupling(N, 1).state_dict().items() if k not in ("active", "visits", *LoomCoupling.OPTIONS)
    }
    resumed = LoomCoupling(N, 1)
    resumed.load_state_dict(legacy)  # a state saved before the options existed loads with every option off
    assert int(resumed.active.sum()) == N and int(resumed.visits.sum()) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"refresh_prob": 1.5}, "refresh_prob is a probability"),
        ({"mix_prob": -0.1}, "mix_prob is a probability"),
        ({"jitter": 1.0}, "jitter eps must be in"),
        ({"visit_cap": 5.0}, "needs max_caches > num_caches"),
        ({"max_caches": 4}, "max_caches only applies"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoomCoupling(N, 1, options=LoomOptions(**kwargs))


def test_options_belong_to_loom_only():
    with pytest.raises(ValueError, match="options of the loom noise table"):
        make_coupling("minibatch_ot", N, options=LoomOptions(jitter=0.1))


def test_options_off_draw_exactly_what_plain_loom_draws():
    x = data()
    a, b = (
        LoomCoupling(N, 2, seed=11),
        make_coupling("loom", N, num_caches=2, seed=11, options=LoomOptions(refresh_prob=0.0, jitter=0.0)),
    )
    for index in batches(2):
        assert torch.equal(a(x[index], index).z, b(x[index], index).z)
    assert torch.equal(a.seeds, b.seeds)


def test_visits_per_noise():
    # the paper's CIFAR-10: 1000 epochs of 50k images, batch 128, flips as 100k examples, 4 caches
    assert visits_per_noise(391_000, 128, 100_000, 4) == pytest.approx(125.12)
    with pytest.raises(ValueError, match="need positive"):
        visits_per_noise(10, 128, 0, 1)


def test_caches_for_visits_keeps_v_at_or_below_the_boundary():
    for visits, boundary in [(500.0, 125.0), (500.1, 125.0), (1781.5, 131.0), (10.0, 131.0)]:
        c = caches_for_visits(visits, boundary)
        assert visits / c <= boundary and (c == 1 or visits / (c - 1) > boundary)  # enough, and the fewest
    assert caches_for_visits(visits_per_noise(390_000, 128, 100_000, 1), 125.0) == 4  # CIFAR-10: V = 124.8 at 4
    with pytest.raises(ValueError, match="need positive"):
        caches_for_visits(100.0, 0.0)
