"""papermill smoke run of notebook 12 (noise-table study) with tiny parameters, then assertions on what it wrote.

The findings need the paper profile's budget; here every part must run, every table must be consistent with the
rows it was built from (ratios, V, the boundary and the rule), and every table option must have been trained.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from lib.kit import reproduce, verify
from lib.kit.results import read_table
from lib.paper import paper_rows

pytestmark = pytest.mark.slow

TINY_12 = {
    "BATCH": 32,
    "DOSE_SUBSET": 64,
    "DOSE_HIDDEN": 32,
    "DOSE_CACHES": [1, 2],
    "DOSE_FIXED_CACHES": [1],
    "DOSE_STEPS": [20, 40],
    "CAP_MLP_WIDTHS": [16],
    "CAP_SUBSETS": [64],
    "CAP_VISITS": [40],
    "DIM_DIMS": [2],
    "DIM_EXAMPLES": 64,
    "DIM_HIDDEN": 16,
    "DIM_VISITS": [40],
    "THRESHOLD": 0.5,
    "FIXES": {
        "2 caches": {"caches": 2},
        "redraw": {"redraw_every_epochs": 2},
        "refresh": {"refresh_prob": 0.2},
        "mix": {"mix_prob": 0.25},
        "jitter": {"jitter": 0.3},
        "grow": {"visit_cap": 5.0, "max_caches": 4},
    },
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, run_tiny) -> Path:
    """Notebook 12 run once with TINY_12 on this machine's CPU capability -> its results folder (both tests read it)."""
    return run_tiny("12_noise_table_study", tmp_path_factory.mktemp("own") / "results", **TINY_12)


def test_12_noise_table_study_writes_consistent_tables(tiny_run: Path) -> None:
    folder = tiny_run
    run = json.loads((folder / "run.json").read_text())
    for figure in ("boundary", "capacity", "dimension", "fixes"):
        assert {f"{figure}.png", f"{figure}.pdf"} <= set(run["files"])

    # Part 1: every table run has its ratio to minibatch OT at each step, equal to the two scores it divides.
    quality = read_csv(folder / "dose_quality.csv")
    fd = {(r["label"], int(r["step"]), r["solver"]): float(r["fd"]) for r in quality}
    ratios = [r for r in read_csv(folder / "dose_ratio.csv") if r["solver"] == "midpoint-6"]
    assert {r["label"] for r in ratios} == {"LOOM 1c", "LOOM 2c", "fixed 1c"} and len(ratios) == 6
    for r in ratios:
        step = int(r["step"])
        assert float(r["ratio"]) == pytest.approx(fd[r["label"], step, "midpoint-6"] / fd["OT", step, "midpoint-6"])
        caches = int(r["caches"])
        assert float(r["visits_per_noise"]) == pytest.approx(step * 32 / (64 * caches))  # V = S B / (N C)
    # THRESHOLD 0.5: every curve crosses at its first point. Per run: at its first step; per step (across the
    # plain LOOM runs of 1 and 2 caches): at the smaller V, that of 2 caches. The rule's boundary is the last step's.
    boundary = json.loads((folder / "boundary.json").read_text())
    assert boundary["per_run"]["crossed"] == boundary["per_run"]["curves"] == 3
    assert boundary["per_run"]["boundary_v"] == pytest.approx(10.0) and boundary["per_run"]["low_v"] == pytest.approx(
        5.0
    )
    by_step = {int(r["step"]): float(r["boundary_v"]) for r in read_csv(folder / "dose_boundary_by_step.csv")}
    assert by_step == {20: pytest.approx(5.0), 40: pytest.approx(10.0)}
    assert boundary["step"] == 40 and boundary["boundary_v"] == pytest.approx(10.0) and boundary["crossed"] == 1
    rule = json.loads((folder / "rule.json").read_text())
    cifar = next(p for p in rule["predictions"] if p["config"] == "cifar10")
    assert cifar["v_at_paper_caches"] == pytest.approx(125.0)
    assert cifar["caches_needed"] == math.ceil(500 / boundary["boundary_v"])
    assert {s["caches"] for s in rule["paper_cache_sweep"]} == {2, 3, 4}
    fid = {(r["method"], r["solver"]): float(r["fid"]) for r in paper_rows("5", "cifar10")}
    cifar_dopri5 = {r["caches"]: r["ratio"] for r in rule["paper_cache_sweep"] if r["solver"] == "dopri5"}
    expected = fid["LOOM-CFM 4 caches bs128", "dopri5"] / fid["w/o saving local reassignments", "dopri5"]
    assert cifar_dopri5[4] == pytest.approx(expected)  # Table 5's 4-cache row over its own minibatch OT row

    # Memorisation diagnostics are distances relative to held-out data: positive, and absent without a table.
    diagnostics = read_csv(folder / "dose_diagnostics.csv")
    for r in diagnostics:
        assert float(r["fresh_nn_ratio"]) > 0
        assert (r["table_pair_ratio"] == "") == (r["coupling"] != "loom")

    # Parts 2 and 3 ran their reference runs; part 4 trained every option.
    assert {r["label"] for r in read_csv(folder / "capacity_ratio.csv")} == {"LOOM 1c"}
    assert {r["dim"] for r in read_csv(folder / "dimension_ratio.csv")} == {"2"}
    fixes = {r["fix"]: r for r in read_csv(folder / "fixes.csv")}
    assert set(fixes) == {"no fix", "I-CFM", "minibatch OT", *TINY_12["FIXES"]}
    assert float(fixes["grow"]["stored_noises"]) > 64 and float(fixes["2 caches"]["stored_noises"]) == 128
    assert float(fixes["minibatch OT"]["over_ot_midpoint-6"]) == pytest.approx(1.0)


def test_verify_passes_across_cpu_capabilities_where_nothing_real_differs(tmp_path: Path, tiny_run: Path) -> None:
    """The tiny run again under AVX2 (torch, MKL and oneDNN held to it, as lib.kit.reproduce --match-cpu does). Its
    trained scores move across the two and its cache keys differ; verify finds every number identical or within
    its tolerance. (Issue 25: the one notebook a test run executes twice, on purpose: once per instruction set.)"""
    name = "12_noise_table_study"
    with reproduce.environment(reproduce.capability_environment("AVX2")):
        reproduce.run_notebook(name, TINY_12, results_dir=tmp_path)
    folders = {None: tiny_run, "AVX2": tmp_path / reproduce.run_profile(name, TINY_12) / name}
    recorded = [json.loads((f / "run.json").read_text())["device"]["torch_cpu_capability"] for f in folders.values()]
    assert recorded[1] == "AVX2", recorded
    comparison = verify.compare_folders(folders["AVX2"], folders[None], name)
    assert comparison.ok, verify.table([comparison])
    assert comparison.identical > 1000
    if recorded[0] != "AVX2":  # really another instruction set: the trained scores and the cache keys moved
        keys = [[row["cache_key"] for row in read_table(f / "runs.csv")] for f in folders.values()]
        assert comparison.within > 0 and keys[0] != keys[1]
