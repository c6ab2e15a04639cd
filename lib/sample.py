"""Sample from a trained velocity field: any checkpoint, any solver, reproducible image by image.

Image i of a run with ``--seed s`` starts from the noise of one seed (:func:`image_seeds`, through
lib.couplings' noise_from_seeds), so the same image comes out whatever the batch size or the number of images.

    python -m lib.sample --checkpoint runs/c10/checkpoint.pt --solver midpoint-4 --num 64 --out grid.png
    python -m lib.sample --checkpoint loom-cfm_cifar10.pt --solver dopri5 --num 16 --out released.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torchvision.utils import save_image

from lib.couplings import SEED_HIGH, noise_from_seeds
from lib.models import MLP
from lib.solvers import sample
from lib.unet import CheckpointError, load_released_unet

# Image i of run seed s has noise seed (s * RUN_STRIDE + i) mod 2**32 (the generator's seed space, see
# lib.couplings.SEED_HIGH): distinct within a run, and runs s != s' start ~10**9 seeds apart.
RUN_STRIDE = 1_000_000_007


@dataclass(frozen=True)
class LoadedModel:
    """A velocity field ready to sample, its example shape (C, H, W) or (D,), and where it came from.

    Latent models (FFHQ-256) also carry ``decoder``: scaled latents (B, *shape) -> images (B, 3, H, W) in
    [-1, 1] (the autoencoder with the latent scale applied, see lib.autoencoder); pixel models have None.
    """

    model: nn.Module
    shape: tuple[int, ...]
    info: dict[str, Any]
    decoder: nn.Module | None = None


def to_images(loaded: LoadedModel, x: Tensor) -> Tensor:
    """Samples (B, *loaded.shape) -> images in [-1, 1]: decoded for latent models, unchanged otherwise."""
    if loaded.decoder is None:
        return x
    with torch.no_grad():
        return loaded.decoder.to(x.device).eval()(x)


def _ema_weights(state: dict[str, Any]) -> dict[str, Tensor]:
    """The EMA model's weights from a kit training checkpoint (AveragedModel keys without 'module.')."""
    return {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}


def mlp_from_state(weights: dict[str, Tensor]) -> MLP:
    """Rebuild lib.models.MLP from its own state dict (dim, hidden, depth, time_dim read off the shapes)."""
    linear = sorted((k for k in weights if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    hidden, first_in = weights[linear[0]].shape
    dim = weights[linear[-1]].shape[0]
    model = MLP(dim, hidden=hidden, depth=len(linear) - 1, time_dim=first_in - dim)
    model.load_state_dict(weights)
    return model.eval()


def load_model(path: str | os.PathLike[str], use_ema: bool = True) -> LoadedModel:
    """A kit training checkpoint (lib.train; the EMA weights by default) or a released LOOM-CFM checkpoint
    (a file, or ``released:<name>`` to fetch one of lib.released.RELEASED_REPOS).

    The architecture is read off the weights: a lib.unet preset (the released layout) or the toy MLP.
    A file of another architecture raises lib.unet.CheckpointError listing what does not fit.
    Latent models get ``decoder`` (lib.autoencoder.LatentDecoder): a released checkpoint from its ``ae.*`` weights
    and ``ae.scale``, a kit checkpoint trained on HDF5 latents from the autoencoder source and scale it recorded.
    """
    from lib.autoencoder import decoder_from_checkpoint
    from lib.released import PREFIX, fetch_released
    from lib.train import CHECKPOINT_FORMAT, load_checkpoint

    if str(path).startswith(PREFIX):  # released:<name>, fetched through huggingface_hub
        path = fetch_released(str(path)[len(PREFIX):])
    path = Path(path)
    raw = torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        state = load_checkpoint(path)
        weights = _ema_weights(state) if use_ema else state["model"]
        info: dict[str, Any] = {"checkpoint": str(path), "kind": "kit", "weights": "ema" if use_ema else "raw",
                                "global_step": state["global_step"]}
        if any(k.startswith("net.") for k in weights):
            model = mlp_from_state(weights)
            return LoadedModel(model, (model.dim,), {**info, "preset": "mlp"})
        unet, unet_info = load_released_unet(weights)
        decoder, latent = kit_decoder(state.get("latent"))
    else:
        unet, unet_info = load_released_unet(path)  # released format; clear errors for anything else
        info = {"checkpoint": str(path), "kind": "released", "weights": "model",
                "global_step": unet_info["global_step"]}
        model_state = raw.get("model", raw) if isinstance(raw, dict) else {}
        decoder = decoder_from_checkpoint(model_state)
        latent = None if decoder is None else {"autoencoder": f"{path}:ae.*", "scale": float(decoder.scale)}
    config = unet_info["config"]
    if decoder is not None and decoder.latent_channels != config.in_channels:
        raise CheckpointError(f"{path}: the autoencoder makes {decoder.latent_channels}-channel latents but the UNet "
                              f"({unet_info['preset']}) takes {config.in_channels} channels")
    return LoadedModel(unet, (config.in_channels, config.image_size, config.image_size),
                       {**info, "preset": unet_info["preset"], "num_params": unet_info["num_params"],
                        **({"autoencoder": latent["autoencoder"], "latent_scale": latent["scale"]} if latent else {})},
                       decoder)


def kit_decoder(latent: dict[str, Any] | None) -> tuple[nn.Module | None, dict[str, Any] | None]:
    """A kit checkpoint's ``latent`` record {autoencoder, scale} (lib.train.latent_source) -> (LatentDecoder, record),
    or (None, None) for a model trained on pixels."""
    if not latent:
        return None, None
    from lib.autoencoder import LatentDecoder, load_autoencoder

    return LatentDecoder(load_autoencoder(latent["autoencoder"]), latent["scale"]), latent


def image_seeds(seed: int, start: int, count: int) -> Tensor:
    """Noise seeds of images start .. start + count - 1 of run ``seed`` -> (count,) int64 in [0, 2**32)."""
    return (seed * RUN_STRIDE + torch.arange(start, start + count, dtype=torch.int64)) % SEED_HIGH


def noise_for_images(loaded: LoadedModel, seed: int, count: int, device: torch.device | str = "cpu",
                     start: int = 0) -> Tensor:
    """The starting noise of images start .. start + count - 1 of run ``seed`` -> (count, *loaded.shape)."""
    return noise_from_seeds(image_seeds(seed, start, count), loaded.shape, device)


def generate(loaded: LoadedModel, num: int, solver: str, seed: int = 0, batch_size: int = 256,
             device: torch.device | str = "cpu", start: int = 0) -> Iterator[tuple[Tensor, int]]:
    """Yield (samples (b, *shape) on the CPU, true NFE of that batch) for images start .. start + num - 1."""
    model = loaded.model.to(device).eval()
    for first in range(start, start + num, batch_size):
        count = min(batch_size, start + num - first)
        z = noise_for_images(loaded, seed, count, device, first)
        with torch.no_grad():
            result = sample(model, z, solver)
        yield result.x.cpu(), result.nfe


def save_grid(images: Tensor, path: str | os.PathLike[str]) -> Path:
    """Images (N, C, H, W) in [-1, 1] -> a square-ish PNG grid at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.clamp(-1, 1), path, nrow=max(1, math.isqrt(len(images))), normalize=True, value_range=(-1, 1))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lib.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a lib.train checkpoint, a released .pt, or released:<name>")
    p.add_argument("--solver", default="midpoint-4", help="euler-K, midpoint-K, rk4-K or dopri5")
    p.add_argument("--num", type=int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="run seed (fixes every image's noise)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--raw-weights", action="store_true", help="kit checkpoints: the raw weights, not the EMA")
    p.add_argument("--out", type=Path, required=True, help="PNG grid (images) or .pt tensor file")
    args = p.parse_args(argv)
    loaded = load_model(args.checkpoint, use_ema=not args.raw_weights)
    batches = list(generate(loaded, args.num, args.solver, args.seed, args.batch_size, args.device))
    images = torch.cat([to_images(loaded, x) for x, _ in batches])
    if args.out.suffix == ".pt":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(images, args.out)
    else:
        save_grid(images if images.ndim == 4 else images[:, None, None, :], args.out)
    print(json.dumps({**loaded.info, "solver": args.solver, "nfe_per_batch": [n for _, n in batches],
                      "num": args.num, "seed": args.seed, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
