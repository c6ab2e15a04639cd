"""Evaluate a trained velocity field: sample quality per solver and NFE, and path straightness.

For point clouds (toys, digits as vectors) quality is the exact W2 to held-out target samples; for
images it is FID through clean-fid (``python -m lib.evaluate``), with the protocol beside every number.
Every row records the solver and the TRUE number of network calls.

    python -m lib.evaluate --checkpoint runs/c10/checkpoint.pt --solvers midpoint-2 midpoint-4 dopri5 --out fid.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lib.checkpoints import LoadedModel, load_model
from lib.fid import RandomConvFeatures, fid_from_generator
from lib.flow import VelocityField
from lib.metrics import curvature_per_step, straightness, w2
from lib.sample import noise_for_images, to_images
from lib.solvers import integrate, parse_solver


def w2_table(model: VelocityField, z: Tensor, reference: Tensor, solvers: Sequence[str]) -> list[dict[str, object]]:
    """One row per solver: samples from noise z (N, *shape) compared with reference (N, *shape) by exact W2.

    Fixed-grid rows also carry the straightness of their own sampling paths.
    """
    rows: list[dict[str, object]] = []
    for spec in solvers:
        result = integrate(model, z, spec, return_trajectory=parse_solver(spec).steps is not None)
        row: dict[str, object] = {
            "solver": result.spec.label,
            "method": result.spec.method,
            "nfe": result.nfe,
            "w2": w2(result.x, reference),
        }
        if result.trajectory is not None and result.trajectory.shape[0] > 2:
            row["straightness"] = straightness(result.trajectory, result.times)
        rows.append(row)
    return rows


def path_curvature(model: VelocityField, z: Tensor, steps: int = 20) -> Tensor:
    """Paper Fig. 6: 1 - cos of consecutive velocities along ``steps``-step Euler paths -> (steps - 1,)."""
    result = integrate(model, z, f"euler-{steps}", return_trajectory=True)
    return curvature_per_step(result.trajectory, result.times)


def noise_like(reference: Tensor, seed: int) -> Tensor:
    """Evaluation noise N(0, I) shaped like ``reference`` (N, *shape), fixed by ``seed``."""
    return torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# FID of a checkpoint (python -m lib.evaluate)
# ---------------------------------------------------------------------------------------------


class SeededSampler:
    """``generate(batch_size)`` for lib.fid: consecutive images of a run seed, counting network calls.

    Image i always starts from the same noise (lib.sample.image_seeds), so FID runs are reproducible
    and two solvers see the same noise images.
    """

    def __init__(self, loaded: LoadedModel, solver: str, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.loaded, self.solver, self.seed, self.device = loaded, solver, seed, torch.device(device)
        self.made, self.nfe_total, self.batches = 0, 0, 0
        self.loaded.model.to(self.device).eval()

    def __call__(self, batch_size: int) -> Tensor:
        """Next ``batch_size`` images -> (B, C, H, W) in [-1, 1] on the sampler's device."""
        z = noise_for_images(self.loaded, self.seed, batch_size, self.device, start=self.made)
        with torch.no_grad():
            result = integrate(self.loaded.model, z, self.solver)
        self.made += batch_size
        self.nfe_total += result.nfe
        self.batches += 1
        return to_images(self.loaded, result.x).clamp(-1, 1)  # as it would be saved: decoded, clipped to range

    @property
    def mean_nfe(self) -> float:
        """Network calls per image batch, averaged (fixed grids: exactly the grid's NFE)."""
        return self.nfe_total / max(self.batches, 1)


def fid_rows(
    loaded: LoadedModel,
    solvers: Sequence[str],
    num_samples: int,
    reference: str,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 250,
    **fid_kwargs: object,
) -> list[dict[str, object]]:
    """One row per solver: FID of ``num_samples`` images, the true NFE and the FID protocol beside it."""
    rows: list[dict[str, object]] = []
    for spec in solvers:
        sampler = SeededSampler(loaded, spec, seed, device)
        result = fid_from_generator(sampler, num_samples, reference, batch_size=batch_size, device=device, **fid_kwargs)
        rows.append(
            {
                "solver": parse_solver(spec).label,
                "nfe": sampler.mean_nfe,
                "seed": seed,
                **loaded.info,
                **result.as_dict(),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """python -m lib.evaluate: FID (clean-fid) of a checkpoint for several solvers, written as JSON rows."""
    p = argparse.ArgumentParser(prog="python -m lib.evaluate", description=main.__doc__)
    p.add_argument("--checkpoint", required=True, help="a lib.train checkpoint or a released LOOM-CFM .pt")
    p.add_argument(
        "--solvers",
        nargs="+",
        default=["midpoint-2", "midpoint-4", "midpoint-6", "dopri5"],
        help="solver specs; midpoint-K costs 2K network calls",
    )
    p.add_argument("--num-samples", type=int, default=50_000, help="generated images (standard protocol: 50k)")
    p.add_argument("--reference", default="cifar10", help="clean-fid dataset name, custom stats name or image folder")
    p.add_argument("--dataset-res", type=int, default=32, help="resolution of a clean-fid dataset reference")
    p.add_argument("--dataset-split", default="train")
    p.add_argument("--mode", default="clean", help="clean-fid mode: clean, legacy_tensorflow or legacy_pytorch")
    p.add_argument(
        "--features",
        default="inception",
        choices=["inception", "random"],
        help="random: lib.fid.RandomConvFeatures (offline checks only; not comparable with any FID)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a checkpoint that pickles Python objects (runs code on load: only files you trust)",
    )
    p.add_argument("--out", type=Path, required=True, help="JSON file for the rows")
    args = p.parse_args(argv)
    extractor = RandomConvFeatures() if args.features == "random" else None
    rows = fid_rows(
        load_model(args.checkpoint, trusted=args.trust_checkpoint),
        args.solvers,
        args.num_samples,
        args.reference,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        dataset_res=args.dataset_res,
        dataset_split=args.dataset_split,
        mode=args.mode,
        feature_extractor=extractor,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    for row in rows:
        print(f"{row['solver']:12s} NFE {row['nfe']:7.1f}  FID {row['fid']:.3f}  ({row['feature_extractor']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
