"""Every fact of the paper and of its released code and checkpoints that the kit uses, in one place.

The lowest layer of lib: it imports nothing from the kit, and everything else reads these facts from here.
Where a fact comes from: ``lib/reference/paper_setup.md`` (settings, epoch accounting, protocol),
``lib/reference/paper_results.csv`` (the FIDs of Tables 1, 2, 3, 5 with their provenance),
``lib/reference/released_checkpoint_keys.json`` (the released state-dict layout) and
``lib/reference/official_measurements.md`` (the released code's coupling step, measured beside the kit).

- :func:`paper_results`, :func:`paper_rows`, :data:`TABLES`: the paper's numbers and its table titles.
- :func:`same_setting`: whether a kit result (solver, true NFE) is the setting of a paper row.
- :data:`COUPLING_ROWS`, :func:`sweep_label`, :func:`table5_sweep`: the rows of Tables 1 and 5 as coupling switches.
- :data:`UNET_ARCHITECTURES`: the released UNets' hyper-parameters (lib.unet builds them).
- :data:`RELEASED_CONFIGS`, :data:`RELEASED_EPOCH_IMAGES`: the released training configs (lib.train ``--config``)
  and the images one of their epochs visits (lib.train.released_steps turns both into optimiser steps);
  :data:`PAPER_TRAINING_HOURS`: the paper's CIFAR-10 training time (lib.kit.plan estimates from it).
- :data:`RELEASED_REPOS`, :data:`RELEASED_PRESETS`, :data:`PAPER_EVALUATION`: the five released checkpoints,
  the architecture each loads into and how the paper evaluates it.
- :data:`FID_REFERENCE_SEED`, :data:`FID_MAX_REFERENCE`: the reference draw of the paper's FID protocol
  (lib.fid's ``paper-torcheval``).
- :data:`RELEASED_COUPLING_STEP`, :data:`RELEASED_COUPLING_SETTING`: the released code's LOOM coupling step, as
  measured (notebook 09 sets the kit's step beside it).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
PAPER_RESULTS = REFERENCE_DIR / "paper_results.csv"
OFFICIAL_MEASUREMENTS_SOURCE = "lib/reference/official_measurements.md (released code, commit 213f24f)"


# ---------------------------------------------------------------------------------------------------------
# The paper's numbers
# ---------------------------------------------------------------------------------------------------------
def paper_results() -> list[dict[str, str]]:
    """Every row of the paper's Tables 1, 2, 3 and 5: {table, dataset, method, solver, nfe, fid, provenance}."""
    with open(PAPER_RESULTS, newline="") as f:
        return list(csv.DictReader(f))


def paper_rows(table: str, dataset: str) -> list[dict[str, str]]:
    """The paper's rows of one table and dataset (e.g. "1", "cifar10")."""
    return [r for r in paper_results() if r["table"] == table and r["dataset"] == dataset]


# (table, dataset) -> title, in the paper's order.
TABLES: dict[tuple[str, str], str] = {
    ("1", "cifar10"): "Table 1: CIFAR-10",
    ("2", "imagenet32"): "Table 2: ImageNet-32",
    ("2", "imagenet64"): "Table 2: ImageNet-64",
    ("3", "ffhq256_latent"): "Table 3: FFHQ-256 (latent)",
    ("5", "cifar10"): "Table 5: CIFAR-10 ablations",
}


def same_setting(paper: Mapping[str, str], solver: str, nfe: float) -> bool:
    """Whether a kit result of ``solver`` ("midpoint-4", "dopri5") with ``nfe`` true network calls is the setting
    of the paper row ``paper``: the same solver family at the same NFE. Adaptive (dopri5) rows match on the family
    alone (their NFE is whatever the solver needed); a paper row whose solver is "unknown" matches on NFE alone."""
    family = str(solver).split("-")[0]
    if family == "dopri5":
        return paper["solver"] == "dopri5"
    return paper["solver"] in (family, "unknown") and paper["nfe"] != "" and float(paper["nfe"]) == round(float(nfe))


# ---------------------------------------------------------------------------------------------------------
# The rows of Tables 1 and 5: how noise is paired with data
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CouplingRow:
    """A row of the paper's Tables 1 and 5, as the lib.couplings / lib.train switches that make it."""

    label: str  # the paper's row name
    coupling: str  # independent, minibatch_ot or loom
    no_swaps: bool = False  # loom: never re-pair ("fixed source w/o reassignments")
    converge_first: bool = False  # loom: converge the pairing before training ("train after convergence")


COUPLING_ROWS: dict[str, CouplingRow] = {
    row.label: row
    for row in (
        CouplingRow("I-CFM", "independent"),
        CouplingRow("w/o saving local reassignments", "minibatch_ot"),
        CouplingRow("fixed source w/o reassignments", "loom", no_swaps=True),
        CouplingRow("train after convergence", "loom", converge_first=True),
        CouplingRow("LOOM-CFM", "loom"),
    )
}
# Table 5's LOOM-CFM ("LOOM-CFM 4 caches bs128") is Table 1's LOOM-CFM run; its ablation rows change one switch.
TABLE5_CACHES, TABLE5_BATCH = 4, 128
# Table 5's sweeps: caches at OT batch TABLE5_BATCH, and OT batch sizes at TABLE5_CACHES caches.
TABLE5_SWEEP_CACHES, TABLE5_SWEEP_BATCHES = (2, 3, 4), (32, 64, 128)
# The rows whose FID the kit follows along training (convergence in training time, paper Sec. 3.3).
TRAINING_CURVE_ROWS = ("I-CFM", "w/o saving local reassignments", "LOOM-CFM")


def sweep_label(caches: int, batch_size: int) -> str:
    """Table 5's name of a LOOM-CFM run with ``caches`` caches at OT batch ``batch_size``."""
    return f"LOOM-CFM {caches} caches bs{batch_size}"


def parse_sweep_label(label: str) -> tuple[int, int] | None:
    """(caches, OT batch) of a :func:`sweep_label`, or None for any other row name."""
    found = re.fullmatch(r"LOOM-CFM (\d+) caches bs(\d+)", label)
    return (int(found[1]), int(found[2])) if found else None


def table5_sweep(
    caches: Sequence[int], batch_sizes: Sequence[int], main_caches: int, main_batch: int
) -> list[tuple[int, int]]:
    """Table 5's sweep as (caches, OT batch): each of ``caches`` at ``main_batch``, then each of ``batch_sizes`` at
    ``main_caches``, without repeats and without the main run (main_caches, main_batch), which is LOOM-CFM's row."""
    sweep = [(c, main_batch) for c in caches] + [(main_caches, b) for b in batch_sizes]
    return [pair for pair in dict.fromkeys(sweep) if pair != (main_caches, main_batch)]


# ---------------------------------------------------------------------------------------------------------
# The released architectures and training configs (paper_setup.md, "Settings per dataset")
# ---------------------------------------------------------------------------------------------------------
# guided-diffusion UNet hyper-parameters (lib.unet.UNetConfig fields); attention_resolutions are downsample rates.
UNET_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        image_size=32,
        in_channels=3,
        out_channels=3,
        model_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(2,),
    ),
    "imagenet32": dict(
        image_size=32,
        in_channels=3,
        out_channels=3,
        model_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=3,
        attention_resolutions=(2, 4),
    ),
    "imagenet64": dict(
        image_size=64,
        in_channels=3,
        out_channels=3,
        model_channels=192,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=2,
        attention_resolutions=(4,),
    ),
    # SD kl-f8 latents (4, 32, 32) of 256 x 256 images
    "ffhq256_latent": dict(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=256,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=2,
        attention_resolutions=(2, 4, 8),
    ),
}

# The released training configs (per-GPU batch; 4 GPUs in the paper). Caches follow the paper (CIFAR-10: 4, the
# config file says 6; ImageNet-32: 1, the config says 2). FFHQ latents: the flips are in the data already
# (data_prep/ffhq_latents.py encodes every flipped image as an extra example, because flipping a latent is not
# encoding the flipped image), so no flips are added at training time.
RELEASED_CONFIGS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "dataset": "cifar10",
        "model": "cifar10",
        "flip": True,
        "batch_size": 32,
        "lr": 2e-4,
        "warmup_steps": 5000,
        "epochs": 1000,
        "caches": 4,
        "ema_decay": 0.9999,
        "sigma": 1e-7,
    },
    "imagenet32": {
        "dataset": "hdf5",
        "model": "imagenet32",
        "flip": True,
        "batch_size": 128,
        "lr": 1e-4,
        "warmup_steps": 20000,
        "epochs": 200,
        "caches": 1,
        "ema_decay": 0.9999,
        "sigma": 1e-7,
    },
    "imagenet64": {
        "dataset": "hdf5",
        "model": "imagenet64",
        "flip": True,
        "batch_size": 24,
        "lr": 1e-4,
        "warmup_steps": 20000,
        "epochs": 575,
        "caches": 1,
        "ema_decay": 0.9999,
        "sigma": 1e-7,
    },
    "ffhq256_latent": {
        "dataset": "hdf5",
        "model": "ffhq256_latent",
        "flip": False,
        "batch_size": 32,
        "lr": 2e-5,
        "warmup_steps": 3500,
        "epochs": 500,
        "caches": 4,
        "ema_decay": 0.9999,
        "sigma": 1e-7,
    },
    # Reflow (Table 1's "LOOM-CFM + 1 Reflow"): fine-tune the trained CIFAR-10 model on 10^6 fixed (noise, sample)
    # pairs (data_prep/reflow_pairs.py, pass them with --root and --init the teacher), batch 64 x 4 GPUs = 256.
    "cifar10_reflow": {
        "dataset": "hdf5",
        "model": "cifar10",
        "reflow": True,
        "coupling": "independent",
        "flip": False,
        "batch_size": 64,
        "lr": 2e-5,
        "epochs": 200,
        "caches": 1,
        "ema_decay": 0.9999,
        "sigma": 1e-7,
    },
}
PAPER_GPUS = 4  # every released config ran on 4 GPUs: the OT batch is 4 x the per-GPU batch
# The paper's one training-time figure (paper_setup.md, "Training cost reported"): CIFAR-10 ("cifar10" config, its
# released step count) on PAPER_GPUS GPUs, with LOOM's stored assignments and without them (minibatch OT-CFM).
PAPER_TRAINING_HOURS = {"config": "cifar10", "loom": 17.3, "without_stored_assignments": 13.9}
REFLOW_PAIRS = 1_000_000  # (noise, sample) pairs the released reflow model was fine-tuned on

# Images one epoch of each released config visits. The released data pipeline has length N (images): each visit
# flips the image with probability 1/2 and the flipped copy is its own example (index i + N), so an epoch is
# N // global-batch steps, not 2N // global-batch (paper_setup.md, "Epochs"). FFHQ: its 70k images, whose encoded
# flips are stored as extra examples; ImageNet: the 1,281,167 training images of the downsampled sets.
RELEASED_EPOCH_IMAGES: dict[str, int] = {
    "cifar10": 50_000,
    "imagenet32": 1_281_167,
    "imagenet64": 1_281_167,
    "ffhq256_latent": 70_000,
    "cifar10_reflow": REFLOW_PAIRS,
}


# ---------------------------------------------------------------------------------------------------------
# The five released checkpoints (Hugging Face) and how the paper evaluates them
# ---------------------------------------------------------------------------------------------------------
RELEASED_REPOS: dict[str, str] = {
    "cifar10": "cvg-unibe/loom-cfm_cifar10",
    "cifar10_reflow": "cvg-unibe/loom-cfm_cifar10_reflow",
    "imagenet32": "cvg-unibe/loom-cfm_imagenet32",
    "imagenet64": "cvg-unibe/loom-cfm_imagenet64",
    "ffhq256": "cvg-unibe/loom-cfm_ffhq256",
}
# The architecture (UNET_ARCHITECTURES key) each release must load into; the reflow model keeps CIFAR-10's.
RELEASED_PRESETS: dict[str, str] = {
    "cifar10": "cifar10",
    "cifar10_reflow": "cifar10",
    "imagenet32": "imagenet32",
    "imagenet64": "imagenet64",
    "ffhq256": "ffhq256_latent",
}


@dataclass(frozen=True)
class PaperEvaluation:
    """How the paper evaluates one release: the table and the (dataset, method) of its rows in paper_results.csv,
    the solvers at the paper's NFE, and the resolution of the images its FID compares (FFHQ: decoded 256 x 256
    images, not the 32 x 32 latents)."""

    table: str
    dataset: str
    method: str
    solvers: tuple[str, ...]
    resolution: int

    @property
    def grid_solver(self) -> str:
        """The most accurate fixed-grid solver of the evaluation (for sample grids)."""
        return [s for s in self.solvers if s != "dopri5"][-1]


NFE_4_8_12 = ("midpoint-2", "midpoint-4", "midpoint-6", "dopri5")  # midpoint-k costs 2k network calls
PAPER_EVALUATION: dict[str, PaperEvaluation] = {
    "cifar10": PaperEvaluation("1", "cifar10", "LOOM-CFM", NFE_4_8_12, 32),
    # The paper reports the reflow model at 1 and 2 NFE without naming the 2-NFE solver: both 2-NFE grids.
    "cifar10_reflow": PaperEvaluation("1", "cifar10", "LOOM-CFM + 1 Reflow", ("euler-1", "euler-2", "midpoint-1"), 32),
    "imagenet32": PaperEvaluation("2", "imagenet32", "LOOM-CFM", NFE_4_8_12, 32),
    "imagenet64": PaperEvaluation("2", "imagenet64", "LOOM-CFM", NFE_4_8_12, 64),
    "ffhq256": PaperEvaluation(
        "3", "ffhq256_latent", "LOOM-CFM", ("midpoint-1", "midpoint-2", "midpoint-4", "dopri5"), 256
    ),
}
# The paper's FID (released evaluation code): torcheval, reference images of the test/validation split drawn with
# replacement by a RandomSampler seeded with 42, 10,000 draws from CIFAR-10's 10,000 test images, 50,000 from the
# validation split elsewhere: as many draws as the split has images, at most 50,000.
FID_REFERENCE_SEED = 42
FID_MAX_REFERENCE = 50_000
# Names the kit uses for a dataset besides paper_results.csv's (release names, data-prep names).
DATASET_ALIASES: dict[str, str] = {
    **{name: spec.dataset for name, spec in PAPER_EVALUATION.items()},
    "ffhq": "ffhq256_latent",
}


def paper_dataset(name: str) -> str:
    """A release, data-prep or paper dataset name -> the dataset name of paper_results.csv."""
    return DATASET_ALIASES.get(name, name)


# ---------------------------------------------------------------------------------------------------------
# The released implementation's coupling step, measured beside the kit (official_measurements.md; never re-run here:
# the released code is GPL-3.0 and is not copied into the kit)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleasedStepTiming:
    """One measured range of the released seed-cached OT coupling's step (ms), in RELEASED_COUPLING_SETTING."""

    measured: str
    torch_threads: int
    low_ms: float
    high_ms: float


RELEASED_COUPLING_SETTING: dict[str, Any] = {
    "batch_size": 128,
    "shape": (3, 32, 32),
    "num_examples": 50_000,
    "caches": 1,
}
RELEASED_COUPLING_STEP: tuple[ReleasedStepTiming, ...] = (
    ReleasedStepTiming("released LOOM coupling step, loaded 2-core machine", 1, 870.0, 1050.0),
    ReleasedStepTiming("released LOOM coupling step, loaded 2-core machine", 2, 710.0, 960.0),
    ReleasedStepTiming("released LOOM coupling step, idle machine (earlier measurement)", 2, 322.0, 322.0),
)
