"""Fixtures shared by the tests of every part of the kit."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from lib.paper import REFERENCE_DIR


@pytest.fixture(scope="session")
def released_keys() -> dict[str, Any]:
    """lib/reference/released_checkpoint_keys.json: the released checkpoints' state-dict layout (facts, shipped)."""
    return json.loads((REFERENCE_DIR / "released_checkpoint_keys.json").read_text())


@pytest.fixture
def interrupted_training(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """``run(argv, step, sig=SIGINT)``: ``lib.train.main(argv)`` with ``sig`` sent to this process during training
    step ``step`` (fault injection at a known step) -> its exit status."""
    import lib.train as train

    def run(argv: list[str], step: int, sig: signal.Signals = signal.SIGINT) -> int:
        real = train.train_step

        def train_step(trainer: Any, index: Any) -> Any:
            result = real(trainer, index)
            if trainer.loop.step + 1 == step:  # the loop numbers the step once train_step returns
                os.kill(os.getpid(), sig)
            return result

        monkeypatch.setattr(train, "train_step", train_step)
        try:
            return train.main(argv)
        finally:
            monkeypatch.setattr(train, "train_step", real)

    return run


@pytest.fixture
def teacher_checkpoint(tmp_path: Any) -> Any:
    """A lib.train checkpoint of the digits UNet (1 x 8 x 8) trained for 3 steps: a teacher for reflow pairs."""
    import torch

    from lib.couplings import make_coupling
    from lib.train import TrainConfig, train_flow
    from lib.unet import build_unet

    checkpoint = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    train_flow(
        build_unet("digits"),
        torch.rand(32, 1, 8, 8) * 2 - 1,
        make_coupling("loom", 32),
        TrainConfig(steps=3, batch_size=8, progress=False, ema_decay=0.5),
        checkpoint=checkpoint,
    )
    return checkpoint
