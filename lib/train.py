"""One training loop for conditional flow matching with any coupling, in-process or under torchrun.

Per step (paper Algorithm 1 around the CFM update): draw the next global batch of example indices
from a shuffled epoch, gather the batch's data from every rank, let the coupling pair noise with it
(LOOM writes its seeds back here, identically on every rank), keep this rank's slice, take an Adam
step on the CFM loss (DDP averages the gradients), update the EMA. Adam with linear warm-up then
constant lr and gradient-norm clipping, as in the released configs.

Checkpoints hold everything the next step depends on (weights, EMA, optimizer, scheduler, the
coupling's seed table and generator, RNG states, the rest of the current epoch), are written
atomically, and resume exactly: N steps + resume + N steps == 2N straight steps.

    python -m lib.train --dataset digits --model mlp --coupling loom --steps 2000 --out runs/digits
    torchrun --nproc_per_node=4 -m lib.train --dataset cifar10 --root data --model cifar10 --out runs/c10
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from lib import distributed
from lib.couplings import Coupling, LoomCoupling, converge_pairing, epoch_batches, make_coupling
from lib.datasets import HDF5Images, IndexedImages, make_dataset
from lib.flow import cfm_loss, sample_time

Data = Union[Tensor, IndexedImages]  # (N, *shape) in memory, or a dataset of the kit
CHECKPOINT_FORMAT = "loom-kit-train-v1"


@dataclass(frozen=True)
class TrainConfig:
    """Flat training settings (the released configs' names where they exist)."""

    steps: int = 2000  # optimiser steps
    batch_size: int = 128  # per-rank batch; the OT batch is batch_size x world size
    lr: float = 1e-3  # Adam learning rate after warm-up
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    grad_clip: float = 1.0  # max gradient norm
    ema_decay: float = 0.999  # EMA of the weights; the EMA model is what gets evaluated
    sigma: float = 0.0  # Gaussian width of the probability path (paper: 1e-7, negligible)
    seed: int = 0  # data order, time sampling and initial weights
    log_every: int = 10  # steps between history records
    redraw_every_epochs: int = 0  # >0: LOOM redraws all seeds this often (appendix's rejected variant)
    converge_first: bool = False  # "train after convergence": re-pair without training until no swaps
    progress: bool = True  # tqdm progress bar
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end), when a path is given
    bf16: bool = False  # bf16 autocast for the forward pass on CUDA (ignored on the CPU)


# Settings a resumed run may change: they do not alter the trajectory of the weights.
RESUMABLE_CHANGES = frozenset({"steps", "progress", "log_every", "checkpoint_every"})


@dataclass
class TrainResult:
    """The trained model, its EMA copy (what to evaluate) and one record per ``log_every`` steps."""

    model: nn.Module
    ema: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Loop:
    """Where the loop is: last finished step, epoch, the epoch's remaining batches, the order/time RNG."""

    step: int
    epoch: int
    batches: list[Tensor]
    generator: torch.Generator


class TrainCheckpointError(ValueError):
    """A training checkpoint that cannot be resumed: the message names the file and the fix."""


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of the weights (torch's AveragedModel, buffers averaged too)."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` then constant lr."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    )


def fetch_batch(data: Data, index: Tensor, device: torch.device) -> Tensor:
    """Examples ``index`` (b,) of ``data`` -> (b, *shape) on ``device`` (flipped copies included)."""
    x = data[index] if isinstance(data, Tensor) else data.__getitems__(index)[1]
    return x.to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, synced, then renamed.

    A crash leaves either the previous checkpoint or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`save_checkpoint`, with errors that name the fix."""
    path = Path(path)
    if not path.is_file():
        raise TrainCheckpointError(f"no checkpoint at {path}; check the path (or drop --resume to start fresh)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: trusted
    except Exception as err:  # noqa: BLE001 - torch raises many types for a torn or foreign file
        raise TrainCheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); "
                                   "it may be truncated: delete it and resume from an earlier one") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainCheckpointError(
            f"{path} is not a training checkpoint of this kit (format {state.get('format') if isinstance(state, dict) else None!r}); "
            "a released model checkpoint loads with lib.unet.load_released_unet for evaluation, not for resuming")
    return state


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume with settings that would change the run (anything but RESUMABLE_CHANGES)."""
    now = asdict(config)
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise TrainCheckpointError(f"{path} was written with other settings ({detail}); resume with the "
                                   "checkpoint's settings or start a new run in another folder")


def checkpoint_state(model: nn.Module, ema: AveragedModel, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, coupling: Coupling, loop: Loop,
                     history: list[dict[str, float]], config: TrainConfig) -> dict[str, Any]:
    """Everything the next step depends on. ``model``/``optimizer``/``lr_scheduler``/``global_step`` keep
    the released checkpoints' names, so lib.unet's loader reads the model of these files too."""
    return {
        "format": CHECKPOINT_FORMAT, "config": asdict(config), "world_size": distributed.world_size(),
        "global_step": loop.step, "epoch": loop.epoch, "batches": [b.clone() for b in loop.batches],
        "generator": loop.generator.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(), "coupling": coupling.state_dict(), "history": list(history),
    }


def restore(state: dict[str, Any], model: nn.Module, ema: AveragedModel, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, coupling: Coupling, loop: Loop,
            history: list[dict[str, float]]) -> None:
    """Load a :func:`checkpoint_state` dict back into live objects (in place)."""
    if state["world_size"] != distributed.world_size():
        raise TrainCheckpointError(f"checkpoint was written by {state['world_size']} rank(s), this run has "
                                   f"{distributed.world_size()}; resume with the same number of processes")
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["lr_scheduler"])
    coupling.load_state_dict(state["coupling"])
    loop.step, loop.epoch, loop.batches = state["global_step"], state["epoch"], list(state["batches"])
    loop.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    history[:] = state["history"]


def latent_source(data: Data) -> dict[str, Any] | None:
    """{"autoencoder", "scale"} of HDF5 latents made by an autoencoder (None for anything else).

    Saved in checkpoints (``latent``) and config.json so lib.sample rebuilds the decoder: the model is trained on
    latents / scale, so its samples decode as decoder(sample * scale) (lib.autoencoder.LatentDecoder).
    """
    if isinstance(data, HDF5Images) and data.key == "latents" and data.autoencoder:
        return {"autoencoder": data.autoencoder, "scale": data.scale}
    return None


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def next_batch(loop: Loop, num_examples: int, global_batch: int, coupling: Coupling, config: TrainConfig) -> Tensor:
    """The next global batch of example indices (global_batch,), starting a new epoch when one ends."""
    if not loop.batches:
        loop.epoch += 1
        if config.redraw_every_epochs and isinstance(coupling, LoomCoupling) and loop.epoch > 1 \
                and (loop.epoch - 1) % config.redraw_every_epochs == 0:
            coupling.redraw()
        loop.batches = epoch_batches(num_examples, global_batch, loop.generator)
    return loop.batches.pop(0)


def cfm_step(net: nn.Module, data: Data, coupling: Coupling, index: Tensor, loop: Loop, config: TrainConfig,
             device: torch.device) -> tuple[Tensor, Any]:
    """Loss of this rank's slice of the global batch ``index`` (B,) after the coupling re-paired it.

    Every rank gathers the whole batch, so the coupling solves one B x B assignment and its state
    (LOOM's seed table) evolves identically everywhere; time samples are drawn for the whole batch too,
    so a run on W ranks sees the same pairs and times as one process with the global batch.
    """
    mine = distributed.rank_slice(len(index))
    x = distributed.all_gather_cat(fetch_batch(data, index[mine], device))
    pair = coupling(x, index)
    t = sample_time(len(index), device, loop.generator)[mine]
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda"):
        loss = cfm_loss(net, pair.z[mine], pair.x[mine], t, config.sigma)
    return loss, pair.stats


def train_flow(model: nn.Module, data: Data, coupling: Coupling, config: TrainConfig,
               checkpoint: str | os.PathLike[str] | None = None) -> TrainResult:
    """Train ``model`` on ``data`` (example i = data[i]), pairing noise through ``coupling``.

    checkpoint: a file path; if it exists the run resumes from it exactly, and it is (re)written every
    ``config.checkpoint_every`` steps and at the end. Under torchrun every rank calls this with the
    same arguments; ``model`` is wrapped in DDP here.
    """
    device = next(model.parameters()).device
    num_examples, global_batch = len(data), config.batch_size * distributed.world_size()
    if global_batch > num_examples:
        raise ValueError(f"global batch {global_batch} (batch_size x ranks) exceeds the {num_examples} examples")
    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = warmup_schedule(optimizer, config.warmup_steps)
    ema = make_ema(model, config.ema_decay)
    loop = Loop(step=0, epoch=0, batches=[], generator=torch.Generator().manual_seed(config.seed))
    history: list[dict[str, float]] = []
    latent = latent_source(data)
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = load_checkpoint(path)
        check_resumable(state["config"], config, path)
        if state.get("latent") != latent:
            raise TrainCheckpointError(f"{path} was trained on latents {state.get('latent')}, this data is {latent}; "
                                       "resume on the same latents or start a new run in another folder")
        restore(state, model, ema, optimizer, scheduler, coupling, loop, history)
    elif config.converge_first:
        if not isinstance(coupling, LoomCoupling):
            raise ValueError("converge_first needs the loom coupling")
        # Every rank re-pairs the same global batches with the same seeds: the tables stay identical.
        converge_pairing(coupling, data, global_batch, seed=config.seed,
                         fetch=lambda index: fetch_batch(data, index, device))
    net = DistributedDataParallel(model) if distributed.world_size() > 1 else model
    bar = tqdm(range(loop.step + 1, config.steps + 1), disable=not config.progress or not distributed.is_main(),
               desc=coupling.name, initial=loop.step, total=config.steps)
    for step in bar:
        index = next_batch(loop, num_examples, global_batch, coupling, config)
        loss, stats = cfm_step(net, data, coupling, index, loop, config, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        loop.step = step
        if step % config.log_every == 0 or step == config.steps:
            history.append({"step": step, "epoch": loop.epoch, "loss": loss.item(), "swaps": stats.swaps,
                            "cost_before": stats.cost_before, "cost_after": stats.cost_after})
        if path is not None and (step == config.steps or (config.checkpoint_every and step % config.checkpoint_every == 0)):
            if distributed.is_main():
                state = checkpoint_state(model, ema, optimizer, scheduler, coupling, loop, history, config)
                save_checkpoint(path, {**state, "latent": latent})
            distributed.barrier()
    return TrainResult(model=model, ema=copy.deepcopy(ema.module).eval(), history=history, config=asdict(config))


# ---------------------------------------------------------------------------------------------
# Command line: python -m lib.train / torchrun -m lib.train
# ---------------------------------------------------------------------------------------------


def build_model(name: str, example_shape: tuple[int, ...], hidden: int = 256) -> nn.Module:
    """``mlp`` (flat data of any shape; ``hidden`` wide) or a lib.unet preset name (cifar10, digits, tiny, ...)."""
    if name == "mlp":
        from lib.models import MLP

        return MLP(math.prod(example_shape), hidden=hidden)
    from lib.unet import PRESETS, build_unet

    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; use 'mlp' or a UNet preset: {sorted(PRESETS)}")
    return build_unet(name)


# The released training configs (paper_setup.md; per-GPU batch, 4 GPUs in the paper). Caches follow the paper
# (CIFAR-10: 4, the config file says 6; ImageNet-32: 1, the config says 2). Flags given explicitly win.
RELEASED_CONFIGS: dict[str, dict[str, Any]] = {
    "cifar10": {"dataset": "cifar10", "model": "cifar10", "flip": True, "batch_size": 32, "lr": 2e-4,
                "warmup_steps": 5000, "epochs": 1000, "caches": 4, "ema_decay": 0.9999, "sigma": 1e-7},
    "imagenet32": {"dataset": "hdf5", "model": "imagenet32", "flip": True, "batch_size": 128, "lr": 1e-4,
                   "warmup_steps": 20000, "epochs": 200, "caches": 1, "ema_decay": 0.9999, "sigma": 1e-7},
    "imagenet64": {"dataset": "hdf5", "model": "imagenet64", "flip": True, "batch_size": 24, "lr": 1e-4,
                   "warmup_steps": 20000, "epochs": 575, "caches": 1, "ema_decay": 0.9999, "sigma": 1e-7},
    # FFHQ latents: the flips are in the data already. data_prep/ffhq_latents.py encodes every flipped image and
    # stores it as an extra example, because flipping a latent is not encoding the flipped image; flipping the
    # latents again would add approximate copies (HDF5Images refuses flip=True on such files).
    "ffhq256_latent": {"dataset": "hdf5", "model": "ffhq256_latent", "flip": False, "batch_size": 32, "lr": 2e-5,
                       "warmup_steps": 3500, "epochs": 500, "caches": 4, "ema_decay": 0.9999, "sigma": 1e-7},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--config NAME`` first fills in a released config, explicit flags override it."""
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m lib.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(RELEASED_CONFIGS), help="start from a released training config")
    p.add_argument("--epochs", type=int, help="train this many epochs (sets --steps from the dataset size)")
    p.add_argument("--dataset", default="digits", help="digits, cifar10, imagefolder or hdf5")
    p.add_argument("--root", help="dataset folder or file (cifar10: the folder holding cifar-10-batches-py)")
    p.add_argument("--resolution", type=int, help="imagefolder: output size; hdf5: expected size (checked)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                   help="horizontal flips as extra examples i + N (the paper's images; not for digits)")
    p.add_argument("--model", default="mlp", help="mlp or a lib.unet preset")
    p.add_argument("--coupling", default="loom", help="independent, minibatch_ot or loom")
    p.add_argument("--caches", type=int, default=1, help="LOOM noise caches per example")
    p.add_argument("--cost", default="l2", help="pairing cost: l2 (released code) or sqeuclidean")
    p.add_argument("--no-swaps", action="store_true", help="loom: keep each example's noise fixed (ablation)")
    p.add_argument("--reflow", action="store_true",
                   help="--root holds reflow pairs (data_prep/reflow_pairs.py): each sample keeps its own noise")
    p.add_argument("--init", help="start from these weights (a kit or released checkpoint; EMA weights), e.g. reflow")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.pt, config.json, history.json")
    p.add_argument("--dump-seeds", action="store_true", help="each rank saves its final seed table (checks)")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    for f in fields(TrainConfig):
        kind = type(f.default)
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=kind, default=getattr(defaults, f.name))
    chosen, _ = p.parse_known_args(argv)
    if chosen.config:
        p.set_defaults(**RELEASED_CONFIGS[chosen.config])
    return p.parse_args(argv)


def steps_for_epochs(epochs: int, num_examples: int, global_batch: int) -> int:
    """Optimiser steps of ``epochs`` passes with the last partial batch dropped (as lib.couplings.epoch_batches)."""
    return epochs * (num_examples // global_batch)


def initial_model(args: argparse.Namespace, example_shape: tuple[int, ...]) -> nn.Module:
    """--init's weights (architecture read off them) or a fresh --model."""
    if not args.init:
        return build_model(args.model, example_shape)
    from lib.sample import load_model

    loaded = load_model(args.init)
    if loaded.shape != example_shape:
        raise ValueError(f"--init {args.init} makes {loaded.shape} examples but the data has {example_shape}")
    return loaded.model.train()


def reflow_coupling(root: str, device: torch.device) -> Coupling:
    """The fixed pairs of a reflow folder, checked to regenerate their noise on this device type."""
    from lib.couplings import fixed_pairs_coupling
    from lib.datasets import read_pair_seeds

    seeds, made_on = read_pair_seeds(root)
    if made_on != device.type:
        raise ValueError(f"the pairs in {root} were generated on {made_on}; noise regenerates identically only on "
                         f"the same device type, so train on {made_on} (this run uses {device.type})")
    return fixed_pairs_coupling(seeds)


def dataset_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor arguments of the chosen dataset from the command line."""
    if args.dataset == "digits":
        return {"split": "train", "flip": args.flip}
    if not args.root:
        raise SystemExit(f"--dataset {args.dataset} needs --root (the data folder or file)")
    if args.dataset == "imagefolder" and not args.resolution:
        raise SystemExit("--dataset imagefolder needs --resolution (images are resized and centre-cropped to it)")
    if args.reflow and (args.dataset != "hdf5" or args.flip):
        raise SystemExit("--reflow reads the pair shards: use --dataset hdf5 without --flip")
    if args.dataset == "hdf5":
        return {"path": args.root, "flip": args.flip, "resolution": args.resolution}
    if args.dataset == "imagefolder":
        return {"root": args.root, "flip": args.flip, "resolution": args.resolution}
    return {"root": args.root, "flip": args.flip}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = distributed.init_from_env()
    if args.device:
        device = torch.device(args.device)
    data = make_dataset(args.dataset, **dataset_kwargs(args))
    if args.epochs:
        args.steps = steps_for_epochs(args.epochs, len(data), args.batch_size * distributed.world_size())
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    torch.manual_seed(config.seed)  # same initial weights on every rank
    model = initial_model(args, tuple(data[0][1].shape)).to(device)
    coupling = reflow_coupling(args.root, device) if args.reflow else \
        make_coupling(args.coupling, len(data), num_caches=args.caches, seed=config.seed, cost=args.cost,
                      no_swaps=args.no_swaps)
    if distributed.is_main():
        args.out.mkdir(parents=True, exist_ok=True)
        run_config = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                      "world_size": distributed.world_size(), "num_examples": len(data), "device": str(device),
                      "latent": latent_source(data)}
        (args.out / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")
        print(json.dumps(run_config), flush=True)
    result = train_flow(model, data, coupling, config, checkpoint=args.out / "checkpoint.pt")
    if distributed.is_main():
        (args.out / "history.json").write_text(json.dumps(result.history) + "\n")
    if args.dump_seeds and isinstance(coupling, LoomCoupling):
        torch.save(coupling.seeds, args.out / f"seeds_rank{distributed.rank()}.pt")
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
