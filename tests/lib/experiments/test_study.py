"""lib.experiments.study (notebook 12): runs trained in cached segments, the boundary analysis, the fix table."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from lib.couplings import caches_for_visits, visits_per_noise
from lib.experiments import study
from lib.paper import paper_rows

TINY = study.StudyRun(subset=128, hidden=16, batch_size=32, ema_decay=0.9, eval_steps=(4, 8), caches=2)
SETTINGS = study.EvalSettings(solvers=("euler-1", "midpoint-2", "dopri5"), diagnostic_solver="midpoint-2")


def scores(record: dict) -> tuple:
    return record["solvers"], record["diagnostics"]


def test_segments_resume_exactly_and_the_cache_answers_a_second_call(tmp_path: Path, monkeypatch) -> None:
    segmented = study.run_study(TINY, SETTINGS, tmp_path)
    straight = study.run_study(replace(TINY, eval_steps=(8,)), SETTINGS, None)
    assert scores(segmented[-1]) == scores(straight[-1])  # 4 + 4 steps through a checkpoint == 8 straight steps
    assert segmented[-1]["diagnostics"]["visits_per_noise"] == pytest.approx(8 * 32 / (128 * 2))
    folder = tmp_path / study.run_key(TINY, SETTINGS)
    assert not (folder / "checkpoint.pt").exists() and {p.name for p in folder.glob("eval_*.json")} == {
        "eval_4.json",
        "eval_8.json",
    }

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached run trained again")

    monkeypatch.setattr(study, "train_flow", no_training)
    assert study.run_study(TINY, SETTINGS, tmp_path) == segmented


def test_runs_in_parallel_workers_give_the_records_of_runs_in_process(tmp_path: Path) -> None:
    """fill_cache trains in spawned one-thread processes; the records equal those of one process, one run at a time."""
    runs = [TINY, replace(TINY, coupling="minibatch_ot", caches=1)]
    serial = study.run_all(runs, SETTINGS, tmp_path / "serial", log=lambda *a: None)
    lines: list[str] = []
    parallel = study.run_all(runs, SETTINGS, tmp_path / "parallel", log=lines.append, workers=2)
    assert lines[0] == "training 2 runs, 2 at a time" and len(lines) == 1 + 2 + 2  # filled, then read back
    assert [line.split()[0] for line in lines[1:]] == ["1/2", "2/2", "1/2", "2/2"]  # each line says i/n
    for (run_a, recs_a), (run_b, recs_b) in zip(serial, parallel, strict=True):
        assert run_a == run_b and [scores(r) for r in recs_a] == [scores(r) for r in recs_b]
    assert all(study.is_cached(r, SETTINGS, tmp_path / "parallel") for r in runs)


def test_the_cache_key_changes_with_every_setting() -> None:
    keys = {study.run_key(r, SETTINGS) for r in (TINY, replace(TINY, seed=1), replace(TINY, jitter=0.1))}
    keys.add(study.run_key(TINY, replace(SETTINGS, copy_quantile=0.1)))
    assert len(keys) == 4


def test_plain_loom_is_loom_with_caches_and_no_table_option() -> None:
    assert TINY.plain_loom and replace(TINY, caches=8).plain_loom
    others = [TINY.reference(), replace(TINY, coupling="independent"), replace(TINY, no_swaps=True)]
    others += [replace(TINY, **{k: v}) for k, v in (("refresh_prob", 0.1), ("mix_prob", 0.2), ("jitter", 0.3))]
    others += [replace(TINY, redraw_every_epochs=2), replace(TINY, visit_cap=5.0, max_caches=4)]
    assert not any(run.plain_loom for run in others)
    assert replace(TINY, seed=3, hidden=64, eval_steps=(2,)).plain_loom  # the setting is not the coupling


def test_crossing_interpolates_in_log_v() -> None:
    assert study.crossing([(100, 1.0), (400, 1.5)], 1.25) == pytest.approx(200.0)
    assert study.crossing([(100, 1.3), (400, 2.0)], 1.25) == 100  # already over at the first point
    assert study.crossing([(100, 1.0), (400, 1.2)], 1.25) is None


def test_boundary_by_step_runs_across_cache_counts() -> None:
    ratios = [
        {"plain_loom": True, "step": 10, "seed": 0, "visits_per_noise": v, "ratio": r}
        for v, r in ((50, 1.0), (100, 1.1), (200, 1.4))
    ] + [{"plain_loom": False, "step": 10, "seed": 0, "visits_per_noise": 25, "ratio": 9.0}]  # a fixed source: left out
    (row,) = study.boundary_by_step(ratios, 1.25)
    assert row["v_below"] == 100 and row["v_above"] == 200
    assert row["boundary_v"] == pytest.approx(100 * 2 ** (0.15 / 0.3))
    summary = study.summarise_boundary([row, {**row, "boundary_v": None, "crossed": False, "max_v": 300}])
    assert summary["crossed"] == 1 and summary["never_crossed_max_v"] == 300
    assert (summary["measured_below_v"], summary["measured_above_v"]) == (100, 200)  # the runs around V*


def test_effective_visits_of_each_fix() -> None:
    base = study.StudyRun(eval_steps=(20000,))
    assert study.effective_visits(base, 1437, 20000) == pytest.approx(20000 * 128 / 1437)
    assert study.effective_visits(replace(base, redraw_every_epochs=100), 1437, 20000) == pytest.approx(
        100 * (1437 // 128) * 128 / 1437
    )
    refresh = study.effective_visits(replace(base, refresh_prob=0.01), 1437, 20000)
    assert refresh == pytest.approx(20000 * 128 / (1437 + 20000 * 128 * 0.01)) and refresh < 1 / 0.01
    assert study.effective_visits(replace(base, mix_prob=0.5), 1437, 20000) == pytest.approx(20000 * 128 / 1437 / 2)
    with pytest.raises(ValueError, match="growing table"):
        study.effective_visits(replace(base, visit_cap=100.0, max_caches=8), 1437, 20000)


def test_the_rule_and_the_paper_sweep() -> None:
    assert caches_for_visits(visits_per_noise(391_000, 128, 100_000, 1), 125.0) == 5  # V = 125.12 at 4: just over
    sweep = study.paper_cache_sweep(paper_rows("5", "cifar10"), epochs=1000)
    fid = {(r["method"], r["solver"]): float(r["fid"]) for r in paper_rows("5", "cifar10")}
    two = next(r for r in sweep if r["caches"] == 2 and r["solver"] == "dopri5")
    assert two["v"] == 250 and two["ratio"] == pytest.approx(
        fid["LOOM-CFM 2 caches bs128", "dopri5"] / fid["w/o saving local reassignments", "dopri5"]
    )
    predictions = study.released_predictions(
        {"toy": {"flip": True, "epochs": 400, "caches": 1}}, {"boundary_v": 100.0, "low_v": 50.0, "high_v": 200.0}
    )
    assert predictions[0]["v_at_paper_caches"] == 200 and predictions[0]["caches_needed"] == 2
    assert (predictions[0]["caches_needed_low"], predictions[0]["caches_needed_high"]) == (1, 4)
    reflow = {"flip": False, "epochs": 200, "caches": 1, "reflow": True}  # fixed teacher pairs: no table to size
    assert study.released_predictions({"reflow": reflow}, {"boundary_v": 100.0, "low_v": 50.0, "high_v": 200.0}) == []


def test_the_best_fix_must_keep_the_few_step_advantage() -> None:
    rows = [
        {"fix": "minibatch OT", "fd_euler-2": 20.0, "fd_midpoint-6": 10.0},
        {"fix": "no fix", "fd_euler-2": 50.0, "fd_midpoint-6": 100.0},
        {"fix": "fast but loses it", "fd_euler-2": 30.0, "fd_midpoint-6": 9.0},
        {"fix": "keeps it", "fd_euler-2": 18.0, "fd_midpoint-6": 11.0},
    ]
    best = study.best_fix(rows, "midpoint-6", "euler-2")
    assert best["fix"] == "keeps it" and best["keeps_few_step_advantage"]
    assert math.isclose(best["fd_midpoint-6"], 11.0)


def test_run_rows_list_each_run_once_with_its_training_time() -> None:
    records = [{"train_seconds": 1.5}, {"train_seconds": 2.0}]
    other = replace(TINY, seed=1)
    rows = study.run_rows([(TINY, records), (other, records[:1]), (TINY, records)], SETTINGS)  # parts share TINY
    assert [(r["seed"], r["train_seconds"], r["last_step"]) for r in rows] == [(0, 3.5, 8), (1, 1.5, 8)]
    assert rows[0]["cache_key"] == study.run_key(TINY, SETTINGS)
