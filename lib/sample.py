"""Sample from a trained velocity field: any checkpoint, any solver, reproducible image by image.

Image i of a run with ``--seed s`` starts from the noise of one seed (:func:`image_seeds`, through
lib.couplings' noise_from_seeds), so the same image comes out whatever the batch size or the number of images.

    python -m lib.sample --checkpoint runs/c10/checkpoint.pt --solver midpoint-4 --num 64 --out grid.png
    python -m lib.sample --checkpoint loom-cfm_cifar10.pt --solver dopri5 --num 16 --out released.png
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import save_image

from lib import cli, files
from lib.checkpoints import LoadedModel, load_model
from lib.couplings import SEED_HIGH, noise_from_seeds
from lib.files import atomic_write_stream
from lib.solvers import integrate, parse_solver

# Image i of run seed s has noise seed (s * RUN_STRIDE + i) mod 2**32 (the generator's seed space, see
# lib.couplings.SEED_HIGH): distinct within a run, and runs s != s' start ~10**9 seeds apart.
RUN_STRIDE = 1_000_000_007


def to_images(loaded: LoadedModel, x: Tensor) -> Tensor:
    """Samples (B, *loaded.shape) -> images in [-1, 1]: decoded for latent models, unchanged otherwise."""
    if loaded.decoder is None:
        return x
    with torch.no_grad():
        return loaded.decoder.to(x.device).eval()(x)


def image_seeds(seed: int, start: int, count: int) -> Tensor:
    """Noise seeds of images start .. start + count - 1 of run ``seed`` -> (count,) int64 in [0, 2**32)."""
    # The run's offset is reduced in Python first: any seed (up to 2**64) stays inside int64, and the seeds are those
    # of (seed * RUN_STRIDE + i) % 2**32 exactly.
    return ((seed * RUN_STRIDE) % SEED_HIGH + torch.arange(start, start + count, dtype=torch.int64)) % SEED_HIGH


# A run numbers its images' noise seeds modulo 2**32: beyond that many images the noise would repeat.
MAX_IMAGES = cli.int_range(1, SEED_HIGH, " (image noise seeds repeat beyond 2**32)")


def noise_for_images(
    loaded: LoadedModel, seed: int, count: int, device: torch.device | str = "cpu", start: int = 0
) -> Tensor:
    """The starting noise of images start .. start + count - 1 of run ``seed`` -> (count, *loaded.shape)."""
    return noise_from_seeds(image_seeds(seed, start, count), loaded.shape, device)


def generate(
    loaded: LoadedModel,
    num: int,
    solver: str,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    start: int = 0,
) -> Iterator[tuple[Tensor, int]]:
    """Yield (samples (b, *shape) on the CPU, true NFE of that batch) for images start .. start + num - 1."""
    model = loaded.model.to(device).eval()
    for first in range(start, start + num, batch_size):
        count = min(batch_size, start + num - first)
        z = noise_for_images(loaded, seed, count, device, first)
        with torch.no_grad():
            result = integrate(model, z, solver)
        yield result.x.cpu(), result.nfe


def as_images(samples: Tensor) -> Tensor:
    """Samples -> (N, C, H, W) to draw: images as they are, flat vectors of a square length (digits' 64) as one-channel
    square images, other vectors as one-pixel-high strips."""
    if samples.ndim == 4:
        return samples
    side = math.isqrt(samples.shape[1])
    if side * side == samples.shape[1]:
        return samples.reshape(len(samples), 1, side, side)
    return samples[:, None, None, :]


def save_grid(images: Tensor, path: str | os.PathLike[str]) -> Path:
    """Images (N, C, H, W) in [-1, 1] -> a square-ish image grid at ``path`` (format by its suffix, any case),
    written atomically."""
    path = Path(path)
    fmt = image_format(path)
    grid = dict(nrow=max(1, math.isqrt(len(images))), normalize=True, value_range=(-1, 1))
    return atomic_write_stream(path, lambda f: save_image(images.clamp(-1, 1), f, format=fmt, **grid))


def save_samples(images: Tensor, path: str | os.PathLike[str]) -> Path:
    """``--out``: the images as a tensor (.pt) or drawn as a grid (an image suffix), atomically: a failed write
    (a full disk) leaves an existing file as it was."""
    path = Path(path)
    if path.suffix.lower() == ".pt":
        return atomic_write_stream(path, lambda f: torch.save(images, f))
    return save_grid(as_images(images), path)


def image_format(path: Path) -> str | None:
    """PIL's format name for an image file name's suffix (any case), or None if PIL cannot write it."""
    from PIL import Image

    return Image.registered_extensions().get(path.suffix.lower())


def check_output(path: Path) -> Path:
    """``--out``, before any sampling: a .pt tensor file or an image PIL can write (suffix in any case), in a folder
    where a file can be created (lib.files.check_output); ValueError / OSError otherwise."""
    if path.suffix.lower() != ".pt" and image_format(path) is None:
        raise ValueError(f"--out {path}: give a .pt file (the images as a tensor) or an image such as .png")
    return files.check_output(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.sample``: an expected error is one line and status 2 (lib.cli)."""
    return cli.run(sample_command, argv)


def sample_command(argv: list[str]) -> int:
    p = cli.parser("python -m lib.sample", __doc__)
    p.add_argument("--checkpoint", required=True, help="a lib.train checkpoint, a released .pt, or released:<name>")
    p.add_argument("--solver", default="midpoint-4", help="euler-K, midpoint-K, rk4-K or dopri5")
    p.add_argument("--num", type=MAX_IMAGES, default=64, help="number of images")
    p.add_argument("--seed", type=cli.seed, default=0, help="run seed (fixes every image's noise)")
    p.add_argument("--batch-size", type=cli.positive_int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--raw-weights", action="store_true", help="kit checkpoints: the raw weights, not the EMA")
    p.add_argument(
        "--autoencoder",
        default=None,
        help="kit checkpoints trained on latents: decode with this autoencoder (hub id, save_pretrained folder or "
        "weights file) instead of the one the checkpoint records",
    )
    p.add_argument("--out", type=Path, required=True, help="PNG grid (images) or .pt tensor file")
    args = p.parse_args(argv)
    parse_solver(args.solver)  # a typo fails here, before the model is loaded
    device, out = cli.check_device(args.device), check_output(args.out)
    loaded = load_model(args.checkpoint, use_ema=not args.raw_weights, autoencoder=args.autoencoder)
    batches = list(generate(loaded, args.num, args.solver, args.seed, args.batch_size, device))
    images = torch.cat([to_images(loaded, x) for x, _ in batches])
    save_samples(images, out)
    print(
        json.dumps(
            {
                **loaded.info,
                "solver": args.solver,
                "nfe_per_batch": [n for _, n in batches],
                "num": args.num,
                "seed": args.seed,
                "out": str(out),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
