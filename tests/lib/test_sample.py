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


def test_sample_cli_refuses_bad_arguments_before_loading(tmp_path: Path, capsys) -> None:
    base = ["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "grid.png")]
    for argv, message in (
        (["--num", "0"], "--num: must be a positive integer, got 0"),
        (["--batch-size", "0"], "--batch-size: must be a positive integer, got 0"),
        (["--solver", "rk45"], "unknown solver 'rk45'"),  # before the (missing) checkpoint is even looked at
        (["--device", "tpu"], "--device 'tpu' is not a device: use cpu, cuda or cuda:<index>"),
        (["--device", "meta"], "--device meta: the kit runs on cpu, cuda or mps"),
        (["--out", str(tmp_path / "grid.txt")], "give a .pt file (the images as a tensor) or an image such as .png"),
        ([], "no checkpoint file at"),
    ):
        assert sample.main([*base, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
