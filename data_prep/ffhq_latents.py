"""FFHQ images -> kl-f8 autoencoder latents in HDF5 shards (lib.datasets' latent layout), resumable.

    python data_prep/ffhq_latents.py --source ~/ffhq/images1024x1024 --out data/ffhq256_latents --device cuda
    python data_prep/ffhq_latents.py --source ~/ffhq256 --out data/ffhq256_latents --autoencoder ~/sd-vae-ft-mse

Images: every image file under ``--source`` at any depth (the official 1024x1024 PNGs in 00000/ .. 69000/, or a
flat folder of the 256x256 version), in sorted path order, centre-cropped to a square and resized (bicubic,
antialiased) to ``--resolution``. An unreadable file stops the run with its path.

Latents: the posterior MEAN of ``--autoencoder`` (a hub id, default stabilityai/sd-vae-ft-mse, the paper's
"ft-mse" weights, or a save_pretrained folder; see lib.autoencoder), so an image always encodes to the same
latent and an interrupted run resumes bit for bit. Stored UNSCALED as float32 /latents with attributes
``scale`` (the std of the latents of the first ``--batch-size`` images: the paper's first-batch std; training
reads latents / scale), ``autoencoder`` (the source, so lib.train can record how samples decode) and
``flipped_copies``.

Flips: flipping a latent is not encoding the flipped image, so the flipped images are encoded too and stored as
extra examples: shard k holds images [k S, k S + n) as rows 0 .. n-1 and the encodings of their horizontal flips
as rows n .. 2n-1 (attrs ``flipped_copies`` = True; ``--no-flips`` leaves them out). Train on such files without
``--flip`` (``--config ffhq256_latent`` does); lib.datasets.HDF5Images refuses flip=True on them.

Resumable: shard k is a fixed slice of the sorted image list, written atomically and listed in ``manifest.json``
(lib.shards) with the settings and its checksum, so rerunning the same command after an interruption keeps the
finished shards and writes the missing ones: no duplicates, no gaps. Later shards reuse the scale stored in shard
0. A rerun with other settings (autoencoder, resolution, flips, batch size, shard size, source images, device) is
refused with the differences; ``--overwrite`` deletes the shards and starts over.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import h5py
import torch
from torch import Tensor

from lib import cli
from lib.autoencoder import DEFAULT_AUTOENCODER, encode_mean
from lib.checkpoints import load_autoencoder
from lib.datasets import DatasetFormatError, image_files, read_image, uint8_to_unit, write_hdf5_latents
from lib.files import FolderLock
from lib.progress import progress
from lib.shards import ShardFolder, source_fingerprint


def autoencoder_source(autoencoder: str) -> str:
    """What the shards record: a local folder or file as an absolute path (lib.train reads it back from any
    working directory), a hub id as given."""
    path = Path(autoencoder).expanduser()
    return str(path.resolve()) if path.exists() else autoencoder


def encode_images(ae: Any, images: Tensor, flips: bool, device: str) -> tuple[Tensor, Tensor | None]:
    """uint8 images (B, 3, R, R) -> (latents (B, C, h, w), latents of the flipped images or None), float32, CPU."""
    x = uint8_to_unit(images).to(device)
    latents = encode_mean(ae, x).float().cpu()
    return latents, (encode_mean(ae, x.flip(-1)).float().cpu() if flips else None)


def shard_path(out: Path, k: int) -> Path:
    return out / f"ffhq_latents_{k:05d}.h5"


def stored_scale(path: Path) -> float:
    """The latent scale a finished shard 0 recorded (later shards reuse it)."""
    try:
        with h5py.File(path, "r") as f:
            return float(f["latents"].attrs["scale"])
    except (OSError, KeyError) as err:
        raise DatasetFormatError(
            f"{path} is not a latent shard of this script ({err}); rerun with --overwrite"
        ) from err


def encode_shard(
    ae: Any, files: list[Path], resolution: int, batch_size: int, flips: bool, device: str, bar: Any
) -> tuple[Tensor, float]:
    """Encode one shard's images -> (rows (n or 2n, C, h, w): originals then flips, std of the first batch)."""
    originals, flipped = [], []
    for start in range(0, len(files), batch_size):
        batch = torch.stack([read_image(p, resolution) for p in files[start : start + batch_size]])
        latents, latents_flipped = encode_images(ae, batch, flips, device)
        originals.append(latents)
        if latents_flipped is not None:
            flipped.append(latents_flipped)
        bar.update(len(batch))
    return torch.cat(originals + flipped), float(originals[0].std())


def prepare(
    source: Path,
    out: Path,
    autoencoder: str = DEFAULT_AUTOENCODER,
    resolution: int = 256,
    batch_size: int = 32,
    shard_size: int = 10_000,
    flips: bool = True,
    device: str = "cpu",
    overwrite: bool = False,
) -> list[Path]:
    """Write the missing shards of ``source``'s latents under ``out`` (holding the folder) -> every shard path."""
    if batch_size < 1 or shard_size < 1 or resolution < 1:
        raise ValueError("--batch-size, --shard-size and --resolution must be positive")
    files = image_files(source, "FFHQ images")
    attrs = {
        "autoencoder": autoencoder_source(autoencoder),
        "resolution": resolution,
        "flipped_copies": flips,
        "num_source_images": len(files),
        "shard_size": shard_size,
    }
    settings = {
        **attrs,
        "source": str(source.resolve()),
        "source_files": source_fingerprint(files, source),
        "batch_size": batch_size,  # the scale is the std of the first batch
        "device": torch.device(device).type,
    }
    parts = [files[first : first + shard_size] for first in range(0, len(files), shard_size)]
    paths = [shard_path(out, k) for k in range(len(parts))]
    with FolderLock(out, "data prep"):
        manifest = ShardFolder(out, "data_prep/ffhq_latents.py", settings, "ffhq_latents_*.h5", overwrite)
        done = [manifest.done(path) for path in paths]
        scale = stored_scale(paths[0]) if done[0] else None  # the first batch lies in shard 0
        ae = load_autoencoder(autoencoder).to(device) if not all(done) else None
        bar = progress(
            total=len(files), initial=sum(len(part) for part, d in zip(parts, done) if d), unit="img", desc="encode"
        )
        for k, (path, shard_files) in enumerate(zip(paths, parts)):
            if done[k]:
                continue
            latents, first_std = encode_shard(ae, shard_files, resolution, batch_size, flips, device, bar)
            scale = first_std if scale is None else scale
            write_hdf5_latents(
                path, latents, scale, attrs={**attrs, "first_image": k * shard_size, "num_images": len(shard_files)}
            )
            manifest.record(path, len(latents))
        bar.close()
        manifest.finish(paths)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python data_prep/ffhq_latents.py``: an expected error is one line and status 2 (lib.cli)."""
    return cli.run(latents_command, argv)


def latents_command(argv: list[str]) -> int:
    p = cli.parser("python data_prep/ffhq_latents.py", __doc__)
    p.add_argument("--source", type=Path, required=True, help="folder of FFHQ images (any depth)")
    p.add_argument("--out", type=Path, required=True, help="output folder of ffhq_latents_<k>.h5 shards")
    p.add_argument(
        "--autoencoder",
        default=DEFAULT_AUTOENCODER,
        help="hub id (cached / downloaded once), a save_pretrained folder or an LDM weights file",
    )
    p.add_argument(
        "--resolution", type=cli.positive_int, default=256, help="images are centre-cropped and resized to this"
    )
    p.add_argument(
        "--batch-size",
        type=cli.positive_int,
        default=32,
        help="images per encoder call; the first batch sets the scale",
    )
    p.add_argument(
        "--shard-size", type=cli.positive_int, default=10_000, help="source images per shard (x2 rows with flips)"
    )
    p.add_argument(
        "--flips",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also encode the horizontally flipped images, stored as extra examples (paper)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--overwrite", action="store_true", help="delete the shards of another run in --out and start over")
    args = p.parse_args(argv)
    device = cli.check_device(args.device)
    paths = prepare(
        args.source,
        args.out,
        args.autoencoder,
        args.resolution,
        args.batch_size,
        args.shard_size,
        args.flips,
        str(device),
        args.overwrite,
    )
    print(f"{len(paths)} shard(s) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
