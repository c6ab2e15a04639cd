"""python -m lib.kit.gpu_check: the GPU check's plumbing, run at toy size on the CPU (--tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lib.kit import gpu_check
from lib.kit.results import read_table


@pytest.mark.slow  # ~20 s on one thread: torch.compile traces the UNet
def test_the_gpu_check_runs_at_toy_size_on_the_cpu(tmp_path: Path) -> None:
    assert gpu_check.main(["--tiny", "--results-dir", str(tmp_path)]) == 0
    folder = tmp_path / "gpu-tiny" / "gpu_check"
    report = json.loads((folder / "gpu.json").read_text())
    assert report["device"] == "cpu" and report["gpu_model"] is None and "not a GPU's" in report["note"]
    variants = {r["variant"]: r for r in read_table(folder / "training_throughput.csv")}
    assert list(variants) == ["fp32", "bf16 autocast", "channels_last", "torch.compile"]
    assert variants["bf16 autocast"]["ran"] == "False" and "CUDA only" in variants["bf16 autocast"]["note"]
    assert all(float(variants[v]["images_per_s"]) > 0 for v in ("fp32", "channels_last", "torch.compile"))
    share = read_table(folder / "coupling_share.csv")
    assert [(r["coupling"], r["pairing"]) for r in share] == [
        (c, p) for c in ("independent", "loom") for p in ("pipelined", "synchronous")
    ]
    sampling = read_table(folder / "sampling.csv")
    assert [(r["solver"], int(r["nfe"])) for r in sampling] == [("midpoint-12", 24)]
    architectures = read_table(folder / "architectures.csv")  # what the plan reads, per architecture
    assert [(r["preset"], r["precision"], r["ran"]) for r in architectures] == [
        ("tiny", "fp32", "True"),
        ("tiny", "bf16", "False"),
    ]
    summary = report["summary"]
    assert summary["architecture_images_per_s"] == {
        "tiny": {"fp32": pytest.approx(float(architectures[0]["images_per_s"]))}
    }
    assert summary["architecture_images_per_s"]["tiny"]["fp32"] > 0
    assert summary["bf16_over_fp32"] is None and summary["share_target"] == 0.02
    assert summary["coupling_share_pipelined"] >= 0 and report["wall_time_s"] > 0


def test_the_gpu_check_times_every_released_architecture_at_its_per_gpu_batch() -> None:
    assert gpu_check.GPU_SIZE.architectures == (
        ("cifar10", 32),
        ("imagenet32", 128),
        ("imagenet64", 24),
        ("ffhq256_latent", 32),
    )


def test_the_gpu_check_refuses_to_pretend_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit, match="no CUDA GPU here"):
        gpu_check.main([])
