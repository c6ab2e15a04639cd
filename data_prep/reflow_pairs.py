"""Reflow pairs: (noise seed, generated sample) from a trained model into sharded HDF5, resumable.

Pair i of run seed s starts from the noise of lib.sample.image_seeds(s, i, 1): the seed is stored, not
the noise, and regenerates it exactly on the same device type. Shard k holds pairs
[k * shard_size, (k + 1) * shard_size), so an interrupted run resumes by running it again: finished
shards are kept, missing ones are made, and no pair is duplicated or skipped. ``manifest.json`` (lib.shards)
records the settings (the teacher's SHA-256 among them) and every shard's checksum: a rerun with other settings is
refused with the differences (``--overwrite`` deletes the shards and starts over), and lib.train checks the
shards against it before training.

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

import math
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

from lib import cli
from lib.checkpoints import LoadedModel, checkpoint_file, load_model
from lib.datasets import atomic_write_hdf5, pair_storage, quantisation_change, to_uint8
from lib.files import FolderLock, sha256_file
from lib.progress import progress
from lib.sample import MAX_IMAGES, generate, image_seeds
from lib.shards import ShardFolder
from lib.solvers import parse_solver


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


def pair_settings(
    checkpoint: Path, num: int, solver: str, seed: int, shard_size: int, batch_size: int, device: str, store: str
) -> dict[str, object]:
    """What the pairs depend on, as the manifest records it (the batch size too: an adaptive solver steps the
    whole batch together; the store, so shards of both stores never mix)."""
    return {
        "teacher": str(checkpoint.resolve()),
        "teacher_sha256": sha256_file(checkpoint),
        "num": num,
        "solver": parse_solver(solver).label,
        "seed": seed,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "noise_device_type": torch.device(device).type,
        "store": store,
    }


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
    manifest: ShardFolder | None = None,
) -> list[Path]:
    """Write the shards of ``num`` pairs that are missing -> every shard path, in order.

    store: "uint8" (clamped 8-bit images, the released code's store) or "float32" (the raw samples).
    manifest: the output folder's manifest (the command line's); shards it lists are kept, new ones recorded.
    """
    if num < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError(
            f"--num, --shard-size and --batch-size must be positive, got {num}, {shard_size}, {batch_size}"
        )
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}; use one of {STORES}")
    if len(loaded.shape) != 3:
        raise ValueError(f"reflow pairs are images (C, H, W); this model makes {loaded.shape}")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in progress(range(math.ceil(num / shard_size)), desc="reflow shards"):
        path = shard_path(out, k)
        paths.append(path)
        if manifest.done(path) if manifest is not None else path.exists():
            continue
        start, count = k * shard_size, min(shard_size, num - k * shard_size)
        samples = torch.cat(
            [x.cpu() for x, _ in generate(loaded, count, solver, seed, batch_size, device, start=start)]
        )
        write_shard(path, image_seeds(seed, start, count).numpy(), samples, solver, torch.device(device).type, store)
        if manifest is not None:
            manifest.record(path, count)
    if manifest is not None:
        manifest.finish(paths)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python data_prep/reflow_pairs.py``: an expected error is one line and status 2 (lib.cli)."""
    return cli.run(pairs_command, argv)


def pairs_command(argv: list[str]) -> int:
    p = cli.parser("python data_prep/reflow_pairs.py", __doc__)
    p.add_argument(
        "--checkpoint", required=True, help="the teacher: a lib.train checkpoint, a released .pt or released:<name>"
    )
    p.add_argument("--num", type=MAX_IMAGES, required=True, help="number of pairs (paper: 1,000,000)")
    p.add_argument("--solver", default="dopri5", help="how the teacher integrates (spec string)")
    p.add_argument("--seed", type=cli.seed, default=0, help="run seed: fixes every pair's noise")
    p.add_argument("--shard-size", type=cli.positive_int, default=50_000)
    p.add_argument("--batch-size", type=cli.positive_int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--overwrite", action="store_true", help="delete the shards of another run in --out and start over")
    p.add_argument("--out", type=Path, required=True, help="folder of pairs_<k>.h5 shards")
    p.add_argument(
        "--store",
        choices=STORES,
        default="uint8",
        help="uint8: samples clamped and quantised to 8-bit images, as the released code stores them; "
        "float32: the raw samples",
    )
    args = p.parse_args(argv)
    device = cli.check_device(args.device)
    parse_solver(args.solver)  # a typo fails here, before the teacher is loaded
    checkpoint = checkpoint_file(args.checkpoint)
    settings = pair_settings(
        checkpoint, args.num, args.solver, args.seed, args.shard_size, args.batch_size, args.device, args.store
    )
    with FolderLock(args.out, "data prep"):
        manifest = ShardFolder(args.out, "data_prep/reflow_pairs.py", settings, "pairs_*.h5", args.overwrite)
        loaded = load_model(checkpoint)
        paths = make_pairs(
            loaded,
            args.out,
            args.num,
            args.solver,
            args.seed,
            args.shard_size,
            args.batch_size,
            str(device),
            args.store,
            manifest,
        )
    print(f"{args.num} pairs in {len(paths)} shard(s) under {args.out}: {pair_storage(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
