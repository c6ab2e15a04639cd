"""Notebook 09 (performance): a papermill smoke run with tiny parameters, then assertions on the tables it wrote;
and the conclusion the notebook writes, checked on synthetic rows (its functions, run outside the notebook).

Timings are not asserted (speed is reported in results/, never tested); what must hold is that every table and
figure is written, every part is timed, and the conclusion is the one built from the written rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lib.experiments import benchmarks
from lib.kit.results import read_table

TINY_09 = {
    "SHAPES": [[2], [3, 8, 8]],
    "BATCH_SIZES": [8, 16],
    "NUM_EXAMPLES": 64,
    "STEPS": 1,
    "WARMUP": 0,
    "ASSIGN_SIZES": [8, 16, 32],
    "ASSIGN_STEPS": 1,
    "FIT_MIN_SIZE": 8,
    "SOLVERS": ["euler-1", "midpoint-1"],
    "SAMPLE_BATCH": 4,
    "SAMPLE_STEPS": 1,
    "STEP_BATCH": 8,
    "STEP_STEPS": 1,
    "SHARE_BATCH_SIZES": [8, 16],
    "SHARE_STEPS": 1,
    "TABLE_EXAMPLES": {"cifar10": 1000, "imagenet32": 2000},
    "TRAIN_BATCH_SIZES": [8, 16],
    "TRAIN_STEPS": 1,
    "RANKS": [1, 2],
    "PER_RANK_BATCH": 8,
    "RANK_SHAPE": [3, 4, 4],
}


@pytest.mark.slow
def test_09_performance_writes_every_table_and_its_conclusion(tmp_path: Path, run_tiny) -> None:
    folder = run_tiny("09_performance", tmp_path, **TINY_09)
    run = json.loads((folder / "run.json").read_text())
    for figure in ("coupling_breakdown", "assignment_fit", "training_steps", "share_and_throughput"):
        assert {f"{figure}.png", f"{figure}.pdf"} <= set(run["files"])

    breakdown = read_table(folder / "coupling_breakdown.csv")
    assert [(r["shape"], int(r["batch_size"])) for r in breakdown] == [("2", 8), ("2", 16), ("3x8x8", 8), ("3x8x8", 16)]
    timed = [benchmarks.column(p) for p in benchmarks.LOOM_PARTS] + ["independent_ms", "minibatch_ot_ms", "loom_ms"]
    assert all(float(r[c]) > 0 for r in breakdown for c in timed)

    assignment = read_table(folder / "assignment_scaling.csv")
    assert [int(r["m"]) for r in assignment] == [8, 16, 32] and all(float(r["assignment_ms"]) > 0 for r in assignment)
    fit = read_table(folder / "assignment_fit.csv")[0]
    refit = benchmarks.fit_power_law([8, 16, 32], [float(r["assignment_ms"]) for r in assignment])
    assert abs(float(fit["exponent"]) - refit.exponent) < 1e-9 and int(fit["points"]) == 3

    sampling = read_table(folder / "sampling_throughput.csv")
    assert [(r["solver"], int(r["nfe"])) for r in sampling] == [("euler-1", 1), ("midpoint-1", 2)]
    training = read_table(folder / "training_step_per_preset.csv")
    assert [(r["preset"], r["coupling"], r["pairing"]) for r in training] == [
        ("digits", c, p) for c in benchmarks.COUPLINGS for p in ("pipelined", "synchronous")
    ]
    assert all(float(r["peak_rss_mib"]) > 0 for r in training)

    steps = read_table(folder / "training_steps.csv")
    assert {(r["model"], int(r["batch_size"])) for r in steps} == {
        (m, b) for m in ("digits UNet", "2-D MLP") for b in (8, 16)
    }
    assert len(steps) == 2 * 2 * 6 and all(float(r["step_ms"]) > 0 and r["torch_threads"] == "1" for r in steps)
    ratios = read_table(folder / "training_step_ratios.csv")
    assert len(ratios) == 2 * 2 * 3 and all(float(r["pipelined_over_independent"]) > 0 for r in ratios)
    ranks = read_table(folder / "global_batch_assignment.csv")
    assert [(int(r["ranks"]), int(r["m"])) for r in ranks] == [(1, 8), (2, 16)]
    released = read_table(folder / "released_comparison.csv")
    assert [r["torch_threads"] for r in released] == ["1", "2", "2"]
    assert all("official_measurements.md" in r["source"] and float(r["kit_loom_ms"]) > 0 for r in released)

    share = read_table(folder / "coupling_share.csv")
    assert [int(r["batch_size"]) for r in share] == [8, 16] and all(0 < float(r["coupling_share"]) < 1 for r in share)
    memory = {r["dataset"]: r for r in read_table(folder / "seed_table_memory.csv")}
    assert float(memory["cifar10"]["seed_bytes_per_example"]) == 32 and memory["imagenet32"]["num_caches"] == "1"

    conclusion = json.loads((folder / "conclusion.json").read_text())
    assert conclusion["share_last"] == {"batch_size": 16, "share": float(share[-1]["coupling_share"])}
    assert abs(conclusion["assignment_exponent"] - refit.exponent) < 1e-9
    assert conclusion["text"] == (folder / "conclusion.md").read_text()
    assert f"at batch {share[0]['batch_size']}" in conclusion["text"] and "not measured" in conclusion["text"]
    assert "Pairing ahead of the step" in conclusion["text"] and len(conclusion["pipelined"]) == 4


@pytest.fixture(scope="module")
def nb(notebook_definitions) -> dict[str, Any]:
    """Notebook 09's functions and constants."""
    return notebook_definitions("09_performance")


def test_conclusion_names_the_solver_and_scipys_time_beside_it_and_no_done_fix(nb: dict[str, Any]) -> None:
    facts = synthetic_facts(nb, [0.02, 0.05], [32, 64])
    assert facts["assignment_solver"] == "scipy" and facts["largest_m_scipy_ms"] is None  # scipy solved it
    text = nb["conclusion_text"](facts)
    assert "(scipy's linear_sum_assignment) takes" in text and "as long)" not in text
    lapjv = {**facts, "assignment_solver": "lapjv", "largest_m_assignment_ms": 30.0, "largest_m_scipy_ms": 150.0}
    text = nb["conclusion_text"](lapjv)
    assert "(lapjv, whose permutation lib.assignment certifies to be scipy's) takes" in text
    assert "it takes 30.0 ms (scipy's linear_sum_assignment on the same matrices: 150.0 ms, 5.0x as long)" in text
    fixes = text.split("**What would fix it**")[1]
    assert "LAPJV" not in fixes and "lapjv" not in fixes and "batched kernel" not in fixes  # done: not named as fixes


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


def synthetic_facts(nb: dict[str, Any], shares: list[float], sizes: list[int]) -> dict[str, object]:
    """Notebook 09's conclusion facts from synthetic rows: a coupling taking ``shares`` of the step, an assignment
    growing as m^2.5, a breakdown whose assignment dominates at the largest batch."""
    assignment = [
        {"m": m, "device": "cpu", "solver": "scipy", "assignment_ms": 1e-5 * m**2.5, "cost_matrix_ms": 1e-3 * m}
        for m in (128, 256, 512)
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
    return nb["conclusion_facts"](share_rows(shares, sizes), fit, assignment, breakdown)


def test_conclusion_names_the_measured_crossing_batch_sizes(nb: dict[str, Any]) -> None:
    facts = synthetic_facts(nb, [0.02, 0.05, 0.12, 0.3, 0.6], [32, 64, 128, 256, 512])
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
    text = nb["conclusion_text"](facts)
    assert "passes 10 % of the step between batch 64 and batch 128" in text
    assert "passes 50 % of the step between batch 256 and batch 512" in text
    assert "m^2.50" in text and "assignment 63 %" in text and "2.0 % of a training step at batch 32" in text
    assert "not measured" in text and "Sinkhorn" in text and "per-rank OT batches" in text


def test_conclusion_extrapolates_a_crossing_it_did_not_reach(nb: dict[str, Any]) -> None:
    facts = synthetic_facts(nb, [0.01, 0.02, 0.04], [64, 128, 256])
    ten, fifty = facts["crossings"]
    assert ten["at"] is None and ten["below"] == 256
    assert 256 < ten["extrapolated"] < fifty["extrapolated"]
    text = nb["conclusion_text"](facts)
    assert f"near batch {ten['extrapolated']:,.0f} (extrapolated, not measured)" in text
    assert "stays below 10 % up to the largest batch measured, 256" in text


def test_conclusion_does_not_quote_a_far_extrapolation(nb: dict[str, Any]) -> None:
    """Coupling and network growing almost alike put the crossing absurdly far: say so instead of a number."""
    facts = synthetic_facts(nb, [0.020, 0.0201, 0.0202], [64, 128, 256])
    assert facts["crossings"][0]["extrapolated"] > nb["EXTRAPOLATION_LIMIT"] * 256
    assert "put the crossing beyond batch 4,096 (16x the largest measured), too far out to quote" in nb[
        "conclusion_text"
    ](facts)


def test_conclusion_says_where_pipelined_pairing_hides_the_coupling_and_where_it_cannot(nb: dict[str, Any]) -> None:
    def rows(model: str, b: int, step: dict[tuple[str, str], float], alone: dict[str, float]) -> list[dict]:
        return [
            {
                "model": model,
                "batch_size": b,
                "coupling": c,
                "pairing": p,
                "step_ms": ms,
                "coupling_ms": alone[c],
                "torch_threads": 1,
            }
            for (c, p), ms in step.items()
        ]

    unet = {(c, p): 100.0 for c in ("independent", "loom") for p in ("pipelined", "synchronous")}
    unet[("loom", "synchronous")] = 110.0
    mlp = {
        ("independent", "pipelined"): 10.0,
        ("independent", "synchronous"): 10.0,
        ("loom", "pipelined"): 30.0,
        ("loom", "synchronous"): 38.0,
    }
    training = rows("digits UNet", 128, unet, {"independent": 0.2, "loom": 10.0}) + rows(
        "2-D MLP", 256, mlp, {"independent": 0.1, "loom": 28.0}
    )
    facts = synthetic_facts(nb, [0.02, 0.05, 0.12], [32, 64, 128])
    facts = {
        **facts,
        **nb["conclusion_facts"](
            share_rows([0.02, 0.05, 0.12], [32, 64, 128]),
            benchmarks.fit_power_law([1, 2], [1.0, 4.0]),
            [{"m": 128, "device": "cpu", "solver": "scipy", "assignment_ms": 1.0, "cost_matrix_ms": 1.0}],
            [],
            training,
        ),
    }
    assert [(p["model"], p["pipelined_over_independent"]) for p in facts["pipelined"]] == [
        ("digits UNet", 1.0),
        ("2-D MLP", 3.0),
    ]
    text = nb["pipelined_paragraph"](facts["pipelined"], 1)
    assert "digits UNet at batch 128: 1.00x pipelined, 1.10x synchronous" in text
    assert "pipelining can hide only a step's length of it" in text
    assert "2-D MLP at batch 256 (LOOM's pairing 28.0 ms, an independent step 10.0 ms)" in text
    assert "digits UNet at batch 128 (" not in text


def test_the_memory_table_says_which_noise_tables_fit_the_default_budget(nb: dict[str, Any]) -> None:
    memory = nb["seed_table_memory"]("cifar10", 100_000, 4, (3, 32, 32))
    assert memory["noise_in_memory_by_default"] and round(memory["stored_noise_mib"]) == 4688
    assert not nb["seed_table_memory"]("imagenet64", 2_562_334, 1, (3, 64, 64))["noise_in_memory_by_default"]


def test_seed_table_memory_is_eight_bytes_per_cache(nb: dict[str, Any]) -> None:
    row = nb["seed_table_memory"]("cifar10", 1000, 4, (3, 32, 32))
    assert row["seed_bytes_per_example"] == 8 * 4
    assert row["noise_over_seeds"] == 3 * 32 * 32 * 4 / 8  # float32 noise against one int64 seed
    assert row["seed_table_mib"] == 1000 * 4 * 8 / 2**20


def test_released_seed_tables_use_each_configs_caches_and_shape(nb: dict[str, Any]) -> None:
    rows = nb["released_seed_tables"]({"cifar10": 100, "ffhq256_latent": 50})
    assert [(r["dataset"], r["num_caches"], r["shape"]) for r in rows] == [
        ("cifar10", 4, "3x32x32"),
        ("ffhq256_latent", 4, "4x32x32"),
    ]
    with pytest.raises(ValueError, match="no released config 'digits'"):
        nb["released_seed_tables"]({"digits": 10})
