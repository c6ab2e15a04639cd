"""Sampling and evaluation from checkpoints: per-image seeds, architecture read off the weights, FID rows."""

from __future__ import annotations

from pathlib import Path

import torch

from lib import sample, toy
from lib.couplings import make_coupling
from lib.models import MLP
from lib.train import TrainConfig, train_flow
from lib.unet import build_unet

CONFIG = TrainConfig(steps=4, batch_size=8, seed=0, progress=False, ema_decay=0.5)


def trained_checkpoint(tmp_path: Path, model: torch.nn.Module, data: torch.Tensor):
    path = tmp_path / "checkpoint.pt"
    result = train_flow(model, data, make_coupling("loom", len(data)), CONFIG, checkpoint=path)
    return path, result


def test_images_do_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    path, _ = trained_checkpoint(tmp_path, MLP(2, hidden=16, depth=2), toy.sample_toy("moons", 32))
    loaded = sample.load_model(path)
    small = torch.cat([x for x, _ in sample.generate(loaded, 10, "euler-3", seed=4, batch_size=3)])
    large = torch.cat([x for x, _ in sample.generate(loaded, 10, "euler-3", seed=4, batch_size=10)])
    other = torch.cat([x for x, _ in sample.generate(loaded, 10, "euler-3", seed=5, batch_size=10)])
    assert torch.allclose(small, large, atol=1e-6) and not torch.allclose(small, other)


def test_sample_cli_writes_a_grid(tmp_path: Path) -> None:
    path, _ = trained_checkpoint(tmp_path, build_unet("digits"), torch.rand(16, 1, 8, 8) * 2 - 1)
    assert (
        sample.main(
            [
                "--checkpoint",
                str(path),
                "--num",
                "9",
                "--solver",
                "euler-2",
                "--out",
                str(tmp_path / "grid.png"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (tmp_path / "grid.png").stat().st_size > 0
