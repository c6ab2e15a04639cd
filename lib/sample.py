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

from lib import cli
from lib.checkpoints import LoadedModel, load_model
from lib.couplings import SEED_HIGH, noise_from_seeds
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
    return (seed * RUN_STRIDE + torch.arange(start, start + count, dtype=torch.int64)) % SEED_HIGH


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
    """Images (N, C, H, W) in [-1, 1] -> a square-ish PNG grid at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.clamp(-1, 1), path, nrow=max(1, math.isqrt(len(images))), normalize=True, value_range=(-1, 1))
    return path


def check_output(path: Path) -> Path:
    """``--out``: a .pt tensor file or an image PIL can write (by its suffix); ValueError otherwise."""
    from PIL import Image

    if path.suffix.lower() != ".pt" and path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out {path}: give a .pt file (the images as a tensor) or an image such as .png")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.sample``: an expected error is one line and status 2 (lib.cli)."""
    return cli.run(sample_command, argv)


def sample_command(argv: list[str]) -> int:
    p = cli.parser("python -m lib.sample", __doc__)
    p.add_argument("--checkpoint", required=True, help="a lib.train checkpoint, a released .pt, or released:<name>")
    p.add_argument("--solver", default="midpoint-4", help="euler-K, midpoint-K, rk4-K or dopri5")
    p.add_argument("--num", type=cli.positive_int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="run seed (fixes every image's noise)")
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
    if out.suffix == ".pt":
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(images, out)
    else:
        save_grid(as_images(images), out)
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
