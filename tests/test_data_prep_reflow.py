"""data_prep/reflow_pairs.py: deterministic (seed, sample) pairs, resumable without duplicates or gaps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import h5py
import numpy as np
import torch

from lib import toy
from lib.couplings import make_coupling, noise_from_seeds
from lib.models import MLP
from lib.results import REPO_ROOT
from lib.sample import image_seeds, load_model
from lib.solvers import sample
from lib.train import TrainConfig, train_flow


def load_prep():
    spec = importlib.util.spec_from_file_location("prep_reflow", REPO_ROOT / "data_prep" / "reflow_pairs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_shards(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    seeds, samples = [], []
    for path in sorted(folder.glob("pairs_*.h5")):
        with h5py.File(path) as f:
            seeds.append(f["seeds"][:])
            samples.append(f["samples"][:])
    return np.concatenate(seeds), np.concatenate(samples)


def test_pairs_regenerate_from_their_seeds_and_resume_exactly(tmp_path: Path) -> None:
    prep = load_prep()
    data = toy.sample_toy("moons", 32)
    checkpoint = tmp_path / "teacher.pt"
    train_flow(MLP(2, hidden=16, depth=2), data, make_coupling("loom", 32),
               TrainConfig(steps=3, batch_size=8, progress=False), checkpoint=checkpoint)
    argv = ["--checkpoint", str(checkpoint), "--num", "10", "--shard-size", "4", "--solver", "euler-2", "--seed", "3",
            "--batch-size", "3", "--device", "cpu", "--out", str(tmp_path / "pairs")]
    assert prep.main(argv) == 0
    seeds, samples = read_shards(tmp_path / "pairs")
    assert np.array_equal(seeds, image_seeds(3, 0, 10).numpy())  # every pair once, in order
    teacher = load_model(checkpoint).model
    with torch.no_grad():
        again = sample(teacher, noise_from_seeds(torch.from_numpy(seeds), (2,), "cpu"), "euler-2").x
    assert torch.allclose(torch.from_numpy(samples), again, atol=1e-6)
    (tmp_path / "pairs" / "pairs_00001.h5").unlink()  # interrupted: one shard missing
    assert prep.main(argv) == 0
    seeds2, samples2 = read_shards(tmp_path / "pairs")
    assert np.array_equal(seeds2, seeds) and np.allclose(samples2, samples, atol=1e-6)
    with h5py.File(tmp_path / "pairs" / "pairs_00000.h5") as f:
        assert f.attrs["noise_device_type"] == "cpu" and f.attrs["solver"] == "euler-2"
