"""The coupling-cost benchmark measures what it says (timings themselves are checked in results/, not here)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from lib.experiments import benchmarks


def test_time_couplings_reports_every_contender_against_independent() -> None:
    setting = benchmarks.CouplingBenchmark(num_examples=500, shape=(3, 4, 4), batch_size=16, steps=3, warmup=1)
    rows = benchmarks.time_couplings(setting)
    parts = [r["part"] for r in rows]
    assert parts[:4] == ["independent", "minibatch_ot", "loom", "loom with one file per example"]
    assert all(r["ms_per_step"] > 0 for r in rows)
    assert rows[0]["ratio_to_independent"] == 1.0
    summary = benchmarks.summary(rows, setting)
    assert summary["loom_over_independent"] == rows[2]["ms_per_step"] / rows[0]["ms_per_step"]


def test_file_per_example_step_permutes_the_stored_noise() -> None:
    """The file-based baseline really re-pairs: the set of noise vectors on disk is unchanged, the order not."""
    setting = benchmarks.CouplingBenchmark(num_examples=64, shape=(2, 3), batch_size=8)
    x = torch.randn(8, 2, 3)
    index = torch.arange(8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        benchmarks.seed_files(folder, setting, [(x, index)])
        before = torch.stack([torch.load(folder / f"{i}.pt") for i in range(8)])
        z = benchmarks.file_per_example_step(folder, x, index)
        after = torch.stack([torch.load(folder / f"{i}.pt") for i in range(8)])
    assert torch.equal(z, after)
    key = lambda t: sorted(map(tuple, t.flatten(1).tolist()))  # noqa: E731
    assert key(before) == key(after)


def test_time_training_steps_times_every_coupling_and_its_share() -> None:
    from lib.models import MLP

    rows = benchmarks.time_training_steps(
        MLP(6, hidden=16, depth=2), torch.randn(64, 6), batch_size=16, steps=2, warmup=1
    )
    steps = [r for r in rows if r["part"].endswith("training step")]
    shares = [r for r in rows if r["part"].endswith("coupling alone")]
    assert [r["part"].split(":")[0] for r in steps] == ["independent", "minibatch_ot", "loom"]
    assert steps[0]["ratio_to_independent"] == 1.0 and all(r["images_per_s"] > 0 for r in steps)
    assert all(0 < r["share_of_step"] for r in shares)


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
    )
    per = benchmarks.per_coupling(rows)
    assert [r["coupling"] for r in per] == ["independent", "loom"]
    assert per[0]["ratio_to_independent"] == 1.0 and all(0 < r["share_of_step"] for r in per)
    with pytest.raises(ValueError, match="includes 'independent'"):
        benchmarks.time_training_steps(MLP(4, hidden=8, depth=1), torch.randn(32, 4), 8, 1, couplings=("loom",))


def test_preset_batch_uses_the_released_per_gpu_batch() -> None:
    assert benchmarks.preset_batch("cifar10", 0) == 32 and benchmarks.preset_batch("imagenet32", 0) == 128
    assert benchmarks.preset_batch("digits", 16) == 16
    with pytest.raises(ValueError, match="no released config"):
        benchmarks.preset_batch("digits", 0)


def test_seed_table_memory_is_eight_bytes_per_cache() -> None:
    row = benchmarks.seed_table_memory("cifar10", 1000, 4, (3, 32, 32))
    assert row["seed_bytes_per_example"] == 8 * 4
    assert row["noise_over_seeds"] == 3 * 32 * 32 * 4 / 8  # float32 noise against one int64 seed
    assert row["seed_table_mib"] == 1000 * 4 * 8 / 2**20


def test_peak_memory_reports_the_process_rss() -> None:
    memory = benchmarks.peak_memory("cpu")
    assert memory["peak_rss_mib"] > 10 and memory["cuda_peak_mib"] is None


def share_rows(shares: list[float], sizes: list[int]) -> list[dict[str, object]]:
    """Synthetic coupling_share_sweep rows: a 100 ms/64-examples network and a coupling taking ``shares``."""
    rows = []
    for b, s in zip(sizes, shares):
        step = 100.0 * b / 64 / (1 - s)
        rows.append(
            {
                "preset": "digits",
                "device": "cpu",
                "bf16": False,
                "batch_size": b,
                "independent_step_ms": step,
                "loom_step_ms": step,
                "coupling_ms": s * step,
                "coupling_share": s,
            }
        )
    return rows


def synthetic_facts(shares: list[float], sizes: list[int]) -> dict[str, object]:
    assignment = [
        {"m": m, "device": "cpu", "assignment_ms": 1e-5 * m**2.5, "cost_matrix_ms": 1e-3 * m} for m in (128, 256, 512)
    ]
    fit = benchmarks.fit_power_law([r["m"] for r in assignment], [r["assignment_ms"] for r in assignment])
    breakdown = [
        {
            "shape": "3x32x32",
            "batch_size": b,
            "independent_ms": 1.0,
            "loom_ms": 9.0,
            "minibatch_ot_ms": 8.0,
            "loom_over_independent": 9.0,
            "loom_over_minibatch_ot": 1.125,
            "noise_from_seeds_ms": 1.0,
            "cost_matrix_ms": 2.0,
            "assignment_ms": a,
            "write_back_ms": 0.5,
        }
        for b, a in ((32, 0.5), (512, 6.0))
    ]
    return benchmarks.conclusion_facts(share_rows(shares, sizes), fit, assignment, breakdown)


def test_conclusion_names_the_measured_crossing_batch_sizes() -> None:
    facts = synthetic_facts([0.02, 0.05, 0.12, 0.3, 0.6], [32, 64, 128, 256, 512])
    assert [(c["below"], c["at"]) for c in facts["crossings"]] == [(64, 128), (256, 512)]
    assert abs(facts["assignment_exponent"] - 2.5) < 1e-9
    assert facts["dominant_parts"] == [
        {
            "shape": "3x32x32",
            "batch_size": 512,
            "part": "assignment",
            "part_share": 6.0 / 9.5,
            "loom_ms": 9.0,
            "loom_over_independent": 9.0,
            "loom_over_minibatch_ot": 1.125,
        }
    ]
    text = benchmarks.conclusion_text(facts)
    assert "passes 10 % of the step between batch 64 and batch 128" in text
    assert "passes 50 % of the step between batch 256 and batch 512" in text
    assert "m^2.50" in text and "assignment 63 %" in text and "2.0 % of a training step at batch 32" in text
    assert "not measured" in text and "Sinkhorn" in text and "per-rank OT batches" in text


def test_conclusion_extrapolates_a_crossing_it_did_not_reach() -> None:
    facts = synthetic_facts([0.01, 0.02, 0.04], [64, 128, 256])
    ten, fifty = facts["crossings"]
    assert ten["at"] is None and ten["below"] == 256
    assert 256 < ten["extrapolated"] < fifty["extrapolated"]
    text = benchmarks.conclusion_text(facts)
    assert f"near batch {ten['extrapolated']:,.0f} (extrapolated, not measured)" in text
    assert "stays below 10 % up to the largest batch measured, 256" in text


def test_bf16_is_refused_off_cuda() -> None:
    from lib.models import MLP

    if torch.cuda.is_available():
        pytest.skip("bf16 is allowed on a CUDA machine")
    with pytest.raises(ValueError, match="bf16 autocast runs on CUDA only"):
        benchmarks.time_sampling(MLP(3, hidden=8, depth=1), (3,), ["euler-1"], batch_size=2, bf16=True)


def test_released_seed_tables_use_each_configs_caches_and_shape() -> None:
    rows = benchmarks.released_seed_tables({"cifar10": 100, "ffhq256_latent": 50})
    assert [(r["dataset"], r["num_caches"], r["shape"]) for r in rows] == [
        ("cifar10", 4, "3x32x32"),
        ("ffhq256_latent", 4, "4x32x32"),
    ]
    with pytest.raises(ValueError, match="no released config 'digits'"):
        benchmarks.released_seed_tables({"digits": 10})


def test_conclusion_does_not_quote_a_far_extrapolation() -> None:
    """Coupling and network growing almost alike put the crossing absurdly far: say so instead of a number."""
    facts = synthetic_facts([0.020, 0.0201, 0.0202], [64, 128, 256])
    assert facts["crossings"][0]["extrapolated"] > benchmarks.EXTRAPOLATION_LIMIT * 256
    assert (
        "put the crossing beyond batch 4,096 (16x the largest measured), too far out to quote"
        in benchmarks.conclusion_text(facts)
    )
