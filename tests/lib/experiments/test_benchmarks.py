"""The coupling-cost benchmark measures what it says (timings themselves are checked in results/, not here)."""

from __future__ import annotations

import threading

import pytest
import torch

from lib import assignment
from lib.experiments import benchmarks


def test_time_couplings_reports_every_coupling_and_the_loom_steps_parts() -> None:
    setting = benchmarks.CouplingBenchmark(num_examples=500, shape=(3, 4, 4), batch_size=16, steps=3, warmup=1)
    rows = benchmarks.time_couplings(setting)
    parts = [r["part"] for r in rows]
    assert parts == ["independent", "minibatch_ot", "loom"] + [f"loom part: {p}" for p in benchmarks.LOOM_PARTS]
    assert all(r["ms_per_step"] > 0 for r in rows)
    assert rows[0]["ratio_to_independent"] == 1.0
    summary = benchmarks.summary(rows, setting)
    assert summary["loom_over_independent"] == rows[2]["ms_per_step"] / rows[0]["ms_per_step"]
    assert summary["target_met"] == (summary["loom_over_independent"] <= summary["target_loom_over_independent"] == 1.8)
    assert summary["assignment_solver"] == assignment.solver_for(48) == "lapjv" and summary["loom_noise"] == "memory"
    for target in summary["coupling_targets"]:
        assert target["met"] == (target["over_independent"] <= target["target"])
    parts = sum(r["ms_per_step"] for r in rows if str(r["part"]).startswith("loom part: "))
    assert summary["loom_parts_over_independent"] == parts / rows[0]["ms_per_step"]


def test_solver_comparison_times_the_kits_solver_beside_scipy_on_the_same_matrices() -> None:
    rows = benchmarks.solver_comparison([8, 64], shape=(3, 4, 4), steps=2, warmup=1)
    assert [(r["m"], r["solver"]) for r in rows] == [(8, "lapjv"), (64, "lapjv")]
    assert all(r["same_permutation"] and r["assignment_ms"] > 0 and r["scipy_ms"] > 0 for r in rows)
    assert benchmarks.solver_comparison([16], shape=(2,), steps=1, warmup=0)[0]["solver"] == "scipy"  # 2-D points


def test_time_training_steps_times_every_coupling_in_both_pairing_modes() -> None:
    from lib.models import MLP

    rows = benchmarks.time_training_steps(
        MLP(6, hidden=16, depth=2), torch.randn(64, 6), batch_size=16, steps=2, warmup=1, block=2, threads=1
    )
    assert [(r["coupling"], r["pairing"]) for r in rows] == [
        (c, p) for c in ("independent", "minibatch_ot", "loom") for p in ("pipelined", "synchronous")
    ]
    assert rows[1]["ratio_to_independent"] == 1.0 and all(r["images_per_s"] > 0 for r in rows)
    assert all(0 < r["share_of_step"] and r["torch_threads"] == 1 for r in rows)
    assert torch.get_num_threads() >= 1 and not [t for t in threading.enumerate() if t.name == "pairing"]


def test_training_step_sweep_and_the_pipelined_ratios() -> None:
    rows = benchmarks.training_step_sweep({"2-D MLP": "mlp"}, [8], steps=1, warmup=0, block=1)
    assert {(r["model"], r["shape"], r["batch_size"]) for r in rows} == {("2-D MLP", "2", 8)} and len(rows) == 6
    ratios = benchmarks.pipelined_ratios(rows)
    assert [r["coupling"] for r in ratios] == ["independent", "minibatch_ot", "loom"]
    assert ratios[0]["synchronous_over_independent"] == 1.0
    loom = {(r["coupling"], r["pairing"]): r["step_ms"] for r in rows}
    assert ratios[2]["pipelined_over_synchronous"] == loom[("loom", "pipelined")] / loom[("loom", "synchronous")]


def test_global_batch_assignment_solves_the_ranks_whole_batch() -> None:
    rows = benchmarks.global_batch_assignment([1, 2, 4], per_rank_batch=8, shape=(3,), steps=1, warmup=0)
    assert [(r["ranks"], r["m"]) for r in rows] == [(1, 8), (2, 16), (4, 32)]
    assert all(r["assignment_ms"] > 0 for r in rows)


def test_released_comparison_cites_the_measured_facts() -> None:
    from lib.paper import RELEASED_COUPLING_STEP

    rows = benchmarks.released_comparison(kit_loom_ms=10.0, kit_torch_threads=1)
    assert [(r["released_low_ms"], r["torch_threads"]) for r in rows] == [
        (f.low_ms, f.torch_threads) for f in RELEASED_COUPLING_STEP
    ]
    assert rows[0]["released_over_kit_low"] == RELEASED_COUPLING_STEP[0].low_ms / 10.0
    assert all("official_measurements.md" in r["source"] for r in rows)


def test_timed_loom_step_is_the_coupling_step_and_keeps_the_seed_multiset() -> None:
    """The instrumented step leaves the seed table exactly where LoomCoupling.pair does, seeds only permuted."""
    from lib.couplings import LoomCoupling

    x, index = torch.randn(12, 3, 2, 2), torch.randperm(40)[:12]
    reference, timed = LoomCoupling(40, num_caches=2, seed=3), LoomCoupling(40, num_caches=2, seed=3)
    before = timed.seeds.clone()
    timer = benchmarks.PartTimer()
    z = benchmarks.timed_loom_step(timed, x, index, timer)
    expected = reference(x, index)
    assert torch.equal(timed.seeds, reference.seeds) and torch.equal(z, expected.z)
    assert expected.stats.swaps > 0, "the step should re-pair something, or the test proves little"
    assert torch.equal(timed.seeds.flatten().sort().values, before.flatten().sort().values)
    assert list(timer.laps) == list(benchmarks.LOOM_PARTS)
    assert all(len(t) == 1 and t[0] > 0 for t in timer.laps.values())


def test_timed_loom_step_refuses_other_loom_variants() -> None:
    from lib.couplings import LoomCoupling

    with pytest.raises(ValueError, match="seed_init='upfront' and no_swaps=False"):
        benchmarks.timed_loom_step(
            LoomCoupling(8, no_swaps=True), torch.randn(4, 2), torch.arange(4), benchmarks.PartTimer()
        )


def test_coupling_sweep_reports_every_part_for_every_shape_and_batch() -> None:
    rows = benchmarks.coupling_sweep([[2], [1, 4, 4]], [8, 16], num_examples=12, steps=2, warmup=1)
    assert [(r["shape"], r["batch_size"]) for r in rows] == [("2", 8), ("2", 16), ("1x4x4", 8), ("1x4x4", 16)]
    assert rows[-1]["num_examples"] == 16, "the seed table grows to the batch when num_examples is smaller"
    columns = [benchmarks.column(p) for p in benchmarks.LOOM_PARTS]
    assert columns == ["noise_from_seeds_ms", "cost_matrix_ms", "assignment_ms", "write_back_ms"]
    for r in rows:
        assert all(r[c] > 0 for c in columns + ["independent_ms", "minibatch_ot_ms", "loom_ms", "parts_total_ms"])
        assert r["loom_over_independent"] == r["loom_ms"] / r["independent_ms"]


def test_batches_refuse_a_batch_larger_than_the_seed_table() -> None:
    with pytest.raises(ValueError, match="raise num_examples"):
        benchmarks.loom_breakdown(benchmarks.CouplingBenchmark(num_examples=8, shape=(2,), batch_size=16))


def test_assignment_scaling_times_each_size_and_part() -> None:
    rows = benchmarks.assignment_scaling([8, 32, 16], shape=(5,), steps=2, warmup=1)
    assert [r["m"] for r in rows] == [8, 32, 16] and all(r["dim"] == 5 for r in rows)
    assert all(r[benchmarks.column(p)] > 0 for r in rows for p in benchmarks.ASSIGNMENT_PARTS)
    assert all(r["solver"] == "scipy" and "scipy_ms" not in r for r in rows)  # 5 values: below lapjv's dimension
    rows = benchmarks.assignment_scaling([16], shape=(3, 4, 4), steps=1, warmup=0, scipy=True)
    assert rows[0]["solver"] == "lapjv" and rows[0]["scipy_ms"] > 0


def test_fit_power_law_recovers_a_known_exponent() -> None:
    sizes = [32, 64, 128, 256, 512, 1024, 2048]
    noise = torch.exp(0.05 * torch.randn(len(sizes), generator=torch.Generator().manual_seed(0))).tolist()
    times = [4e-6 * m**2.6 * e for m, e in zip(sizes, noise)]
    times[0] = 5.0  # a fixed overhead at the smallest size, which min_size leaves out
    fit = benchmarks.fit_power_law(sizes, times, min_size=64)
    assert abs(fit.exponent - 2.6) < 0.05 and abs(fit.constant / 4e-6 - 1) < 0.3
    assert (fit.min_size, fit.max_size, fit.points) == (64, 2048, 6)
    assert abs(fit.predict(4096) / (4e-6 * 4096**2.6) - 1) < 0.3
    exact = benchmarks.fit_power_law([10, 100], [3.0, 300.0])
    assert abs(exact.exponent - 2) < 1e-9 and abs(exact.constant - 0.03) < 1e-9


def test_fit_power_law_refuses_what_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="two distinct sizes"):
        benchmarks.fit_power_law([64, 128], [1.0, 2.0], min_size=100)
    with pytest.raises(ValueError, match="one time per size"):
        benchmarks.fit_power_law([64, 128], [1.0])
    with pytest.raises(ValueError, match="positive"):
        benchmarks.fit_power_law([64, 128], [1.0, 0.0])


def test_time_sampling_reports_true_nfe_and_per_call_time() -> None:
    from lib.models import MLP

    rows = benchmarks.time_sampling(
        MLP(3, hidden=8, depth=1), (3,), ["euler-2", "midpoint-3", "rk4-1"], batch_size=5, steps=2, warmup=1
    )
    assert [(r["solver"], r["nfe"]) for r in rows] == [("euler-2", 2), ("midpoint-3", 6), ("rk4-1", 4)]
    for r in rows:
        assert abs(r["ms_per_network_call"] * r["nfe"] - r["ms_per_batch"]) < 1e-9
        assert abs(r["images_per_s"] - 5e3 / r["ms_per_batch"]) < 1e-9
    with pytest.raises(ValueError, match="unknown solver"):
        benchmarks.time_sampling(MLP(3, hidden=8, depth=1), (3,), ["heun-2"], batch_size=2)


def test_time_training_steps_takes_a_subset_of_couplings() -> None:
    from lib.models import MLP

    rows = benchmarks.time_training_steps(
        MLP(4, hidden=8, depth=1),
        torch.randn(32, 4),
        batch_size=8,
        steps=1,
        warmup=0,
        couplings=("independent", "loom"),
        pairings=("synchronous",),
    )
    assert [r["coupling"] for r in rows] == ["independent", "loom"]
    assert rows[0]["ratio_to_independent"] == 1.0 and all(0 < r["share_of_step"] for r in rows)
    with pytest.raises(ValueError, match="includes 'independent'"):
        benchmarks.time_training_steps(MLP(4, hidden=8, depth=1), torch.randn(32, 4), 8, 1, couplings=("loom",))


def test_preset_batch_uses_the_released_per_gpu_batch() -> None:
    assert benchmarks.preset_batch("cifar10", 0) == 32 and benchmarks.preset_batch("imagenet32", 0) == 128
    assert benchmarks.preset_batch("digits", 16) == 16
    with pytest.raises(ValueError, match="no released config"):
        benchmarks.preset_batch("digits", 0)


def test_peak_memory_reports_the_process_rss() -> None:
    memory = benchmarks.peak_memory("cpu")
    assert memory["peak_rss_mib"] > 10 and memory["cuda_peak_mib"] is None


def test_bf16_is_refused_off_cuda() -> None:
    from lib.models import MLP

    if torch.cuda.is_available():
        pytest.skip("bf16 is allowed on a CUDA machine")
    with pytest.raises(ValueError, match="bf16 autocast runs on CUDA only"):
        benchmarks.time_sampling(MLP(3, hidden=8, depth=1), (3,), ["euler-1"], batch_size=2, bf16=True)
