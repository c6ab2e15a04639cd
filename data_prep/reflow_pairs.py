"""Reflow pairs: (noise seed, generated sample) from a trained model into sharded HDF5, resumable.

Pair i of run seed s starts from the noise of lib.sample.image_seeds(s, i, 1): the seed is stored, not
the noise, and regenerates it exactly on the same device type. Shard k holds pairs
[k * shard_size, (k + 1) * shard_size), so an interrupted run resumes by running it again: finished
shards are kept, missing ones are made, and no pair is duplicated or skipped.

Samples are stored as the released code stores them (``--store uint8``, the default): clamped to [-1, 1] and
quantised to 8-bit images (HDF5 /images, read back as x / 127.5 - 1), so the student's targets are images, not
the teacher's raw floats. ``--store float32`` keeps the raw samples (/latents with scale 1). Either way every
shard records what the 8-bit storage changes (attrs ``clamped_fraction``, ``quantisation_rms``,
``quantisation_max``: of the sample values, those outside [-1, 1], and the RMS and largest change), so the
difference between the two stores is measured, not assumed.

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
from torch import Tensor
from tqdm.auto import tqdm

from lib.checkpoints import LoadedModel, load_model
from lib.datasets import atomic_write_hdf5, pair_storage, quantisation_change, to_uint8
from lib.sample import generate, image_seeds


def shard_path(out: Path, k: int) -> Path:
    return out / f"pairs_{k:05d}.h5"


STORES = ("uint8", "float32")


def write_shard(path: Path, seeds: np.ndarray, samples: Tensor, solver: str, device: str, store: str) -> Path:
    """One shard: /seeds int64 (n,) and the samples (n, C, H, W) in the kit's HDF5 layout (lib.datasets.HDF5Images
    reads both): ``uint8`` as /images (clamped, 8-bit, the released code's store), ``float32`` as /latents with
    attrs scale = 1. File attrs say how the noise is regenerated, the store, and :func:`quantisation_change`."""

    def fill(f: h5py.File) -> None:
        if store == "uint8":
            f.create_dataset("images", data=to_uint8(samples).numpy())
        else:
            f.create_dataset("latents", data=samples.numpy().astype(np.float32))
            f["latents"].attrs["scale"] = 1.0
        f.create_dataset("seeds", data=seeds)
        f.attrs.update({"solver": solver, "noise_device_type": device, "noise": "lib.couplings.noise_from_seeds"})
        f.attrs.update({"store": store, **quantisation_change(samples)})

    return atomic_write_hdf5(path, fill)


def shard_store(path: Path) -> str:
    """The store of an existing shard (shards written before ``store`` was recorded hold float32 /latents)."""
    with h5py.File(path, "r") as f:
        return str(f.attrs.get("store", "uint8" if "images" in f else "float32"))


def make_pairs(
    loaded: LoadedModel,
    out: Path,
    num: int,
    solver: str,
    seed: int = 0,
    shard_size: int = 50_000,
    batch_size: int = 256,
    device: str = "cpu",
    store: str = "uint8",
) -> list[Path]:
    """Write the shards of ``num`` pairs that are missing -> every shard path, in order."""
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}; use one of {STORES}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in tqdm(range(math.ceil(num / shard_size)), desc="reflow shards"):
        path = shard_path(out, k)
        paths.append(path)
        if path.exists():
            if shard_store(path) != store:
                raise ValueError(
                    f"{path} stores its samples as {shard_store(path)}, this run as {store}: rerun with "
                    f"--store {shard_store(path)}, or write to another --out"
                )
            continue
        start, count = k * shard_size, min(shard_size, num - k * shard_size)
        if len(loaded.shape) != 3:
            raise ValueError(f"reflow pairs are images (C, H, W); this model makes {loaded.shape}")
        samples = torch.cat(
            [x.cpu() for x, _ in generate(loaded, count, solver, seed, batch_size, device, start=start)]
        )
        write_shard(path, image_seeds(seed, start, count).numpy(), samples, solver, torch.device(device).type, store)
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
    p.add_argument(
        "--store",
        choices=STORES,
        default="uint8",
        help="uint8: samples clamped and quantised to 8-bit images, as the released code stores them; "
        "float32: the raw samples",
    )
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
        args.store,
    )
    print(f"{args.num} pairs in {len(paths)} shard(s) under {args.out}: {pair_storage(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
