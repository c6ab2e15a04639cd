"""Downsampled ImageNet (32x32 or 64x64) -> HDF5 shards the kit reads (lib.datasets.HDF5Images).

Sources:
  - the official downsampled releases (image-net.org "Imagenet32_train_npz" / "Imagenet64_train_part*_npz"):
    ``train_data_batch_<k>.npz`` (and ``val_data.npz``) with ``data`` uint8 (N, 3 * res * res) as R, G, B
    planes and ``labels`` 1..1000;
  - an ImageFolder tree (class folders of images), resized and centre-cropped to ``--resolution``.

    python data_prep/imagenet.py --source ~/Imagenet32_train_npz --resolution 32 --out data/imagenet32
    python data_prep/imagenet.py --source ~/imagenet/train --resolution 64 --out data/imagenet64
    python data_prep/imagenet.py ... --fid-stats          # also clean-fid reference statistics (online: Inception)

Resumable: shards are written atomically and listed in ``<out>/<split>/manifest.json`` (lib.shards) with the
settings and each shard's checksum, so an interrupted run resumes by running it again (listed shards are kept). A
rerun with other settings (another --shard-size, source or resolution) is refused with the differences;
``--overwrite`` deletes the shards and starts over. Labels are stored 0-based.
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from lib import cli
from lib.datasets import DatasetFormatError, HDF5Images, ImageFolderImages, to_uint8, write_hdf5_images
from lib.fid import make_reference_stats
from lib.files import FolderLock
from lib.progress import progress
from lib.shards import ShardFolder, source_fingerprint


def npz_batch_files(source: Path, split: str) -> list[Path]:
    """The release's batch files for ``split`` ("train": train_data_batch_*, "val": val_data*) in order."""
    pattern = "train_data_batch_*.npz" if split == "train" else "val_data*.npz"
    files = sorted(source.glob(pattern), key=lambda p: (len(p.name), p.name))  # batch_2 before batch_10
    if not files:
        raise FileNotFoundError(
            f"no {pattern} in {source}; point --source at the unpacked downsampled ImageNet "
            "folder (or at an ImageFolder tree)"
        )
    return files


def read_npz_batch(path: Path, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """One official batch file -> (images uint8 (N, 3, res, res), labels int64 (N,) 0-based)."""
    try:
        with np.load(path, allow_pickle=False) as batch:  # arrays only: a pickled object array is refused
            data, labels = batch["data"], batch["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DatasetFormatError(
            f"{path} is not a downsampled-ImageNet batch with 'data' and 'labels' ({err}); re-download or re-extract it"
        ) from err
    if data.ndim != 2 or data.shape[1] != 3 * resolution * resolution or data.dtype != np.uint8:
        raise DatasetFormatError(
            f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, {3 * resolution**2}) "
            f"for --resolution {resolution}; is it the {resolution}x{resolution} release?"
        )
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(data) or labels.min() < 1:
        raise DatasetFormatError(f"{path}: {len(labels)} labels for {len(data)} images, or labels not 1-based")
    return data.reshape(-1, 3, resolution, resolution), labels - 1


def npz_chunks(source: Path, split: str, resolution: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) per batch file, in order."""
    for path in npz_batch_files(source, split):
        yield read_npz_batch(path, resolution)


def folder_chunks(source: Path, resolution: int, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) of an ImageFolder tree in chunks of ``chunk`` images, resized to ``resolution``."""
    dataset = ImageFolderImages(source, resolution, flip=False)
    for start in range(0, len(dataset), chunk):
        index = torch.arange(start, min(start + chunk, len(dataset)))
        _, x = dataset.get_batch(index)
        yield to_uint8(x).numpy(), dataset.example_labels(index).numpy()


def write_shards(
    chunks: Iterator[tuple[np.ndarray, np.ndarray]], out: Path, shard_size: int, prefix: str, manifest: ShardFolder
) -> list[Path]:
    """Re-cut a stream of (images, labels) into shards of ``shard_size`` images: out/<prefix>_<k>.h5.

    A shard ``manifest`` lists is kept (its images are still read to keep the cut aligned); each new one is recorded.
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size must be a positive number of images, got {shard_size}")
    shards, images, labels = [], [], []
    pending = 0

    def flush(n: int) -> None:
        nonlocal images, labels, pending
        x, y = np.concatenate(images), np.concatenate(labels)
        path = out / f"{prefix}_{len(shards):05d}.h5"
        if not manifest.done(path):
            write_hdf5_images(path, x[:n], y[:n])
            manifest.record(path, n)
        shards.append(path)
        images, labels, pending = [x[n:]], [y[n:]], len(x) - n

    for x, y in progress(chunks, desc=f"{prefix} shards", unit="file"):
        images.append(x)
        labels.append(y)
        pending += len(x)
        while pending >= shard_size:
            flush(shard_size)
    if pending:
        flush(pending)
    manifest.finish(shards)
    return shards


def source_settings(source: Path, resolution: int, split: str, shard_size: int) -> dict[str, object]:
    """What the shards depend on, for the manifest: the source (its files' names and sizes), resolution, split, cut."""
    from_npz = any(source.glob("*.npz"))
    files = (
        npz_batch_files(source, split)
        if from_npz
        else [p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
    )
    return {
        "source": str(source.resolve()),
        "source_kind": "npz" if from_npz else "image folder",
        "source_files": source_fingerprint(files, source),
        "resolution": resolution,
        "split": split,
        "shard_size": shard_size,
    }


def write_fid_stats(shards: Path, resolution: int, split: str, count: int, seed: int = 0) -> Path:
    """clean-fid reference statistics ``imagenet<res>_<split>`` of ``count`` random images of the shards."""
    data = HDF5Images(shards, flip=False)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return make_reference_stats(f"imagenet{resolution}_{split}", data.get_batch(pick)[1])


def main(argv: list[str] | None = None) -> int:
    """``python data_prep/imagenet.py``: an expected error is one line and status 2 (lib.cli)."""
    return cli.run(imagenet_command, argv)


def imagenet_command(argv: list[str]) -> int:
    p = cli.parser("python data_prep/imagenet.py", __doc__)
    p.add_argument("--source", type=Path, required=True, help="folder of official .npz batches, or an ImageFolder tree")
    p.add_argument("--resolution", type=int, required=True, choices=[32, 64])
    p.add_argument("--out", type=Path, required=True, help="output folder of HDF5 shards")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--shard-size", type=cli.positive_int, default=100_000, help="images per shard")
    p.add_argument(
        "--fid-stats",
        action="store_true",
        help="also store clean-fid reference statistics imagenet<res>_<split> (Inception: online once)",
    )
    p.add_argument("--fid-images", type=cli.positive_int, default=50_000, help="random images the FID statistics use")
    p.add_argument("--overwrite", action="store_true", help="delete the shards of another run in --out and start over")
    args = p.parse_args(argv)
    if not args.source.is_dir():
        raise FileNotFoundError(f"--source {args.source} is not a folder")
    out = args.out / args.split
    settings = source_settings(args.source, args.resolution, args.split, args.shard_size)
    with FolderLock(out, "data prep"):
        manifest = ShardFolder(
            out, "data_prep/imagenet.py", settings, f"imagenet{args.resolution}_*.h5", args.overwrite
        )
        chunks = (
            npz_chunks(args.source, args.split, args.resolution)
            if settings["source_kind"] == "npz"
            else folder_chunks(args.source, args.resolution)
        )
        shards = write_shards(chunks, out, args.shard_size, f"imagenet{args.resolution}_{args.split}", manifest)
    print(f"{len(shards)} shard(s) in {out}")
    if args.fid_stats:
        print(f"FID stats: {write_fid_stats(out, args.resolution, args.split, args.fid_images)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
