"""Reflow pairs: (noise seed, generated sample) from a trained model into sharded HDF5, resumable.

Pair i of run seed s starts from the noise of lib.sample.image_seeds(s, i, 1): the seed is stored, not
the noise, and regenerates it exactly on the same device type. Shard k holds pairs
[k * shard_size, (k + 1) * shard_size), so an interrupted run resumes by running it again: finished
shards are kept, missing ones are made, and no pair is duplicated or skipped.

    python data_prep/reflow_pairs.py --checkpoint runs/cifar10_loom/checkpoint.pt --num 1000000 \\
        --solver dopri5 --out data/reflow_cifar10
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from lib.checkpoints import LoadedModel, load_model
from lib.datasets import atomic_write_hdf5
from lib.sample import generate, image_seeds


def shard_path(out: Path, k: int) -> Path:
    return out / f"pairs_{k:05d}.h5"


def write_shard(path: Path, seeds: np.ndarray, samples: np.ndarray, solver: str, device: str) -> Path:
    """One shard: /latents float32 (n, C, H, W) with attrs scale = 1 (the kit's HDF5 latent layout, so
    lib.datasets.HDF5Images reads the samples) and /seeds int64 (n,); attrs say how the noise is regenerated."""

    def fill(f: h5py.File) -> None:
        f.create_dataset("latents", data=samples)
        f["latents"].attrs["scale"] = 1.0
        f.create_dataset("seeds", data=seeds)
        f.attrs.update({"solver": solver, "noise_device_type": device, "noise": "lib.couplings.noise_from_seeds"})

    return atomic_write_hdf5(path, fill)


def make_pairs(
    loaded: LoadedModel,
    out: Path,
    num: int,
    solver: str,
    seed: int = 0,
    shard_size: int = 50_000,
    batch_size: int = 256,
    device: str = "cpu",
) -> list[Path]:
    """Write the shards of ``num`` pairs that are missing -> every shard path, in order."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in tqdm(range(math.ceil(num / shard_size)), desc="reflow shards"):
        path = shard_path(out, k)
        paths.append(path)
        if path.exists():
            continue
        start, count = k * shard_size, min(shard_size, num - k * shard_size)
        if len(loaded.shape) != 3:
            raise ValueError(f"reflow pairs are images (C, H, W); this model makes {loaded.shape}")
        samples = torch.cat([x for x, _ in generate(loaded, count, solver, seed, batch_size, device, start=start)])
        write_shard(
            path,
            image_seeds(seed, start, count).numpy(),
            samples.numpy().astype(np.float32),
            solver,
            torch.device(device).type,
        )
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", required=True, help="the teacher: a lib.train checkpoint, a released .pt or released:<name>"
    )
    p.add_argument("--num", type=int, required=True, help="number of pairs (paper: 1,000,000)")
    p.add_argument("--solver", default="dopri5", help="how the teacher integrates (spec string)")
    p.add_argument("--seed", type=int, default=0, help="run seed: fixes every pair's noise")
    p.add_argument("--shard-size", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, required=True, help="folder of pairs_<k>.h5 shards")
    args = p.parse_args(argv)
    paths = make_pairs(
        load_model(args.checkpoint),
        args.out,
        args.num,
        args.solver,
        args.seed,
        args.shard_size,
        args.batch_size,
        args.device,
    )
    print(f"{args.num} pairs in {len(paths)} shard(s) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
