"""data_prep/reflow_pairs.py: deterministic (seed, sample) pairs, resumable without duplicates or gaps."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data_prep import reflow_pairs as prep
from lib.checkpoints import load_model, read_training_checkpoint
from lib.couplings import noise_from_seeds
from lib.datasets import HDF5Images, pair_storage, read_pair_seeds, to_uint8, uint8_to_unit
from lib.sample import image_seeds
from lib.solvers import integrate
from lib.train import main


def read_shards(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(seeds (N,), stored samples (N, C, H, W): uint8 /images or float32 /latents) of every shard, in order."""
    seeds, samples = [], []
    for path in sorted(folder.glob("pairs_*.h5")):
        with h5py.File(path) as f:
            seeds.append(f["seeds"][:])
            samples.append(f["images" if "images" in f else "latents"][:])
    return np.concatenate(seeds), np.concatenate(samples)


def test_pairs_regenerate_from_their_seeds_and_resume_exactly(
    tmp_path: Path, teacher_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = teacher_checkpoint
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--num",
        "10",
        "--shard-size",
        "4",
        "--solver",
        "euler-2",
        "--seed",
        "3",
        "--batch-size",
        "3",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "pairs"),
    ]
    assert prep.main(argv) == 0
    seeds, samples = read_shards(tmp_path / "pairs")
    assert np.array_equal(seeds, image_seeds(3, 0, 10).numpy())  # every pair once, in order
    model = load_model(checkpoint).model
    with torch.no_grad():
        again = integrate(model, noise_from_seeds(torch.from_numpy(seeds), (1, 8, 8), "cpu"), "euler-2").x
    # Stored as the released code stores them: clamped to [-1, 1], quantised to 8 bits (at most one level off
    # where a value sits on a rounding boundary and the two runs differ in the last float bit).
    assert samples.dtype == np.uint8
    assert np.abs(samples.astype(int) - to_uint8(again).numpy().astype(int)).max() <= 1
    (tmp_path / "pairs" / "pairs_00001.h5").unlink()  # interrupted: one shard missing
    assert prep.main(argv) == 0
    seeds2, samples2 = read_shards(tmp_path / "pairs")
    assert np.array_equal(seeds2, seeds) and np.abs(samples2.astype(int) - samples.astype(int)).max() <= 1
    with h5py.File(tmp_path / "pairs" / "pairs_00000.h5") as f:
        assert f.attrs["noise_device_type"] == "cpu" and f.attrs["solver"] == "euler-2" and f.attrs["store"] == "uint8"
    capsys.readouterr()
    assert prep.main([*argv, "--store", "float32"]) == 2  # the manifest refuses mixing stores in one folder
    assert "other settings (store: 'uint8' -> 'float32')" in capsys.readouterr().err
    # float32 keeps the raw samples; every shard records what 8-bit storage would change, measured.
    assert prep.main([*argv, "--store", "float32", "--out", str(tmp_path / "raw")]) == 0
    _, raw = read_shards(tmp_path / "raw")
    assert raw.dtype == np.float32 and torch.allclose(torch.from_numpy(raw), again, atol=1e-6)
    summary = pair_storage(tmp_path / "raw")
    change = uint8_to_unit(to_uint8(again)) - again
    assert summary["store"] == "float32" and summary["quantisation_max"] == pytest.approx(change.abs().max().item())
    assert summary["quantisation_rms"] == pytest.approx(change.square().mean().sqrt().item(), rel=1e-4)
    assert summary["clamped_fraction"] == pytest.approx((again.abs() > 1).float().mean().item())
    assert summary["quantisation_max"] <= 0.5 / 127.5 + 1e-6 or summary["clamped_fraction"] > 0  # half a level


def test_reflow_fine_tunes_the_teacher_on_its_own_pairs(tmp_path: Path, teacher_checkpoint: Path) -> None:
    checkpoint = teacher_checkpoint
    pairs = tmp_path / "pairs"
    assert (
        prep.main(
            [
                "--checkpoint",
                str(checkpoint),
                "--num",
                "24",
                "--shard-size",
                "10",
                "--solver",
                "midpoint-2",
                "--device",
                "cpu",
                "--out",
                str(pairs),
            ]
        )
        == 0
    )
    seeds, device_type = read_pair_seeds(pairs)
    assert device_type == "cpu" and np.array_equal(seeds.numpy(), image_seeds(0, 0, 24).numpy())
    assert len(HDF5Images(pairs, flip=False)) == 24
    out = tmp_path / "reflow"
    assert (
        main(
            [
                "--dataset",
                "hdf5",
                "--root",
                str(pairs),
                "--reflow",
                "--init",
                str(checkpoint),
                "--coupling",
                "independent",
                "--steps",
                "3",
                "--batch-size",
                "8",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    state = read_training_checkpoint(out / "checkpoint.pt")
    assert torch.equal(state["coupling"]["seeds"][:, 0], seeds)  # every sample kept its own noise
    assert state["coupling"]["no_swaps"] and all(r["swaps"] == 0 for r in state["history"])
