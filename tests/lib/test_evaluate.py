"""Sampling and evaluation from checkpoints: per-image seeds, architecture read off the weights, FID rows."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

from lib import evaluate, sample
from lib.couplings import make_coupling
from lib.fid import RandomConvFeatures
from lib.train import TrainConfig, train_flow
from lib.unet import build_unet

CONFIG = TrainConfig(steps=4, batch_size=8, seed=0, progress=False, ema_decay=0.5)


def trained_checkpoint(tmp_path: Path, model: torch.nn.Module, data: torch.Tensor):
    path = tmp_path / "checkpoint.pt"
    result = train_flow(model, data, make_coupling("loom", len(data)), CONFIG, checkpoint=path)
    return path, result


def test_fid_rows_record_true_nfe_and_the_protocol(tmp_path: Path) -> None:
    data = torch.rand(16, 3, 32, 32) * 2 - 1
    path, _ = trained_checkpoint(tmp_path, build_unet("tiny"), data)
    reference = tmp_path / "reference"
    reference.mkdir()
    for i, image in enumerate(data):
        save_image((image + 1) / 2, reference / f"{i}.png")
    rows = evaluate.fid_rows(
        sample.load_model(path),
        ["euler-2", "midpoint-2"],
        12,
        str(reference),
        batch_size=6,
        feature_extractor=RandomConvFeatures(),
    )
    assert [r["solver"] for r in rows] == ["euler-2", "midpoint-2"] and [r["nfe"] for r in rows] == [2, 4]
    assert all(r["fid"] >= 0 and r["num_generated"] == 12 and "NOT Inception" in r["note"] for r in rows)
