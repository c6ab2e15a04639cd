"""Evaluate a trained velocity field: sample quality per solver and NFE, and path straightness.

For point clouds (toys, digits as vectors) quality is the exact W2 to held-out target samples (``w2_table``:
notebooks 03 and 13); for images it is FID under a named protocol of lib.fid (``python -m lib.evaluate``), with
everything that defines the protocol beside every number. Every row records the solver, the TRUE number of network
calls and the solver's accepted and attempted steps (an adaptive solver's steps are not its network calls).

    python -m lib.evaluate --checkpoint runs/c10/checkpoint.pt --solvers midpoint-2 midpoint-4 dopri5 --out fid.json
    python -m lib.evaluate --checkpoint loom.pt --protocol paper-torcheval --reference data --out fid.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from lib import cli
from lib.checkpoints import LoadedModel, checkpoint_file, load_model
from lib.fid import DEFAULT_PROTOCOL, PROTOCOLS, feature_network, fid_from_generator
from lib.files import check_output, sha256_file, write_json
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
            **result.cost(),
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
        self.made, self.batches = 0, 0
        self.cost_total: dict[str, int] = {}  # SampleResult.cost() summed over batches
        self.loaded.model.to(self.device).eval()

    def __call__(self, batch_size: int) -> Tensor:
        """Next ``batch_size`` images -> (B, C, H, W) in [-1, 1] on the sampler's device."""
        z = noise_for_images(self.loaded, self.seed, batch_size, self.device, start=self.made)
        with torch.no_grad():
            result = integrate(self.loaded.model, z, self.solver)
        self.made += batch_size
        self.batches += 1
        for name, value in result.cost().items():
            self.cost_total[name] = self.cost_total.get(name, 0) + value
        return to_images(self.loaded, result.x).clamp(-1, 1)  # as it would be saved: decoded, clipped to range

    @property
    def mean_cost(self) -> dict[str, float]:
        """Network calls and solver steps per image batch, averaged (fixed grids: exactly the grid's)."""
        return {name: total / max(self.batches, 1) for name, total in self.cost_total.items()}


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
    """One row per solver: FID of ``num_samples`` images under ``fid_kwargs["protocol"]`` (lib.fid; default
    clean-fid-clean), the true NFE and solver steps per batch, and the FID protocol beside it."""
    rows: list[dict[str, object]] = []
    for spec in solvers:
        sampler = SeededSampler(loaded, spec, seed, device)
        result = fid_from_generator(sampler, num_samples, reference, batch_size=batch_size, device=device, **fid_kwargs)
        rows.append(
            {"solver": parse_solver(spec).label, **sampler.mean_cost, "seed": seed, **loaded.info, **result.as_dict()}
        )
    return rows


# Arguments of lib.evaluate that do not change a row's numbers (everything else, with the checkpoint's checksum and the
# solver, is the row's key: a rerun keeps the rows whose key it would compute again).
NOT_IN_KEY = frozenset({"out", "debug", "solvers", "checkpoint", "device"})


def evaluation_key(args: argparse.Namespace, checkpoint: Path, device: torch.device) -> dict[str, object]:
    """What defines this run's FID rows, the solver aside: the checkpoint's bytes and every protocol argument."""
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IN_KEY}
    if isinstance(settings.get("reference"), str) and Path(settings["reference"]).is_dir():
        settings["reference"] = str(Path(settings["reference"]).resolve())  # a folder, wherever the rerun starts
    return {"checkpoint_sha256": sha256_file(checkpoint), "device": device.type, **settings}


def read_rows(path: Path) -> list[dict[str, object]]:
    """The rows an earlier run wrote to ``--out`` ([] if none); a file that is not a JSON list of rows is refused."""
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"--out {path} exists but is not JSON ({err}); pass another --out or delete it") from err
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"--out {path} exists but is not a list of FID rows; pass another --out or delete it")
    return rows


def main(argv: list[str] | None = None) -> int:
    """python -m lib.evaluate: FID of a checkpoint for several solvers under a named protocol, as JSON rows.

    Every solver and the protocol are checked before anything is sampled; each row is written (atomically) as soon
    as it is computed, and a rerun keeps the rows of ``--out`` whose key (checkpoint checksum, solver, every protocol
    argument) matches, computing only the missing ones. Errors are one line, status 2 (lib.cli).
    """
    return cli.run(evaluate_command, argv)


def evaluate_command(argv: list[str]) -> int:
    p = cli.parser("python -m lib.evaluate", main.__doc__)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a lib.train checkpoint, a released LOOM-CFM .pt, or released:<name> (cifar10, cifar10_reflow, "
        "imagenet32, imagenet64, ffhq256: fetched through huggingface_hub)",
    )
    p.add_argument(
        "--solvers",
        nargs="+",
        default=["midpoint-2", "midpoint-4", "midpoint-6", "dopri5"],
        help="solver specs; midpoint-K costs 2K network calls",
    )
    p.add_argument(
        "--num-samples", type=cli.positive_int, default=50_000, help="generated images (standard protocol: 50k)"
    )
    p.add_argument(
        "--protocol",
        default=DEFAULT_PROTOCOL,
        choices=PROTOCOLS,
        help="paper-torcheval: the paper's (torcheval, test/validation images drawn with replacement); "
        "clean-fid-legacy-tf: torchcfm's and EDM's; clean-fid-clean: the kit's default",
    )
    p.add_argument(
        "--reference",
        default="cifar10",
        help="clean-fid-*: clean-fid dataset name, custom stats name or image folder; paper-torcheval: "
        "CIFAR-10 root (its test split), HDF5 validation shards or an image folder",
    )
    p.add_argument(
        "--num-reference",
        type=cli.positive_int,
        default=None,
        help="paper-torcheval: reference draws (default: the split's size, at most 50000)",
    )
    p.add_argument(
        "--dataset-res", type=cli.positive_int, default=32, help="resolution of the images (and of a clean-fid dataset)"
    )
    p.add_argument("--dataset-split", default="train", help="split of a clean-fid dataset name")
    p.add_argument(
        "--features",
        default="inception",
        choices=["inception", "random"],
        help="random: lib.fid.RandomConvFeatures (offline checks only; not comparable with any FID)",
    )
    p.add_argument(
        "--autoencoder",
        default=None,
        help="kit checkpoints trained on latents: decode with this autoencoder (hub id, save_pretrained folder or "
        "weights file) instead of the one the checkpoint records",
    )
    p.add_argument("--seed", type=cli.seed, default=0)
    p.add_argument("--batch-size", type=cli.positive_int, default=250)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the rows (a rerun keeps its finished rows)")
    args = p.parse_args(argv)  # an unknown --protocol stops here, before the model is loaded or sampled
    # Everything that can be refused is refused before the first image is sampled.
    solvers = [parse_solver(spec).label for spec in args.solvers]
    if args.num_samples < 2:
        raise ValueError(f"--num-samples {args.num_samples}: FID needs at least 2 samples for a covariance")
    if any(sep in args.reference for sep in "/\\") and not Path(args.reference).exists():
        raise FileNotFoundError(f"--reference {args.reference} is not a folder or file of reference images")
    device = cli.check_device(args.device)
    rows = read_rows(check_output(args.out))
    path = checkpoint_file(args.checkpoint)
    loaded = load_model(path, autoencoder=args.autoencoder)
    extractor = feature_network(args.features, args.protocol)
    evaluation = evaluation_key(args, path, device)
    for solver in solvers:
        key = {**evaluation, "solver": solver}
        if any(row.get("key") == key for row in rows):
            print(f"{solver:12s} kept from {args.out}")
            continue
        (row,) = fid_rows(
            loaded,
            [solver],
            args.num_samples,
            args.reference,
            seed=args.seed,
            device=device,
            batch_size=args.batch_size,
            dataset_res=args.dataset_res,
            dataset_split=args.dataset_split,
            protocol=args.protocol,
            num_reference=args.num_reference,
            feature_extractor=extractor,
        )
        rows.append({**row, "key": key})
        write_json(args.out, rows)  # each row as soon as it exists: an interruption loses at most the current one
        print(
            f"{row['solver']:12s} NFE {row['nfe']:7.1f}  steps {row['solver_steps_accepted']:.1f} accepted / "
            f"{row['solver_steps_attempted']:.1f} attempted  FID {row['fid']:.3f}  ({row['fid_protocol']}, "
            f"{row['feature_extractor']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
