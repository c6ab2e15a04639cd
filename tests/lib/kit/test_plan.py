"""The plan of a profile (lib.kit.plan): steps as the notebooks build their runs, GPU-hours from a named source
(the paper's time, or the GPU check's measurement once it exists), what is needed and whether it is here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.kit import plan, reproduce
from lib.kit.profiles import load_profile

PAPER = load_profile("paper")


def cifar10_runs(results: Path) -> dict[str, plan.PlannedRun]:
    runs, _ = plan.plan_profile({"05_cifar10": PAPER["05_cifar10"]}, results)
    return {r.run: r for r in runs}


def test_the_paper_profile_plans_the_released_steps_and_the_paper_hours(tmp_path: Path) -> None:
    runs = cifar10_runs(tmp_path)  # no gpu-check results there: the paper's time
    loom = runs["LOOM-CFM"]
    assert (loom.steps, loom.global_batch, loom.gpus, loom.bf16) == (390_000, 128, 4, False)
    assert loom.gpu_hours == pytest.approx(17.3 * 4) and loom.source == "paper: cifar10 17.3 h on 4 GPUs"
    ot = runs["w/o saving local reassignments"]
    assert ot.gpu_hours == pytest.approx(13.9 * 4)  # the paper's run without stored assignments
    assert runs["I-CFM"].source == "paper: cifar10 at most 13.9 h on 4 GPUs"
    # Table 5's grid: the same epochs at OT batch 32 take 4x the steps over the same images.
    assert runs["LOOM-CFM 4 caches bs32"].steps == 1000 * (50_000 // 32)
    assert runs["LOOM-CFM 4 caches bs32"].source.endswith("; per-GPU batch 8 < 32: likely more")
    # Kept copies for FID along training (every 39,000 steps) only on the training-curve rows.
    assert loom.disk_bytes == pytest.approx(11 * runs["LOOM-CFM 2 caches bs128"].disk_bytes, rel=0.01)


def test_other_architectures_scale_by_flops_and_a_measured_throughput_replaces_the_paper(tmp_path: Path) -> None:
    runs, _ = plan.plan_profile({"07_ffhq_latent": PAPER["07_ffhq_latent"]}, tmp_path)
    (ffhq,) = runs
    ratio = plan.architecture("ffhq256_latent")[1] / plan.architecture("cifar10")[1]
    assert ffhq.steps == 273_000 and ffhq.gpu_hours == pytest.approx(17.3 * 4 * 273_000 / 390_000 * ratio)
    assert f"x{ratio:.2f} FLOPs/image" in ffhq.source
    check = tmp_path / "gpu" / "gpu_check"
    check.mkdir(parents=True)
    summary = {"architecture_images_per_s": {"cifar10": {"fp32": 400.0}}, "loom_pipelined_over_independent": 1.25}
    (check / "gpu.json").write_text(json.dumps({"gpu_model": "NVIDIA H100", "summary": summary}))
    runs = cifar10_runs(tmp_path)
    assert runs["LOOM-CFM"].gpu_hours == pytest.approx(390_000 * 128 / (400.0 / 1.25) / 3600)
    assert runs["LOOM-CFM"].source == "measured: gpu-check on NVIDIA H100, fp32, x1.25 LOOM pipelined"
    assert runs["I-CFM"].gpu_hours == pytest.approx(390_000 * 128 / 400.0 / 3600)


def test_needs_say_whether_they_are_here(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(plan, "REPO_ROOT", tmp_path)
    _, needs = plan.plan_profile({"05_cifar10": PAPER["05_cifar10"]}, tmp_path)
    assert not {n.what: n for n in needs}["CIFAR-10"].present
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    _, needs = plan.plan_profile({"05_cifar10": PAPER["05_cifar10"]}, tmp_path)
    cifar = {n.what: n for n in needs}["CIFAR-10"]
    assert cifar.present and cifar.how == "python data_prep/cifar10.py --root data"


def test_plan_prints_runs_needs_and_totals_and_runs_nothing(tmp_path: Path, capsys) -> None:
    argv = ["--profile", "paper", "--only", "01", "05", "--plan", "--results-dir", str(tmp_path)]
    assert reproduce.main(argv) == 0
    out = capsys.readouterr().out
    assert "01_toy_couplings (CPU; est. minutes, CPU)\n  no GPU training, no downloads" in out
    assert "  LOOM-CFM                                 390,000 steps x  128 on 4 GPU(s) fp32:     69.2 GPU-h" in out
    assert "needs CIFAR-10: data/cifar-10-batches-py" in out
    # 7 rows of 390,000 steps and the grid rows at OT batch 32 and 64 (1,562,000 and 781,000).
    assert "total: 9 training runs, 5,073,000 steps" in out and "\nmissing here: " in out
    assert not list(tmp_path.iterdir())  # nothing written
