"""One training loop for conditional flow matching with any coupling, in-process or under torchrun.

Per step (:func:`train_step`, paper Algorithm 1 around the CFM update): draw the next global batch of example
indices from a shuffled epoch, gather the batch's data from every rank, let the coupling pair noise with it (LOOM
writes its seeds back here, identically on every rank), keep this rank's slice, take an Adam step on the CFM loss
(DDP averages the gradients), update the EMA. Adam with linear warm-up then constant lr and gradient-norm
clipping, as in the released configs.

Checkpoints hold everything the next step depends on (weights, EMA, optimizer, scheduler, the coupling's seed
table and generator, RNG states, the rest of the current epoch), are written atomically (lib.checkpoints), and
resume exactly: N steps + resume + N steps == 2N straight steps.

Settings: :class:`TrainConfig` (the optimisation, used in-process by notebooks 01-04) inside :class:`TrainSettings`
(everything ``python -m lib.train`` takes: data, model, coupling, run folder). Notebooks 05-08 launch the same
command line from a TrainSettings (``to_argv``), and the command line parses back into one (``from_args``).

    python -m lib.train --dataset digits --model mlp --coupling loom --steps 2000 --out runs/digits
    torchrun --nproc_per_node=4 -m lib.train --config cifar10 --root data --out runs/c10
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from lib import distributed
from lib.checkpoints import (
    KIT_FORMAT,
    TrainCheckpointError,
    build_model,
    load_model,
    read_training_checkpoint,
    save_checkpoint,
)
from lib.couplings import (
    COST_NAMES,
    COUPLINGS,
    Coupling,
    CouplingStats,
    LoomCoupling,
    converge_pairing,
    epoch_batches,
    fixed_pairs_coupling,
    make_coupling,
)
from lib.datasets import DATASETS, HDF5Images, IndexedImages, make_dataset, read_pair_seeds
from lib.flow import cfm_loss, sample_time
from lib.paper import RELEASED_CONFIGS

Data = Tensor | IndexedImages  # (N, *shape) in memory, or a dataset of the kit


def _setting(default: Any, help: str) -> Any:  # noqa: A002 - the argparse word
    """A dataclass field with its command-line help (argparse reads it from the field's metadata)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation settings (the released configs' names where they exist)."""

    steps: int = _setting(2000, "optimiser steps (--epochs sets it from the dataset size)")
    batch_size: int = _setting(128, "per-rank batch; the OT batch is batch-size x ranks")
    lr: float = _setting(1e-3, "Adam learning rate after warm-up")
    warmup_steps: int = _setting(0, "linear lr warm-up from 0 over this many steps")
    grad_clip: float = _setting(1.0, "max gradient norm")
    ema_decay: float = _setting(0.999, "EMA decay of the weights; the EMA model is what gets evaluated")
    sigma: float = _setting(0.0, "Gaussian width of the probability path (paper: 1e-7, negligible)")
    seed: int = _setting(0, "seed of data order, time samples, initial weights and noise seeds")
    log_every: int = _setting(10, "steps between history records (loss, swaps, pairing cost)")
    redraw_every_epochs: int = _setting(0, ">0: LOOM redraws all seeds this often (the appendix's rejected variant)")
    converge_first: bool = _setting(False, "train after convergence: re-pair without training until no swaps")
    progress: bool = _setting(True, "show a tqdm progress bar")
    checkpoint_every: int = _setting(0, "steps between checkpoints (0: only at the end)")
    bf16: bool = _setting(False, "bf16 autocast for the forward pass on CUDA (ignored on the CPU)")


# Settings a resumed run may change: they do not alter the trajectory of the weights.
RESUMABLE_CHANGES = frozenset({"steps", "progress", "log_every", "checkpoint_every"})


@dataclass(frozen=True)
class TrainSettings:
    """Everything ``python -m lib.train`` takes: what to train on, which model and coupling, where to write, and
    the optimisation (:class:`TrainConfig`). ``--config NAME`` fills in a released config first
    (lib.paper.RELEASED_CONFIGS); explicit flags override it."""

    out: str = _setting("", "run folder: checkpoint.pt, config.json, history.json (required)")
    config: str = _setting("", f"start from a released training config: {', '.join(RELEASED_CONFIGS)}")
    epochs: int = _setting(0, ">0: train this many epochs (sets --steps from the dataset size)")
    dataset: str = _setting("digits", f"dataset: {', '.join(DATASETS)}")
    root: str = _setting("", "dataset folder or file (cifar10: the folder holding cifar-10-batches-py)")
    resolution: int = _setting(0, "imagefolder: output size; hdf5: expected size (checked); 0: as stored")
    flip: bool = _setting(False, "horizontal flips as extra examples i + N (the paper's images; not for digits)")
    model: str = _setting(
        "mlp", "mlp or a lib.unet preset (cifar10, imagenet32, imagenet64, ffhq256_latent, digits, tiny, tiny_latent)"
    )
    coupling: str = _setting("loom", f"coupling: {', '.join(COUPLINGS)}")
    caches: int = _setting(1, "LOOM noise caches per example")
    cost: str = _setting("l2", f"pairing cost: {' or '.join(COST_NAMES)} (l2: the released code's)")
    no_swaps: bool = _setting(False, "loom: keep each example's noise fixed (fixed source w/o reassignments)")
    reflow: bool = _setting(False, "--root holds reflow pairs (data_prep/reflow_pairs.py): each sample keeps its noise")
    init: str = _setting("", "start from these weights (a kit or released checkpoint, or released:<name>; EMA)")
    dump_seeds: bool = _setting(False, "each rank saves its final seed table as seeds_rank<r>.pt (checks)")
    device: str = _setting("", "cpu or cuda (default: cuda when available)")
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_argv(self) -> list[str]:
        """The command line that parses back into these settings: every setting that differs from its default."""
        argv: list[str] = []
        for name, value, default in _flat_items(self):
            if value == default:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + name.replace("_", "-"))
            else:
                argv += [flag, str(value)]
        return argv

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainSettings:
        """Settings from a namespace of :func:`parse_args`."""
        values = vars(args)
        train = TrainConfig(**{f.name: values[f.name] for f in fields(TrainConfig)})
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name != "train"}, train=train)


def _flat_items(settings: TrainSettings) -> list[tuple[str, Any, Any]]:
    """(name, value, default) of every command-line setting, TrainConfig's flattened in."""
    items = [(f.name, getattr(settings, f.name), f.default) for f in fields(TrainSettings) if f.name != "train"]
    return items + [(f.name, getattr(settings.train, f.name), f.default) for f in fields(TrainConfig)]


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


@dataclass
class Trainer:
    """Everything one training step reads and changes (built by :func:`build_trainer`)."""

    model: nn.Module  # the weights being trained (saved in checkpoints)
    net: nn.Module  # ``model``, or DDP(model) under torchrun
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    coupling: Coupling
    data: Data
    loop: Loop
    config: TrainConfig
    device: torch.device
    history: list[dict[str, float]] = field(default_factory=list)


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
    x = data[index] if isinstance(data, Tensor) else data.get_batch(index)[1]
    return x.to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# Checkpoints of a run (files: lib.checkpoints)
# ---------------------------------------------------------------------------------------------


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume with settings that would change the run (anything but RESUMABLE_CHANGES)."""
    now = asdict(config)
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise TrainCheckpointError(
            f"{path} was written with other settings ({detail}); resume with the "
            "checkpoint's settings or start a new run in another folder"
        )


def checkpoint_state(trainer: Trainer) -> dict[str, Any]:
    """Everything the next step depends on. ``model``/``optimizer``/``lr_scheduler``/``global_step`` keep the
    released checkpoints' names, so lib.checkpoints reads the model of these files as of released ones."""
    loop = trainer.loop
    return {
        "format": KIT_FORMAT,
        "config": asdict(trainer.config),
        "world_size": distributed.world_size(),
        "global_step": loop.step,
        "epoch": loop.epoch,
        "batches": [b.clone() for b in loop.batches],
        "generator": loop.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "model": trainer.model.state_dict(),
        "ema": trainer.ema.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.scheduler.state_dict(),
        "coupling": trainer.coupling.state_dict(),
        "history": list(trainer.history),
    }


def restore(state: dict[str, Any], trainer: Trainer) -> None:
    """Load a :func:`checkpoint_state` dict back into a trainer (in place)."""
    if state["world_size"] != distributed.world_size():
        raise TrainCheckpointError(
            f"checkpoint was written by {state['world_size']} rank(s), this run has "
            f"{distributed.world_size()}; resume with the same number of processes"
        )
    trainer.model.load_state_dict(state["model"])
    trainer.ema.load_state_dict(state["ema"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["lr_scheduler"])
    trainer.coupling.load_state_dict(state["coupling"])
    loop = trainer.loop
    loop.step, loop.epoch, loop.batches = state["global_step"], state["epoch"], list(state["batches"])
    loop.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    trainer.history[:] = state["history"]


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


def build_trainer(model: nn.Module, data: Data, coupling: Coupling, config: TrainConfig) -> Trainer:
    """Optimizer, warm-up schedule, EMA and loop position for training ``model`` (DDP-wrapped under torchrun)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    return Trainer(
        model=model,
        net=DistributedDataParallel(model) if distributed.world_size() > 1 else model,
        ema=make_ema(model, config.ema_decay),
        optimizer=optimizer,
        scheduler=warmup_schedule(optimizer, config.warmup_steps),
        coupling=coupling,
        data=data,
        loop=Loop(step=0, epoch=0, batches=[], generator=torch.Generator().manual_seed(config.seed)),
        config=config,
        device=next(model.parameters()).device,
    )


def next_batch(trainer: Trainer) -> Tensor:
    """The next global batch of example indices (global_batch,), starting a new epoch when one ends."""
    loop, config, coupling = trainer.loop, trainer.config, trainer.coupling
    if not loop.batches:
        loop.epoch += 1
        if (
            config.redraw_every_epochs
            and isinstance(coupling, LoomCoupling)
            and loop.epoch > 1
            and (loop.epoch - 1) % config.redraw_every_epochs == 0
        ):
            coupling.redraw()
        loop.batches = epoch_batches(len(trainer.data), config.batch_size * distributed.world_size(), loop.generator)
    return loop.batches.pop(0)


def cfm_step(trainer: Trainer, index: Tensor) -> tuple[Tensor, CouplingStats]:
    """Loss of this rank's slice of the global batch ``index`` (B,) after the coupling re-paired it.

    Every rank gathers the whole batch, so the coupling solves one B x B assignment and its state
    (LOOM's seed table) evolves identically everywhere; time samples are drawn for the whole batch too,
    so a run on W ranks sees the same pairs and times as one process with the global batch.
    """
    device, config = trainer.device, trainer.config
    mine = distributed.rank_slice(len(index))
    x = distributed.all_gather_cat(fetch_batch(trainer.data, index[mine], device))
    pair = trainer.coupling(x, index)
    t = sample_time(len(index), device, trainer.loop.generator)[mine]
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda"):
        loss = cfm_loss(trainer.net, pair.z[mine], pair.x[mine], t, config.sigma)
    return loss, pair.stats


def train_step(trainer: Trainer, index: Tensor) -> tuple[Tensor, CouplingStats]:
    """One optimiser step on the global batch ``index`` (B,): pair, CFM loss, backward, clip, Adam, warm-up, EMA."""
    loss, stats = cfm_step(trainer, index)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.grad_clip)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.ema.update_parameters(trainer.model)
    return loss, stats


def train_flow(
    model: nn.Module,
    data: Data,
    coupling: Coupling,
    config: TrainConfig,
    checkpoint: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` (example i = data[i]), pairing noise through ``coupling``.

    checkpoint: a file path; if it exists the run resumes from it exactly, and it is (re)written every
    ``config.checkpoint_every`` steps and at the end. Under torchrun every rank calls this with the
    same arguments; ``model`` is wrapped in DDP here. Dropout and the path's noise draw from torch's global
    RNG, seeded with ``config.seed`` inside a fork: the caller's RNG state is left as it was.
    """
    num_examples, global_batch = len(data), config.batch_size * distributed.world_size()
    if global_batch > num_examples:
        raise ValueError(f"global batch {global_batch} (batch_size x ranks) exceeds the {num_examples} examples")
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        trainer = build_trainer(model, data, coupling, config)
        _resume_or_converge(trainer, Path(checkpoint) if checkpoint is not None else None, global_batch)
        _run(trainer, Path(checkpoint) if checkpoint is not None else None)
    return TrainResult(
        model=model, ema=copy.deepcopy(trainer.ema.module).eval(), history=trainer.history, config=asdict(config)
    )


def _resume_or_converge(trainer: Trainer, path: Path | None, global_batch: int) -> None:
    """Resume from ``path`` if it exists (refusing changed settings), else converge the pairing first if asked."""
    latent = latent_source(trainer.data)
    if path is not None and path.exists():
        state = read_training_checkpoint(path)
        check_resumable(state["config"], trainer.config, path)
        if state.get("latent") != latent:
            raise TrainCheckpointError(
                f"{path} was trained on latents {state.get('latent')}, this data is {latent}; "
                "resume on the same latents or start a new run in another folder"
            )
        restore(state, trainer)
    elif trainer.config.converge_first:
        if not isinstance(trainer.coupling, LoomCoupling):
            raise ValueError("converge_first needs the loom coupling")
        # Every rank re-pairs the same global batches with the same seeds: the tables stay identical.
        converge_pairing(
            trainer.coupling,
            trainer.data,
            global_batch,
            seed=trainer.config.seed,
            fetch=lambda index: fetch_batch(trainer.data, index, trainer.device),
        )


def _run(trainer: Trainer, path: Path | None) -> None:
    """Steps loop.step + 1 .. config.steps, logging every ``log_every`` and checkpointing as configured."""
    config, loop = trainer.config, trainer.loop
    latent = latent_source(trainer.data)
    bar = tqdm(
        range(loop.step + 1, config.steps + 1),
        disable=not config.progress or not distributed.is_main(),
        desc=trainer.coupling.name,
        initial=loop.step,
        total=config.steps,
    )
    for step in bar:
        loss, stats = train_step(trainer, next_batch(trainer))
        loop.step = step
        if step % config.log_every == 0 or step == config.steps:
            trainer.history.append(
                {
                    "step": step,
                    "epoch": loop.epoch,
                    "loss": loss.item(),
                    "swaps": stats.swaps,
                    "cost_before": stats.cost_before,
                    "cost_after": stats.cost_after,
                }
            )
        if path is not None and (
            step == config.steps or (config.checkpoint_every and step % config.checkpoint_every == 0)
        ):
            if distributed.is_main():
                save_checkpoint(path, {**checkpoint_state(trainer), "latent": latent})
            distributed.barrier()


# ---------------------------------------------------------------------------------------------
# Command line: python -m lib.train / torchrun -m lib.train
# ---------------------------------------------------------------------------------------------


def _add_flags(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per dataclass field: --name-with-dashes, booleans as --x / --no-x, help from the field."""
    for f in fields(cls):
        if f.name == "train":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if isinstance(default, bool) and f.name.startswith("no_"):  # already a negation: a plain switch
            p.add_argument(flag, action="store_true", default=default, help=f.metadata["help"])
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f.metadata["help"])
        else:
            p.add_argument(flag, type=type(default), default=default, help=f.metadata["help"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--config NAME`` first fills in a released config, explicit flags override it."""
    p = argparse.ArgumentParser(
        prog="python -m lib.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_flags(p, TrainSettings)
    _add_flags(p, TrainConfig)
    chosen, _ = p.parse_known_args(argv)
    if chosen.config:
        if chosen.config not in RELEASED_CONFIGS:
            p.error(f"unknown --config {chosen.config!r}; use one of {sorted(RELEASED_CONFIGS)}")
        p.set_defaults(**RELEASED_CONFIGS[chosen.config])
    args = p.parse_args(argv)
    if not args.out:
        p.error("--out is required (the run folder)")
    return args


def steps_for_epochs(epochs: int, num_examples: int, global_batch: int) -> int:
    """Optimiser steps of ``epochs`` passes with the last partial batch dropped (as lib.couplings.epoch_batches)."""
    return epochs * (num_examples // global_batch)


def initial_model(settings: TrainSettings, example_shape: tuple[int, ...]) -> nn.Module:
    """--init's weights (architecture read off them) or a fresh --model."""
    if not settings.init:
        return build_model(settings.model, example_shape)
    loaded = load_model(settings.init)
    if loaded.shape != example_shape:
        raise ValueError(f"--init {settings.init} makes {loaded.shape} examples but the data has {example_shape}")
    return loaded.model.train()


def reflow_coupling(root: str, device: torch.device) -> Coupling:
    """The fixed pairs of a reflow folder, checked to regenerate their noise on this device type."""
    seeds, made_on = read_pair_seeds(root)
    if made_on != device.type:
        raise ValueError(
            f"the pairs in {root} were generated on {made_on}; noise regenerates identically only on "
            f"the same device type, so train on {made_on} (this run uses {device.type})"
        )
    return fixed_pairs_coupling(seeds)


def dataset_kwargs(settings: TrainSettings) -> dict[str, Any]:
    """Constructor arguments of the chosen dataset from the settings."""
    if settings.dataset == "digits":
        return {"split": "train", "flip": settings.flip}
    if not settings.root:
        raise SystemExit(f"--dataset {settings.dataset} needs --root (the data folder or file)")
    if settings.dataset == "imagefolder" and not settings.resolution:
        raise SystemExit("--dataset imagefolder needs --resolution (images are resized and centre-cropped to it)")
    if settings.reflow and (settings.dataset != "hdf5" or settings.flip):
        raise SystemExit("--reflow reads the pair shards: use --dataset hdf5 without --flip")
    resolution = settings.resolution or None
    if settings.dataset == "hdf5":
        return {"path": settings.root, "flip": settings.flip, "resolution": resolution}
    if settings.dataset == "imagefolder":
        return {"root": settings.root, "flip": settings.flip, "resolution": resolution}
    return {"root": settings.root, "flip": settings.flip}


def main(argv: list[str] | None = None) -> int:
    settings = TrainSettings.from_args(parse_args(argv))
    device = distributed.init_from_env()
    if settings.device:
        device = torch.device(settings.device)
    data = make_dataset(settings.dataset, **dataset_kwargs(settings))
    config = settings.train
    if settings.epochs:
        config = replace(
            config, steps=steps_for_epochs(settings.epochs, len(data), config.batch_size * distributed.world_size())
        )
    torch.manual_seed(config.seed)  # this process's RNG: the same initial weights on every rank
    model = initial_model(settings, tuple(data[0][1].shape)).to(device)
    coupling = (
        reflow_coupling(settings.root, device)
        if settings.reflow
        else make_coupling(
            settings.coupling,
            len(data),
            num_caches=settings.caches,
            seed=config.seed,
            cost=settings.cost,
            no_swaps=settings.no_swaps,
        )
    )
    out = Path(settings.out)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        run_config = {
            **{name: value for name, value, _ in _flat_items(replace(settings, train=config))},
            "world_size": distributed.world_size(),
            "num_examples": len(data),
            "device": str(device),
            "latent": latent_source(data),
        }
        (out / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")
        print(json.dumps(run_config), flush=True)
    result = train_flow(model, data, coupling, config, checkpoint=out / "checkpoint.pt")
    if distributed.is_main():
        (out / "history.json").write_text(json.dumps(result.history) + "\n")
    if settings.dump_seeds and isinstance(coupling, LoomCoupling):
        torch.save(coupling.seeds, out / f"seeds_rank{distributed.rank()}.pt")
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
