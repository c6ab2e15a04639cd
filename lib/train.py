"""One training loop for conditional flow matching with any coupling, in-process or under torchrun.

Per step (:func:`train_step`, paper Algorithm 1 around the CFM update): draw the next global batch of example
indices from a shuffled epoch (as the released pipeline: each image once, its flipped copy i + N drawn with
probability 1/2; ``enumerate_flips`` visits all 2N copies instead), fetch the whole batch's data on every rank (or
gather every rank's slice), let the coupling pair noise with it (LOOM writes its seeds back here, identically on
every rank), draw its time samples, keep this rank's slice, take an Adam step on the CFM loss (DDP averages the
gradients), update the EMA. Adam with linear warm-up then constant lr and gradient-norm clipping, as in the
released configs. Everything up to the time samples needs no weights (:func:`prepare_batch`): by default a
background thread does it for the next batches while the current one trains (lib.pairing), giving bit-for-bit the
same run as pairing inside the step.

Checkpoints hold everything the next step depends on (weights, EMA, optimizer, scheduler, the coupling's seed
table and generator, every rank's RNG states, the rest of the current epoch), are written atomically
(lib.checkpoints), and resume exactly: N steps + resume + N steps == 2N straight steps. They are written every
``checkpoint_minutes`` (default 30), every ``checkpoint_every`` steps if set, at the end, and when SIGINT or SIGTERM
arrives (the step finishes, the checkpoint is written, the run exits saying how to resume; lib.runfolder). A resume
refuses any change of a setting that shapes the result, listing the differences, and ``--steps`` below the
checkpoint's step. The command line holds its run folder (lib.files.FolderLock): a second run into it is refused.

Settings: :class:`TrainConfig` (the optimisation, used in-process by notebooks 01-04) inside :class:`TrainSettings`
(everything ``python -m lib.train`` takes: data, model, coupling, run folder). Notebooks 05-08 launch the same
command line from a TrainSettings (``to_argv``), and the command line parses back into one (``from_args``).

    python -m lib.train --dataset digits --model mlp --coupling loom --steps 2000 --out runs/digits
    torchrun --nproc_per_node=4 -m lib.train --config cifar10 --root data --out runs/c10
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import copy
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lib import cli, distributed
from lib.boundary import TableRun, load_boundary, noise_table_warning
from lib.checkpoints import (
    KIT_FORMAT,
    RELEASED_PREFIX,
    TrainCheckpointError,
    build_model,
    keep_checkpoint,
    load_model,
    read_training_checkpoint,
    save_checkpoint,
)
from lib.couplings import (
    COST_NAMES,
    COUPLINGS,
    NOISE_MEMORY_GIB,
    Coupling,
    CouplingStats,
    LoomCoupling,
    converge_pairing,
    epoch_batches,
    fixed_pairs_coupling,
    flipped_epoch_batches,
    make_coupling,
)
from lib.datasets import DATASETS, HDF5Images, IndexedImages, make_dataset, read_pair_seeds
from lib.files import atomic_write_stream, check_folder, write_json
from lib.flow import cfm_loss, sample_time
from lib.livelog import LiveLog
from lib.pairing import PAIRED_AHEAD, PAIRING_CHOICES, PairedBatch, Pairing, resolve_pairing
from lib.paper import PAPER_GPUS, RELEASED_CONFIGS, RELEASED_EPOCH_IMAGES
from lib.progress import progress
from lib.runfolder import (
    CheckpointSchedule,
    StopSignals,
    TrainingInterrupted,
    hold_run_folder,
    settings_differences,
)
from lib.unet import PRESETS, build_unet

Data = Tensor | IndexedImages  # (N, *shape) in memory, or a dataset of the kit
RANK_DATA: tuple[str, ...] = ("fetch", "gather")  # how each rank gets the global batch's data under torchrun


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
    tensorboard: bool = _setting(
        True, "also log the metrics as they happen to <out>/tensorboard when tensorboard is installed (lib.livelog)"
    )
    checkpoint_every: int = _setting(0, "also checkpoint every this many steps (0: off)")
    checkpoint_minutes: float = _setting(
        30.0, "checkpoint when this many minutes passed since the last one (0: off); always at the end and on Ctrl-C"
    )
    keep_checkpoints_every: int = _setting(
        0, ">0: also keep a copy checkpoint_step<k>.pt every this many steps (FID along training)"
    )
    enumerate_flips: bool = _setting(
        False,
        "an epoch visits all 2N flipped copies (the kit's old epochs: twice the steps) instead of the released "
        "pipeline's N images, each flipped with probability 1/2 and then drawn as example i + N",
    )
    bf16: bool = _setting(False, "bf16 autocast for the forward pass on CUDA (ignored on the CPU)")
    pairing: str = _setting(
        "auto",
        f"{', '.join(PAIRING_CHOICES)}: pipelined pairs the next batches (data, noise, LOOM's write-back, times) in "
        "a background thread while the current step trains, synchronous inside the step (the same run bit for bit); "
        "auto pipelines on CUDA or when torch leaves a core free (e.g. torch.set_num_threads(1)), else synchronous",
    )
    noise_memory_gib: float = _setting(
        NOISE_MEMORY_GIB,
        "loom: keep the table's noises in memory (gathered, not regenerated from seeds: the same values bit for bit) "
        "while they fit this many GiB per process (each torchrun rank holds its own copy); 0: always from seeds",
    )
    rank_data: str = _setting(
        "fetch",
        f"{' or '.join(RANK_DATA)} (torchrun): every rank fetches the whole global batch and pairs it itself, or "
        "fetches its slice and all-gathers the data; the same pairs either way",
    )

    def __post_init__(self) -> None:
        refuse_out_of_range(
            self,
            steps=(lambda v: v >= 1, "at least 1"),
            batch_size=(lambda v: v >= 1, "a positive integer"),
            lr=(lambda v: v > 0, "positive"),
            warmup_steps=(lambda v: v >= 0, "0 or more"),
            grad_clip=(lambda v: v > 0, "positive"),
            ema_decay=(lambda v: 0 <= v < 1, "in [0, 1)"),
            sigma=(lambda v: v >= 0, "0 or more"),
            seed=(lambda v: 0 <= v < 2**cli.SEED_BITS, f"0 to 2**{cli.SEED_BITS} - 1 (a seed fits 64 bits)"),
            log_every=(lambda v: v >= 1, "a positive integer"),
            redraw_every_epochs=(lambda v: v >= 0, "0 or more"),
            checkpoint_every=(lambda v: v >= 0, "0 (off) or more"),
            checkpoint_minutes=(lambda v: v >= 0, "0 (off) or more"),
            keep_checkpoints_every=(lambda v: v >= 0, "0 (off) or more"),
            pairing=(lambda v: v in PAIRING_CHOICES, f"one of {', '.join(PAIRING_CHOICES)}"),
            rank_data=(lambda v: v in RANK_DATA, f"one of {', '.join(RANK_DATA)}"),
            noise_memory_gib=(lambda v: v >= 0, "0 (always from seeds) or more"),
        )


_SETTING_NAMES: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("setting_names", default=None)


@contextlib.contextmanager
def named_settings(names: Mapping[str, str]) -> Iterator[None]:
    """Within the block, errors about settings name them as ``names`` says ({setting: name}, e.g. a notebook's
    parameters: {"steps": "STEPS"}) instead of as command-line flags (``--steps``), so a notebook's user is told
    which parameter to change:

        with named_settings({"steps": "STEPS", "lr": "LR"}):
            settings = TrainSettings(train=TrainConfig(steps=STEPS, lr=LR))   # "STEPS must be at least 1, got 0"
    """
    token = _SETTING_NAMES.set({**(_SETTING_NAMES.get() or {}), **names})
    try:
        yield
    finally:
        _SETTING_NAMES.reset(token)


def setting_name(name: str) -> str:
    """How an error names setting ``name``: its :func:`named_settings` name, else its flag (``--batch-size``)."""
    return (_SETTING_NAMES.get() or {}).get(name) or "--" + name.replace("_", "-")


def refuse_out_of_range(settings: object, **rules: tuple[Callable[[Any], bool], str]) -> None:
    """ValueError naming every setting (as its flag) that breaks its rule: rules {name: (ok(value), "must be ...")}.

    Every float setting must also be finite (lib.cli.is_finite): nan and inf pass ``v > 0`` and train to NaN."""
    finite = {
        name: (cli.is_finite, "a finite number")
        for name in (f.name for f in fields(settings))  # type: ignore[arg-type]
        if not cli.is_finite(getattr(settings, name))
    }
    bad = [
        f"{setting_name(name)} must be {text}, got {getattr(settings, name)!r}"
        for name, (ok, text) in {**rules, **finite}.items()
        if not ok(getattr(settings, name))
    ]
    if bad:
        raise ValueError("; ".join(bad))


# Settings a resumed run may change: they do not alter the trajectory of the weights (lib.train main compares all
# the others, lib.runfolder.settings_differences).
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "epochs",
        "progress",
        "tensorboard",
        "log_every",
        "checkpoint_every",
        "checkpoint_minutes",
        "keep_checkpoints_every",
        "out",
        "config",
        "dump_seeds",
        "trust_checkpoint",  # a setting of earlier kits (removed: nothing is unpickled): their checkpoints resume
        "verify_data",
        "pairing",
        "rank_data",
        "noise_memory_gib",  # where LOOM's noises come from (memory or seeds), never their values
    }
)


@dataclass(frozen=True)
class TrainSettings:
    """Everything ``python -m lib.train`` takes: what to train on, which model and coupling, where to write, and
    the optimisation (:class:`TrainConfig`). ``--config NAME`` fills in a released config first
    (lib.paper.RELEASED_CONFIGS); explicit flags override it."""

    out: str = _setting("", "run folder: checkpoint.pt, config.json, history.json (required)")
    config: str = _setting("", f"start from a released training config: {', '.join(RELEASED_CONFIGS)}")
    epochs: int = _setting(
        0, ">0: train this many epochs (sets --steps: epochs x images // global batch; see --enumerate-flips)"
    )
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
    verify_data: bool = _setting(False, "hdf5: check every shard's SHA-256 against its manifest before training")
    dump_seeds: bool = _setting(False, "each rank saves its final seed table as seeds_rank<r>.pt (checks)")
    device: str = _setting("", "cpu or cuda (default: cuda when available)")
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        refuse_out_of_range(
            self,
            epochs=(lambda v: v >= 0, "0 (use --steps) or more"),
            dataset=(lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
            resolution=(lambda v: v >= 0, "0 (as stored) or more"),
            model=(lambda v: v == "mlp" or v in PRESETS, f"mlp or one of {', '.join(PRESETS)}"),
            coupling=(lambda v: v in COUPLINGS, f"one of {', '.join(COUPLINGS)}"),
            caches=(lambda v: v >= 1, "a positive integer"),
            cost=(lambda v: v in COST_NAMES, f"one of {', '.join(COST_NAMES)}"),
        )
        unused = inapplicable(dict((name, value) for name, value, _ in _flat_items(self)))
        if unused:
            origin = RELEASED_CONFIGS.get(self.config, {})
            raise ValueError(
                "; ".join(
                    f"{_flag(name, value)}{f' (from --config {self.config})' if origin.get(name) == value else ''} "
                    f"{why}"
                    for name, (value, why) in unused.items()
                )
            )

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


# Settings that apply only to some datasets or couplings: {name: (applies(settings), "does not apply ... ; fix")}.
# Given where they do not apply they would be silently ignored (a run that is not what was asked), so they are refused.
APPLIES: dict[str, tuple[Callable[[Mapping[str, Any]], bool], str]] = {
    "flip": (lambda s: s["dataset"] != "digits", "does not apply to --dataset digits (no flipped copies); drop it"),
    "resolution": (
        lambda s: s["dataset"] in ("imagefolder", "hdf5"),
        "applies to --dataset imagefolder and hdf5 only; drop it",
    ),
    "root": (lambda s: s["dataset"] != "digits", "does not apply to --dataset digits (built in); drop it"),
    "verify_data": (lambda s: s["dataset"] == "hdf5", "applies to --dataset hdf5 only (shard manifests); drop it"),
    "caches": (
        lambda s: s["coupling"] == "loom" and not s["reflow"],
        "applies to --coupling loom only (its noise table); drop it or pass --coupling loom",
    ),
    "no_swaps": (lambda s: s["coupling"] == "loom" and not s["reflow"], "applies to --coupling loom only; drop it"),
    "redraw_every_epochs": (
        lambda s: s["coupling"] == "loom" and not s["reflow"],
        "applies to --coupling loom only; drop it",
    ),
    "converge_first": (
        lambda s: s["coupling"] == "loom" and not s["reflow"],
        "applies to --coupling loom only; drop it",
    ),
    "enumerate_flips": (lambda s: s["flip"], "applies with --flip only; drop it"),
    "reflow": (
        lambda s: s["dataset"] == "hdf5" and bool(s["root"]) and not s["flip"],
        "reads reflow pair shards: pass --dataset hdf5 --root <pairs folder> (data_prep/reflow_pairs.py) without "
        "--flip",
    ),
}


def inapplicable(values: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """{name: (value, why)} of the settings in ``values`` (flat: TrainSettings and TrainConfig names, or the parsed
    command line) that differ from their default where they do not apply (:data:`APPLIES`)."""
    return {
        name: (values[name], why)
        for name, (applies, why) in APPLIES.items()
        if values[name] != SETTING_DEFAULTS[name] and not applies(values)
    }


def _flag(name: str, value: Any) -> str:
    """A setting as the user wrote it: ``--flip``, ``--caches 7``, or a notebook's ``CACHES = 7``
    (:func:`named_settings`)."""
    shown = setting_name(name)
    if not shown.startswith("--"):
        return f"{shown} = {value!r}"
    return shown if isinstance(value, bool) else f"{shown} {value}"


def _flat_items(settings: TrainSettings) -> list[tuple[str, Any, Any]]:
    """(name, value, default) of every command-line setting, TrainConfig's flattened in."""
    items = [(f.name, getattr(settings, f.name), f.default) for f in fields(TrainSettings) if f.name != "train"]
    return items + [(f.name, getattr(settings.train, f.name), f.default) for f in fields(TrainConfig)]


SETTING_DEFAULTS = {
    **{f.name: f.default for f in fields(TrainSettings) if f.name != "train"},
    **{f.name: f.default for f in fields(TrainConfig)},
}


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
    pairing: Pairing = field(init=False)  # the batches in training order, paired ahead or in the step


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


def run_settings(
    config: TrainConfig, data: Data, coupling: Coupling, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every setting that defines a run, as used: ``extra`` (lib.train main: all of TrainSettings, resolved) overlaid
    with the optimisation, the coupling as built, the data's size and latents, and the number of ranks.

    Saved in every checkpoint and compared on resume (:func:`open_checkpoint`); main writes it as config.json.
    """
    loom = (  # a coupling without a seed table has no caches, swaps switch or seed init (None: not used)
        {"caches": coupling.num_caches, "no_swaps": coupling.no_swaps, "seed_init": coupling.seed_init}
        if isinstance(coupling, LoomCoupling)
        else {"caches": None, "no_swaps": None, "seed_init": None}
    )
    return {
        **(extra or {}),
        **asdict(config),
        "coupling": coupling.name,
        "cost": coupling.cost,
        **loom,
        "num_examples": len(data),
        "world_size": distributed.world_size(),
        "latent": latent_source(data),
    }


def open_checkpoint(path: Path, settings: dict[str, Any], steps: int) -> dict[str, Any] | None:
    """The checkpoint to resume from (None if there is none yet), read once.

    Refused (TrainCheckpointError): a checkpoint written with other settings (every difference listed, anything
    outside RESUMABLE_CHANGES), or one already past ``steps``.
    """
    if not path.exists():
        return None
    state = read_training_checkpoint(path)
    saved = state.get("settings")
    if saved is None:  # written before checkpoints recorded every setting: compare what it has
        saved = {**state["config"], "world_size": state["world_size"], "latent": state.get("latent")}
        settings = {k: v for k, v in settings.items() if k in saved}
    changed = settings_differences(saved, settings, RESUMABLE_CHANGES, SETTING_DEFAULTS)
    if changed:
        raise TrainCheckpointError(
            f"{path} was trained with other settings ({'; '.join(changed)}). Resume with the settings it was "
            f"trained with (the run's config.json), or start a new run in another folder"
        )
    if state["global_step"] > steps:
        raise TrainCheckpointError(
            f"{path} is already at step {state['global_step']}, past --steps {steps}: pass --steps "
            f"{state['global_step']} or more to continue this run, or train the shorter run in another folder"
        )
    return state


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own randomness (dropout, the path's sigma noise). Rank 0 uses ``seed`` itself, so
    one process is unchanged; other ranks step by an odd constant modulo 2**32, because torch's CPU generator
    (mt19937) keeps only a seed's low 32 bits, and an odd step never maps two ranks to one seed."""
    return (seed + rank * 0x9E3779B9) % 2**32


def checkpoint_state(trainer: Trainer, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything the next step depends on. ``model``/``optimizer``/``lr_scheduler``/``global_step`` keep the
    released checkpoints' names, so lib.checkpoints reads the model of these files as of released ones.

    Collective under torchrun: every rank's RNG states are gathered as rows (world, ...) of ``torch_rng`` /
    ``cuda_rng``, since each rank draws its own dropout. The pairing is paused meanwhile: the loop position and the
    coupling are those after the last batch paired, and ``pending`` holds the batches paired but not yet trained
    (none when pairing is synchronous).
    """
    with trainer.pairing.paused() as pending:
        return _state_now(trainer, settings, pending)


def _state_now(trainer: Trainer, settings: dict[str, Any], pending: list[PairedBatch]) -> dict[str, Any]:
    """:func:`checkpoint_state` with the pairing held still."""
    loop = trainer.loop
    cuda = trainer.device.type == "cuda"
    return {
        "format": KIT_FORMAT,
        "settings": settings,
        "config": asdict(trainer.config),
        "world_size": distributed.world_size(),
        "latent": settings.get("latent"),
        "global_step": loop.step,
        "epoch": loop.epoch,
        "batches": [b.clone() for b in loop.batches],
        "generator": loop.generator.get_state(),
        "torch_rng": distributed.gather_rows(torch.get_rng_state()),
        "cuda_rng": distributed.gather_rows(torch.cuda.get_rng_state(trainer.device)) if cuda else None,
        "model": trainer.model.state_dict(),
        "ema": trainer.ema.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.scheduler.state_dict(),
        "coupling": trainer.coupling.state_dict(),
        "pending": [batch.state() for batch in pending],
        "history": list(trainer.history),
    }


def write_checkpoint(trainer: Trainer, path: Path, settings: dict[str, Any]) -> None:
    """Every rank contributes its RNG states, rank 0 writes the file (atomically), the others wait for it."""
    state = checkpoint_state(trainer, settings)
    if distributed.is_main():
        save_checkpoint(path, state)
    distributed.barrier()


def restore(state: dict[str, Any], trainer: Trainer) -> None:
    """Load a :func:`checkpoint_state` dict back into a trainer (in place); this rank takes its own RNG row."""
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
    # A row is a view into the (world, n) tensor; set_rng_state reads the storage from its start, so copy the row.
    rank, cuda_rng = distributed.rank(), state["cuda_rng"]
    torch.set_rng_state(state["torch_rng"][rank].clone() if state["torch_rng"].ndim == 2 else state["torch_rng"])
    if isinstance(cuda_rng, Tensor) and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(cuda_rng[rank].clone(), trainer.device)
    elif isinstance(cuda_rng, list) and cuda_rng and torch.cuda.is_available():  # written before per-rank states
        torch.cuda.set_rng_state_all(cuda_rng)
    trainer.history[:] = state["history"]
    trainer.pairing.ready.clear()
    for batch in state.get("pending", []):  # paired before the checkpoint, not trained: their data is fetched again
        trainer.pairing.ready.append(PairedBatch.from_state(batch, fetch_global(trainer, batch["index"])))


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
    """Optimizer, warm-up schedule, EMA and loop position for training ``model`` (DDP-wrapped under torchrun).

    A LOOM coupling gets the run's noise memory budget (``config.noise_memory_gib``)."""
    if isinstance(coupling, LoomCoupling):
        coupling.noise_memory_gib = config.noise_memory_gib
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    trainer = Trainer(
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
    if config.rank_data == "gather":
        distributed.pairing_group()  # made here, by every rank together, before any pairing thread runs
    ahead = PAIRED_AHEAD if resolve_pairing(config.pairing, trainer.device) == "pipelined" else 0
    trainer.pairing = Pairing(lambda: prepare_batch(trainer), ahead, device=trainer.device)
    return trainer


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
        global_batch, pairs = config.batch_size * distributed.world_size(), flip_pairs(trainer.data)
        loop.batches = (
            epoch_batches(len(trainer.data), global_batch, loop.generator)
            if pairs is None or config.enumerate_flips
            else flipped_epoch_batches(pairs, global_batch, loop.generator)
        )
    return loop.batches.pop(0)


def flip_pairs(data: Data) -> Tensor | None:
    """Each image's (unflipped, flipped) example indices (images, 2), or None for data without flipped copies."""
    return data.flip_pairs() if isinstance(data, IndexedImages) else None


def epoch_examples(data: Data, enumerate_flips: bool = False) -> int:
    """Examples one epoch visits: the images (each once, flipped or not), or every copy with ``enumerate_flips``."""
    pairs = flip_pairs(data)
    return len(data) if pairs is None or enumerate_flips else len(pairs)


def fetch_global(trainer: Trainer, index: Tensor) -> Tensor:
    """The data of the global batch ``index`` (B,) -> (B, *shape) on the trainer's device, on every rank.

    ``rank_data`` "fetch": every rank reads the whole batch itself (no communication, so a pairing thread can do it
    beside DDP's gradient all-reduce); "gather": each rank reads its slice and the slices are all-gathered (on a
    process group of their own, lib.distributed.pairing_group, for the same reason).
    """
    if trainer.config.rank_data == "fetch" or distributed.world_size() == 1:
        return fetch_batch(trainer.data, index, trainer.device)
    mine = distributed.rank_slice(len(index))
    return distributed.all_gather_cat(
        fetch_batch(trainer.data, index[mine], trainer.device), distributed.pairing_group()
    )


def prepare_batch(trainer: Trainer) -> PairedBatch:
    """The next global batch, paired: indices, data, the coupling's noise (LOOM writes its seeds back here) and
    time samples. Needs no weights, so lib.pairing may run it ahead of the training step.

    Every rank pairs the whole batch, so the coupling solves one B x B assignment and its state (LOOM's seed table)
    evolves identically everywhere; time samples are drawn for the whole batch too, so a run on W ranks sees the
    same pairs and times as one process with the global batch.
    """
    index = next_batch(trainer)
    pair = trainer.coupling(fetch_global(trainer, index), index)
    t = sample_time(len(index), trainer.device, trainer.loop.generator)
    return PairedBatch(index=index, epoch=trainer.loop.epoch, z=pair.z, x=pair.x, t=t, stats=pair.stats)


def cfm_step(trainer: Trainer, batch: PairedBatch) -> Tensor:
    """CFM loss of this rank's slice of a paired global batch."""
    mine, config, device = distributed.rank_slice(len(batch.index)), trainer.config, trainer.device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda"):
        return cfm_loss(trainer.net, batch.z[mine], batch.x[mine], batch.t[mine], config.sigma)


def train_step(trainer: Trainer, batch: PairedBatch) -> tuple[Tensor, CouplingStats]:
    """One optimiser step on a paired global batch (:func:`prepare_batch`): CFM loss, backward, clip, Adam, warm-up,
    EMA. Returns the loss and what the coupling did."""
    loss, stats = cfm_step(trainer, batch), batch.stats
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.grad_clip)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.ema.update_parameters(trainer.model)
    return loss, stats


def check_global_batch(global_batch: int, num_examples: int) -> None:
    """A global batch (batch_size x ranks) must fit in the data: each epoch is a whole number of batches."""
    if global_batch > num_examples:
        raise ValueError(
            f"the global batch {global_batch} (--batch-size x ranks) exceeds the {num_examples} examples of the "
            "data; lower --batch-size"
        )


def train_flow(
    model: nn.Module,
    data: Data,
    coupling: Coupling,
    config: TrainConfig,
    checkpoint: str | os.PathLike[str] | None = None,
    settings: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` (example i = data[i]), pairing noise through ``coupling``.

    checkpoint: a file path; if it exists the run resumes from it exactly (refusing other settings, see
    :func:`open_checkpoint`), and it is written on the schedule of ``config`` (lib.runfolder.CheckpointSchedule), at
    the end, and on SIGINT/SIGTERM, which then raise lib.runfolder.TrainingInterrupted after the write.
    settings: the run's settings beyond ``config`` (:func:`run_settings`' ``extra``), saved and compared on resume.
    resume: the checkpoint's state when the caller already read it with :func:`open_checkpoint` (read once).

    Under torchrun every rank calls this with the same arguments; ``model`` is wrapped in DDP here. Dropout and the
    path's noise draw from torch's global RNG, seeded per rank (:func:`rank_seed`) inside a fork: the caller's RNG
    state is left as it was.
    """
    global_batch = config.batch_size * distributed.world_size()
    check_global_batch(global_batch, epoch_examples(data, config.enumerate_flips))
    path = Path(checkpoint) if checkpoint is not None else None
    run = run_settings(config, data, coupling, settings)
    if resume is None and path is not None:
        resume = open_checkpoint(path, run, config.steps)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(rank_seed(config.seed, distributed.rank()))
        trainer = build_trainer(model, data, coupling, config)
        if resume is not None:
            restore(resume, trainer)
        elif config.converge_first:
            _converge_first(trainer, global_batch)
        with trainer.pairing.start(config.steps - trainer.loop.step):  # pairs ahead in a thread until the end
            _run(trainer, path, run)
    return TrainResult(
        model=model, ema=copy.deepcopy(trainer.ema.module).eval(), history=trainer.history, config=asdict(config)
    )


def _converge_first(trainer: Trainer, global_batch: int) -> None:
    """Train after convergence: re-pair without training until an epoch makes no swap."""
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


def _run(trainer: Trainer, path: Path | None, settings: dict[str, Any]) -> None:
    """Steps loop.step + 1 .. config.steps, logging every ``log_every`` and checkpointing on schedule (with a path)."""
    config, loop = trainer.config, trainer.loop
    # The step of the last checkpoint written (None: none yet), shown on the bar and kept if the run diverges.
    saved_step = loop.step if path is not None and path.exists() else None
    with (
        StopSignals(enabled=path is not None) as signals,  # first: a launcher may stop the run once its bar shows
        progress(
            range(loop.step + 1, config.steps + 1),
            disable=not config.progress or not distributed.is_main(),
            desc=trainer.coupling.name,
            initial=loop.step,
            total=config.steps,
        ) as bar,
        LiveLog(path.parent if path is not None else None, config.tensorboard, start_step=loop.step) as live,
    ):
        schedule = CheckpointSchedule(config.checkpoint_every, config.checkpoint_minutes, config.steps, signals)
        for step in bar:
            batch = trainer.pairing.next()
            lr = trainer.optimizer.param_groups[0]["lr"]  # the lr this step trains with
            loss, stats = train_step(trainer, batch)
            loop.step = step
            if step % config.log_every == 0 or step == config.steps:
                record = {
                    "step": step,
                    "epoch": batch.epoch,
                    "loss": loss.item(),
                    "swaps": stats.swaps,
                    "cost_before": stats.cost_before,
                    "cost_after": stats.cost_after,
                }
                trainer.history.append(record)
                refuse_divergence(trainer, step, path, saved_step, loss=record["loss"])
                live.record(record, lr, trainer.device)
                bar.set_postfix_str(_postfix(trainer.history, saved_step), refresh=False)
            if path is None:
                continue
            save, stop = schedule.decide(step)
            keep = config.keep_checkpoints_every > 0 and step % config.keep_checkpoints_every == 0
            if save or keep:
                refuse_divergence(trainer, step, path, saved_step)  # never replace a good checkpoint by nan weights
                write_checkpoint(trainer, path, settings)
                live.flush()
                saved_step = step
                bar.set_postfix_str(_postfix(trainer.history, saved_step), refresh=False)
            if keep and distributed.is_main():
                keep_checkpoint(path, step)  # a step-numbered copy for FID along training
            if stop:
                bar.close()
                raise schedule.interrupted(step, path)


def _postfix(history: list[dict[str, float]], saved_step: int | None) -> str:
    """The progress bar's text after the count: the last logged loss and the step of the last checkpoint written."""
    parts = [f"loss {history[-1]['loss']:.4g}"] if history else []
    return ", ".join(parts + ([f"saved step {saved_step}"] if saved_step is not None else []))


class TrainingDiverged(ValueError):
    """The loss or the weights became nan / inf; the message names the step, the likely causes and what was kept."""


def refuse_divergence(
    trainer: Trainer, step: int, path: Path | None, good: int | None, loss: float | None = None
) -> None:
    """Raise :class:`TrainingDiverged` if ``loss`` (a logged loss, already on the CPU) or, without one, the weights
    and their EMA hold nan / inf. Every rank gets the same answer (one small all-reduce), so all stop together.

    Cost: the loop calls this with the loss it fetched for the history (every ``log_every`` steps: no extra GPU sync)
    and on the weights only before a checkpoint write (one reduction and sync per checkpoint), never per step.
    """
    if loss is not None:
        bad, what = not math.isfinite(loss), f"the loss is {loss}"
    else:
        params = [*trainer.model.parameters(), *trainer.ema.parameters()]
        bad, what = not bool(torch.stack([p.isfinite().all() for p in params]).all()), "the weights hold nan / inf"
    if not distributed.any_rank([bad])[0]:
        return
    if path is None:
        kept = "no checkpoint is written in this run"
    elif good is None:
        kept = f"no checkpoint had been written yet ({path} is not made from nan weights)"
    else:
        kept = f"the last good checkpoint {path} (step {good}) is kept"
    raise TrainingDiverged(
        f"training diverged at step {step}: {what if bad else 'another rank saw non-finite numbers'}; {kept}. "
        f"Likely causes: {divergence_causes(trainer.config)}. Start a new run (another --out) with those lowered"
    )


def divergence_causes(config: TrainConfig) -> str:
    """The settings that most likely made a run diverge, most likely first."""
    causes = [f"a learning rate too high (--lr {config.lr:g}; lower it, or warm up with --warmup-steps)"]
    if config.sigma >= 1:
        causes.append(f"a path width --sigma {config.sigma:g} far above the paper's 1e-7")
    if config.grad_clip > 10:
        causes.append(f"a loose gradient clip (--grad-clip {config.grad_clip:g})")
    if config.bf16:
        causes.append("bf16 overflow (drop --bf16)")
    return "; ".join(causes)


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
            p.add_argument(flag, type=_flag_type(f.name, default), default=default, help=f.metadata["help"])


def _flag_type(name: str, default: Any) -> Callable[[str], Any]:
    """How a flag's text becomes its value: floats finite and seeds within 64 bits (lib.cli), else the default's
    type."""
    if name == "seed":
        return cli.seed
    return cli.finite_float if isinstance(default, float) else type(default)


def _parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m lib.train", __doc__)
    _add_flags(p, TrainSettings)
    _add_flags(p, TrainConfig)
    return p


def explicit_settings(argv: list[str] | None) -> set[str]:
    """The settings ``argv`` names itself (abbreviated flags too): argparse with every default suppressed."""
    p = _parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    given, _ = p.parse_known_args(argv)
    return set(vars(given))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--config NAME`` first fills in a released config, and explicit flags always override it:
    ``--steps`` replaces the config's epochs, and a config value that does not apply to what the flags chose
    (its --caches with an explicit --coupling independent) falls back to its default."""
    p = _parser()
    chosen, _ = p.parse_known_args(argv)
    if chosen.config:
        if chosen.config not in RELEASED_CONFIGS:
            p.error(f"unknown --config {chosen.config!r}; use one of {sorted(RELEASED_CONFIGS)}")
        p.set_defaults(**RELEASED_CONFIGS[chosen.config])
    args = p.parse_args(argv)
    if not args.out:
        p.error("--out is required (the run folder)")
    explicit = explicit_settings(argv)
    if {"steps", "epochs"} <= explicit and args.epochs:
        p.error("pass --steps or --epochs, not both (--epochs sets the steps)")
    if "steps" in explicit:
        args.epochs = 0  # explicit steps beat the config's epochs
    if chosen.config:
        for name in inapplicable(vars(args)):  # a config's reflow is what the config is: never dropped
            if name not in explicit and name in RELEASED_CONFIGS[chosen.config] and name != "reflow":
                setattr(args, name, SETTING_DEFAULTS[name])  # the config's, not the user's: not applicable here
    return args


def steps_for_epochs(epochs: int, num_examples: int, global_batch: int) -> int:
    """Optimiser steps of ``epochs`` passes over ``num_examples`` (:func:`epoch_examples`) with the last partial
    batch dropped (as lib.couplings.epoch_batches and flipped_epoch_batches)."""
    return epochs * (num_examples // global_batch)


def released_steps(config: str) -> int:
    """Optimiser steps of a released config (lib.paper.RELEASED_CONFIGS): its epochs over the images it visits per
    epoch at its global batch (per-GPU batch x PAPER_GPUS), the last partial batch dropped. CIFAR-10: 1000 x
    (50,000 // 128) = 390,000 (391,000 if the partial batch were kept)."""
    settings = RELEASED_CONFIGS[config]
    return steps_for_epochs(settings["epochs"], RELEASED_EPOCH_IMAGES[config], settings["batch_size"] * PAPER_GPUS)


def released_table_run(config: str, caches: int | None = None) -> TableRun:
    """A released config's LOOM table as lib.boundary sees it: its optimiser steps (:func:`released_steps`), global
    batch, examples (flipped copies own their seeds), ``caches`` (default: the config's), the released UNet's
    parameters (counted on the meta device, nothing allocated) and the numbers in one example."""
    settings = RELEASED_CONFIGS[config]
    with torch.device("meta"):
        unet = build_unet(settings["model"])
    examples = RELEASED_EPOCH_IMAGES[config] * (2 if settings["flip"] else 1)
    return TableRun(
        steps=released_steps(config),
        global_batch=settings["batch_size"] * PAPER_GPUS,
        num_examples=examples,
        caches=caches or settings["caches"],
        params=sum(p.numel() for p in unet.parameters()),
        dim=unet.config.in_channels * unet.config.image_size**2,
    )


def initial_model(settings: TrainSettings, example_shape: tuple[int, ...]) -> nn.Module:
    """--init's weights (architecture read off them) or a fresh --model."""
    if not settings.init:
        return build_model(settings.model, example_shape)
    loaded = load_model(settings.init)
    # The MLP takes examples flattened (lib.models.MLP): a (64,) MLP fits (1, 8, 8) digits, as lib.train built it.
    flat = loaded.info.get("preset") == "mlp" and loaded.shape == (math.prod(example_shape),)
    if loaded.shape != example_shape and not flat:
        raise ValueError(f"--init {settings.init} makes {loaded.shape} examples but the data has {example_shape}")
    return loaded.model.train()


def check_model_fits(model: str, example_shape: tuple[int, ...]) -> None:
    """ValueError when UNet preset ``model`` does not take examples of ``example_shape`` (the MLP takes any), naming
    the presets that do: checked before the run folder is written."""
    if model == "mlp":
        return
    takes = (PRESETS[model].in_channels, PRESETS[model].image_size, PRESETS[model].image_size)
    if takes != tuple(example_shape):
        fits = [name for name, c in PRESETS.items() if (c.in_channels, c.image_size, c.image_size) == example_shape]
        raise ValueError(
            f"--model {model} takes {takes} examples but the data has {tuple(example_shape)}; use --model "
            + " or ".join(["mlp", *fits])
        )


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
        raise ValueError(f"--dataset {settings.dataset} needs --root (the data folder or file)")
    if settings.dataset == "imagefolder" and not settings.resolution:
        raise ValueError("--dataset imagefolder needs --resolution (images are resized and centre-cropped to it)")
    resolution = settings.resolution or None
    if settings.dataset == "hdf5":
        verify = "full" if settings.verify_data else "cheap"
        return {"path": settings.root, "flip": settings.flip, "resolution": resolution, "verify": verify}
    if settings.dataset == "imagefolder":
        return {"root": settings.root, "flip": settings.flip, "resolution": resolution}
    return {"root": settings.root, "flip": settings.flip}


def absolute(path: str) -> str:
    """A path setting as an absolute path (so a rerun from another folder compares equal); "" and
    ``released:<name>`` unchanged."""
    return str(Path(path).resolve()) if path and not path.startswith(RELEASED_PREFIX) else path


def command_settings(settings: TrainSettings, config: TrainConfig, data: Data, device: torch.device) -> dict[str, Any]:
    """The command line's settings as used: every TrainSettings field (``steps`` from ``--epochs`` resolved), paths
    absolute, the device type, the example shape. :func:`run_settings` adds what the built objects say."""
    return {
        **{name: value for name, value, _ in _flat_items(replace(settings, train=config))},
        "root": absolute(settings.root),
        "init": absolute(settings.init),
        "device": device.type,
        "example_shape": list(data[0][1].shape),
    }


def training_device(settings: TrainSettings) -> torch.device:
    """Join torchrun's process group (if launched by it) -> this rank's device, ``--device`` checked."""
    device = distributed.init_from_env()
    return cli.check_device(settings.device) if settings.device else device


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.train`` / ``torchrun -m lib.train``: an expected error is one line and status 2 (lib.cli); an
    interrupted run saves its checkpoint and exits with 128 + the signal's number, saying how to resume."""
    return cli.run(train_command, argv)


def train_command(argv: list[str]) -> int:
    settings = TrainSettings.from_args(parse_args(argv))
    device = training_device(settings)
    try:
        with hold_run_folder(check_folder(settings.out)):  # --out a file: refused in one line
            train_in_folder(settings, device)
    except TrainingInterrupted as stop:
        if distributed.is_main():
            print(stop, file=sys.stderr, flush=True)
        return stop.exit_code
    finally:
        distributed.shutdown()
    return 0


def train_in_folder(settings: TrainSettings, device: torch.device) -> None:
    """Train (or resume) the run of ``settings`` in its folder: checks first, then config.json, then the steps."""
    out = Path(settings.out)
    data = make_dataset(settings.dataset, **dataset_kwargs(settings))
    config = settings.train
    check_global_batch(config.batch_size * distributed.world_size(), len(data))
    if settings.epochs:
        visits = epoch_examples(data, config.enumerate_flips)
        config = replace(
            config, steps=steps_for_epochs(settings.epochs, visits, config.batch_size * distributed.world_size())
        )
    torch.manual_seed(config.seed)  # this process's RNG: the same initial weights on every rank
    if not settings.init:
        check_model_fits(settings.model, tuple(data[0][1].shape))
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
    run = run_settings(config, data, coupling, command_settings(settings, config, data, device))
    path = out / "checkpoint.pt"
    state = open_checkpoint(path, run, config.steps)  # refuses other settings before anything is written
    if distributed.is_main():
        write_json(out / "config.json", run)  # only now: the settings really used
        print(json.dumps(run), flush=True)
        if isinstance(coupling, LoomCoupling) and not settings.reflow:
            global_batch = config.batch_size * distributed.world_size()
            table = TableRun(
                config.steps,
                global_batch,
                len(data),
                coupling.num_caches,
                sum(p.numel() for p in model.parameters()),
                math.prod(data[0][1].shape),
            )
            warning = noise_table_warning(table, load_boundary())
            if warning:
                print(warning, file=sys.stderr, flush=True)
        if state is not None:
            print(f"resuming {path} at step {state['global_step']} of {config.steps}", flush=True)
    result = train_flow(model, data, coupling, config, checkpoint=path, settings=run, resume=state)
    if distributed.is_main():
        write_json(out / "history.json", result.history, indent=None)
    if settings.dump_seeds and isinstance(coupling, LoomCoupling):
        atomic_write_stream(out / f"seeds_rank{distributed.rank()}.pt", lambda f: torch.save(coupling.seeds, f))


if __name__ == "__main__":
    raise SystemExit(main())
