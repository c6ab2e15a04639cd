"""The TensorBoard log of a run: the history's values as they happen, beside the machine's; optional; resumes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lib import livelog, toy
from lib.couplings import make_coupling
from lib.models import MLP
from lib.train import TrainConfig, train_flow

CONFIG = TrainConfig(steps=12, batch_size=16, lr=1e-3, warmup_steps=6, seed=3, log_every=4, progress=False)


def train(steps: int, folder: Path, **changes: object):
    data = toy.sample_toy("moons", 100, seed=1)
    torch.manual_seed(0)
    config = replace(CONFIG, steps=steps, **changes)
    return train_flow(MLP(2, hidden=16, depth=1), data, make_coupling("loom", 100, seed=5), config, folder / "ck.pt")


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a run's TensorBoard log: {tag: [(step, value), ...]} in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / livelog.FOLDER), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_the_log_holds_the_history_values_the_lr_and_the_machine_and_a_resume_continues_it(tmp_path: Path) -> None:
    train(8, tmp_path)
    result = train(12, tmp_path)  # resumed at step 8
    scalars = read_scalars(tmp_path)
    steps = [r["step"] for r in result.history]
    assert steps == [4, 8, 12]
    for key in ("loss", "swaps", "cost_before", "cost_after"):  # the same record the notebooks' figures read
        assert [s for s, _ in scalars[f"train/{key}"]] == steps
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx([r[key] for r in result.history], rel=1e-6)
    # Linear warm-up over 6 steps: step s trains with lr min(1, s / 6) x 1e-3.
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([4 / 6 * 1e-3, 1e-3, 1e-3], rel=1e-6)
    assert [s for s, _ in scalars["speed/steps_per_s"]] == [4, 8, 12]
    assert all(v > 0 for _, v in scalars["speed/steps_per_s"] + scalars["memory/peak_mib"])


def test_no_log_without_tensorboard_when_switched_off_or_in_memory(tmp_path: Path, monkeypatch) -> None:
    train(4, tmp_path / "off", tensorboard=False)
    assert not (tmp_path / "off" / livelog.FOLDER).exists()
    monkeypatch.setattr(livelog, "tensorboard_available", lambda: False)
    train(4, tmp_path / "absent")
    assert (tmp_path / "absent" / "ck.pt").exists() and not (tmp_path / "absent" / livelog.FOLDER).exists()
    log = livelog.LiveLog(None)  # a run without a folder (in-process, no checkpoint) logs nowhere
    log.record({"step": 1, "loss": 1.0}, 1e-3, torch.device("cpu"))
    assert log.writer is None
