"""What a profile will do, before any of it runs: ``python -m lib.kit.reproduce --profile paper --plan``.

Per notebook and training run: optimiser steps, global batch, GPUs, precision, estimated GPU-hours and disk; per
notebook the data and downloads it needs and whether each is present here; then the totals. Nothing is trained,
downloaded or written.

Steps come from the notebook's parameters (the profile's overrides of its committed parameters cell) exactly as the
notebook builds its runs (lib.experiments.pipeline's rows and Table 5 grid, lib.train's epochs). GPU-hours are
images trained / images per second of one GPU, and every estimate names its source:

- ``measured``: the released architecture's training step timed by ``make gpu-check`` on a GPU
  (``results/gpu/gpu_check/gpu.json``, images/s in fp32 and bf16 autocast), times LOOM's measured pipelined
  overhead for runs that pair (LOOM, minibatch OT);
- ``paper``: otherwise, the paper's CIFAR-10 training time (lib.paper.PAPER_TRAINING_HOURS: 17.3 h on 4 GPUs with
  stored assignments, 13.9 h without), scaled to other architectures by their forward FLOPs per image (counted by
  torch on the meta device, no weights made); the paper's GPUs are not named, and bf16 is assumed no faster.

Both rates hold at the released per-GPU batch; a run at a smaller one (Table 5's OT batches 32 and 64) keeps the
GPU less busy, so its estimate says it is likely low.

FID sampling, reflow pair generation and the other evaluation work are not in the GPU-hours (the plan lists them).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from lib import REPO_ROOT
from lib.checkpoints import build_model, fetch_released
from lib.experiments import pipeline
from lib.kit.notebooks import NOTEBOOKS
from lib.kit.profiles import notebook_defaults
from lib.kit.results import published_root
from lib.paper import (
    PAPER_GPUS,
    PAPER_TRAINING_HOURS,
    RELEASED_CONFIGS,
    RELEASED_EPOCH_IMAGES,
    RELEASED_PRESETS,
    RELEASED_REPOS,
    TRAINING_CURVE_ROWS,
)
from lib.train import TrainSettings, steps_for_epochs
from lib.unet import PRESETS

GB = 1e9
CIFAR10_IMAGES = RELEASED_EPOCH_IMAGES["cifar10"]
# Each architecture's per-GPU batch in its released config: the batch its throughput is known at.
RELEASED_BATCH = {c["model"]: c["batch_size"] for c in RELEASED_CONFIGS.values() if not c.get("reflow")}
# Sizes of what the paper profile downloads or is given by hand (README "Setup, downloads"; FFHQ: its own README).
CIFAR10_DOWNLOAD_BYTES = 170e6
INCEPTION_BYTES = 104e6  # torchvision's Inception-v3 weights, the paper's FID protocol
SD_VAE_BYTES = 335e6  # stabilityai/sd-vae-ft-mse
FFHQ_1024_BYTES = 89.1e9  # FFHQ images1024x1024
SD_VAE = "stabilityai/sd-vae-ft-mse"


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a notebook and what it costs."""

    notebook: str
    run: str  # the paper row it trains
    model: str  # lib.unet preset
    coupling: str
    steps: int
    global_batch: int
    gpus: int
    bf16: bool
    gpu_hours: float
    source: str  # where the GPU-hours come from
    disk_bytes: float  # checkpoint.pt and its kept copies


@dataclass(frozen=True)
class Need:
    """Data, weights or a download a notebook needs, and whether it is here."""

    notebook: str
    what: str
    where: str  # a path (relative to the repository) or a Hugging Face repository
    size_bytes: float | None
    how: str  # how it gets there
    present: bool
    written: bool = False  # made by the notebook itself (data_prep): disk it writes, not a download


@dataclass(frozen=True)
class Throughput:
    """Images per second of one GPU training an architecture, and where the number comes from."""

    images_per_s: float
    source: str


# ---------------------------------------------------------------------------------------------------------
# Cost of a run: steps, GPU-hours, disk
# ---------------------------------------------------------------------------------------------------------
@functools.cache
def architecture(preset: str) -> tuple[int, float]:
    """(parameters, forward FLOPs per image) of a lib.unet preset, counted on the meta device (no weights made)."""
    config = PRESETS[preset]
    with torch.device("meta"):
        model = build_model(preset, ())
        x = torch.zeros(1, config.in_channels, config.image_size, config.image_size)
        t = torch.zeros(1)
    with FlopCounterMode(display=False) as counter:
        model(x, t)
    return sum(p.numel() for p in model.parameters()), float(counter.get_total_flops())


def read_measured(root: Path) -> dict[str, Any] | None:
    """The summary of ``make gpu-check`` (``<results>/gpu/gpu_check/gpu.json``) if it has run, else None."""
    path = root / "gpu" / "gpu_check" / "gpu.json"
    return json.loads(path.read_text()) if path.is_file() else None


def throughput(preset: str, coupling: str, bf16: bool, measured: Mapping[str, Any] | None) -> Throughput:
    """One GPU's training images/s for ``preset`` under ``coupling`` (:func:`coupling_cost`), in bf16 or not:
    measured by gpu-check where it has this architecture, else the paper's CIFAR-10 time scaled by FLOPs."""
    pairs = coupling != "none"
    summary = (measured or {}).get("summary", {})
    rates = summary.get("architecture_images_per_s", {}).get(preset, {})
    precision = "bf16" if bf16 else "fp32"
    if rates.get(precision):
        overhead = (summary.get("loom_pipelined_over_independent") or 1.0) if pairs else 1.0
        gpu = measured.get("gpu_model") if measured else None
        note = f", x{overhead:.2f} LOOM pipelined" if pairs and overhead != 1.0 else ""
        return Throughput(rates[precision] / overhead, f"measured: gpu-check on {gpu}, {precision}{note}")
    hours = PAPER_TRAINING_HOURS["loom" if coupling == "loom" else "without_stored_assignments"]
    config = PAPER_TRAINING_HOURS["config"]
    paper_images = steps_for_epochs(
        RELEASED_CONFIGS[config]["epochs"],
        RELEASED_EPOCH_IMAGES[config],
        RELEASED_CONFIGS[config]["batch_size"] * PAPER_GPUS,
    ) * (RELEASED_CONFIGS[config]["batch_size"] * PAPER_GPUS)
    rate = paper_images / (hours * 3600 * PAPER_GPUS)
    ratio = architecture(preset)[1] / architecture(RELEASED_CONFIGS[config]["model"])[1]
    scaled = f", x{ratio:.2f} FLOPs/image" if preset != RELEASED_CONFIGS[config]["model"] else ""
    bound = "at most " if coupling == "none" else ""  # no assignment at all: the paper's time without stored ones
    return Throughput(rate / ratio, f"paper: {config} {bound}{hours} h on {PAPER_GPUS} GPUs{scaled}")


def coupling_cost(settings: TrainSettings) -> str:
    """Which paper timing a run's coupling has: "loom" (LOOM stores its assignments: 17.3 h), "assignment" (minibatch
    OT: 13.9 h, the paper's run without stored assignments) or "none" (independent, fixed noise: no assignment)."""
    if settings.coupling == "loom" and not settings.no_swaps:
        return "loom"
    return "assignment" if settings.coupling == "minibatch_ot" else "none"


def checkpoint_bytes(preset: str, examples: int, caches: int) -> float:
    """A training checkpoint's size: weights, EMA and Adam's two moments in fp32, and LOOM's int64 seed table."""
    return architecture(preset)[0] * 4 * 4 + examples * caches * 8


def plan_run(
    notebook: str,
    row: str,
    settings: TrainSettings,
    examples: int,
    nproc: int,
    measured: Mapping[str, Any] | None,
) -> PlannedRun:
    """The cost of training ``settings`` (a notebook's row) on ``examples`` images per epoch (flips counted apart
    for the seed table) with ``nproc`` GPUs."""
    global_batch = settings.train.batch_size * nproc
    steps = steps_for_epochs(settings.epochs, examples, global_batch) if settings.epochs else settings.train.steps
    rate = throughput(settings.model, coupling_cost(settings), settings.train.bf16, measured)
    released = RELEASED_BATCH.get(settings.model)
    if released and settings.train.batch_size < released:  # a GPU is busier at the batch the rate was taken at
        smaller = f"per-GPU batch {settings.train.batch_size} < {released}: likely more"
        rate = replace(rate, source=f"{rate.source}; {smaller}")
    keep = settings.train.keep_checkpoints_every
    copies = 1 + (steps // keep if keep else 0)
    seeds = examples * (2 if settings.flip else 1) if settings.coupling == "loom" else 0
    return PlannedRun(
        notebook=notebook,
        run=row,
        model=settings.model,
        coupling=settings.coupling,
        steps=steps,
        global_batch=global_batch,
        gpus=nproc,
        bf16=settings.train.bf16,
        gpu_hours=steps * global_batch / rate.images_per_s / 3600,
        source=rate.source,
        disk_bytes=copies * checkpoint_bytes(settings.model, seeds, settings.caches),
    )


def rows_settings(
    rows: list[str], settings: TrainSettings, nproc: int, keep_rows: tuple[str, ...] | None = None
) -> dict[str, TrainSettings]:
    """Each row's settings as pipeline.train_rows builds them (kept copies only for ``keep_rows``)."""
    chosen = {}
    for row in rows:
        row_settings = pipeline.row_settings(row, settings, Path("runs"), nproc)
        if keep_rows is not None and row not in keep_rows:
            row_settings = replace(row_settings, train=replace(row_settings.train, keep_checkpoints_every=0))
        chosen[row] = row_settings
    return chosen


# ---------------------------------------------------------------------------------------------------------
# What is needed and whether it is here
# ---------------------------------------------------------------------------------------------------------
def repo_path(path: str) -> Path:
    return REPO_ROOT / path


def released_present(name: str) -> bool:
    """Whether release ``name`` is in the Hugging Face cache (no network)."""
    try:
        fetch_released(name, offline=True)
    except (FileNotFoundError, OSError, ValueError):
        return False
    return True


def hub_present(repo: str) -> bool:
    """Whether a Hugging Face repository's config is in the cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def inception_need(notebook: str) -> Need:
    """torchvision's Inception weights, which the paper's FID protocol loads (into the torch hub cache)."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return Need(
        notebook,
        "torchvision Inception-v3 weights (paper FID protocol)",
        str(folder / "inception_v3_google-0cc3c7bd.pth"),
        INCEPTION_BYTES,
        "downloaded on first FID, or python data_prep/cifar10.py --root data",
        (folder / "inception_v3_google-0cc3c7bd.pth").is_file(),
    )


def cifar10_need(notebook: str, root: str) -> Need:
    return Need(
        notebook,
        "CIFAR-10",
        f"{root}/cifar-10-batches-py",
        CIFAR10_DOWNLOAD_BYTES,
        f"python data_prep/cifar10.py --root {root}",
        (repo_path(root) / "cifar-10-batches-py").is_dir(),
    )


def shards_need(notebook: str, what: str, folder: str, size: float, how: str) -> Need:
    """HDF5 shards a notebook makes with a data_prep script (present: its manifest is there)."""
    present = any(repo_path(folder).rglob("manifest.json")) if repo_path(folder).is_dir() else False
    return Need(notebook, what, folder, size, how, present, written=True)


# ---------------------------------------------------------------------------------------------------------
# The notebooks that train (their parameters -> runs and needs); the others are listed with their runtime
# ---------------------------------------------------------------------------------------------------------
def image_settings(p: Mapping[str, Any], **data: Any) -> TrainSettings:
    """The TrainSettings an image notebook builds from its parameters (05-07's settings cell)."""
    train = pipeline.notebook_train_config(p)
    return TrainSettings(model=p["MODEL"], caches=p["CACHES"], epochs=p["EPOCHS"], train=train, **data)


def plan_cifar10(name: str, p: Mapping[str, Any], measured: Any) -> tuple[list[PlannedRun], list[Need]]:
    settings = image_settings(p, dataset="cifar10", root=p["DATA_ROOT"], flip=True)
    grid = pipeline.table5_grid(p["GRID_CACHES"], p["GRID_BATCH_SIZES"], settings, p["NPROC"])
    rows = rows_settings(p["ROWS"] + grid, settings, p["NPROC"], TRAINING_CURVE_ROWS)
    runs = [plan_run(name, row, s, CIFAR10_IMAGES, p["NPROC"], measured) for row, s in rows.items()]
    return runs, [cifar10_need(name, p["DATA_ROOT"]), inception_need(name)]


def plan_imagenet(name: str, p: Mapping[str, Any], measured: Any) -> tuple[list[PlannedRun], list[Need]]:
    resolution = p["RESOLUTION"]
    settings = image_settings(p, dataset="hdf5", root=p["SHARDS_DIR"], flip=True, resolution=resolution)
    images = RELEASED_EPOCH_IMAGES[f"imagenet{resolution}"]
    rows = rows_settings(p["ROWS"], settings, p["NPROC"], TRAINING_CURVE_ROWS)
    runs = [plan_run(name, row, s, images, p["NPROC"], measured) for row, s in rows.items()]
    pixels = 3 * resolution * resolution
    needs = [
        Need(
            name,
            f"ImageNet {resolution}x{resolution} (official downsampled .npz batches)",
            p["SOURCE"],
            images * pixels,
            "by hand from image-net.org (an account): README step 1",
            repo_path(p["SOURCE"]).is_dir(),
        ),
        shards_need(
            name, "its HDF5 shards", p["SHARDS_DIR"], (images + 50_000) * pixels, "data_prep/imagenet.py (notebook)"
        ),
        inception_need(name),
    ]
    return runs, needs


def plan_ffhq(name: str, p: Mapping[str, Any], measured: Any) -> tuple[list[PlannedRun], list[Need]]:
    settings = image_settings(p, dataset="hdf5", root=p["LATENTS_DIR"])
    images = RELEASED_EPOCH_IMAGES["ffhq256_latent"]
    rows = rows_settings(p["ROWS"], settings, p["NPROC"])
    # The latents hold each image and its encoded flip as two examples; an epoch visits each image once.
    runs = [plan_run(name, row, s, images, p["NPROC"], measured) for row, s in rows.items()]
    latent = PRESETS[p["MODEL"]]
    needs = [
        Need(
            name,
            "FFHQ images (1024x1024)",
            p["IMAGES_DIR"],
            FFHQ_1024_BYTES,
            "by hand (github.com/NVlabs/ffhq-dataset)",
            repo_path(p["IMAGES_DIR"]).is_dir(),
        ),
        Need(
            name,
            "Stable Diffusion kl-f8 autoencoder",
            p["AUTOENCODER"],
            SD_VAE_BYTES,
            "Hugging Face hub, on first use",
            hub_present(p["AUTOENCODER"]),
        ),
        shards_need(
            name,
            "its latent shards (float32, with encoded flips)",
            p["LATENTS_DIR"],
            2 * images * latent.in_channels * latent.image_size**2 * 4,
            "data_prep/ffhq_latents.py (notebook)",
        ),
        inception_need(name),
    ]
    return runs, needs


def plan_reflow(name: str, p: Mapping[str, Any], measured: Any) -> tuple[list[PlannedRun], list[Need]]:
    teacher = p["TEACHER"]
    train = pipeline.notebook_train_config(p, steps="REFLOW_STEPS", batch_size="REFLOW_BATCH_SIZE", lr="REFLOW_LR")
    model = "cifar10" if teacher else p["TEACHER_MODEL"]  # released:cifar10 and a kit CIFAR-10 run: the cifar10 UNet
    settings = TrainSettings(model=model, reflow=True, coupling="independent", epochs=p["REFLOW_EPOCHS"], train=train)
    runs = [plan_run(name, "LOOM-CFM + 1 Reflow", settings, p["NUM_PAIRS"], p["NPROC"], measured)]
    needs = [cifar10_need(name, p["DATA_ROOT"]), inception_need(name)]
    if teacher.startswith("released:"):
        release = teacher.split(":", 1)[1]
        params = architecture(RELEASED_PRESETS[release])[0]
        needs.insert(
            0,
            Need(
                name,
                f"the teacher ({teacher})",
                RELEASED_REPOS[release],
                params * 4.0,
                "Hugging Face hub, on first use",
                released_present(release),
            ),
        )
    pixels = 3 * 32 * 32
    needs.append(
        Need(
            name,
            f"{p['NUM_PAIRS']:,} reflow pairs from the teacher ({p['PAIR_SOLVER']}; GPU sampling, not in the hours)",
            "runs/paper/08_reflow/pairs",
            p["NUM_PAIRS"] * (pixels + 8),
            "data_prep/reflow_pairs.py (notebook)",
            False,
            written=True,
        )
    )
    return runs, needs


def plan_releases(name: str, p: Mapping[str, Any], measured: Any) -> tuple[list[PlannedRun], list[Need]]:
    needs = [
        Need(
            name,
            f"released checkpoint {release}",
            repo,
            architecture(RELEASED_PRESETS[release])[0] * 4.0,
            "Hugging Face hub, on first use",
            released_present(release),
        )
        for release, repo in RELEASED_REPOS.items()
    ]
    return [], [*needs, inception_need(name)]


PLANNERS: dict[str, Callable[[str, Mapping[str, Any], Any], tuple[list[PlannedRun], list[Need]]]] = {
    "05_cifar10": plan_cifar10,
    "06_imagenet": plan_imagenet,
    "07_ffhq_latent": plan_ffhq,
    "08_reflow": plan_reflow,
    "11_released_checkpoints": plan_releases,
}


def plan_profile(
    notebooks: Mapping[str, Mapping[str, Any]], results: Path | None = None
) -> tuple[list[PlannedRun], list[Need]]:
    """Runs and needs of a profile's notebooks ({name: overrides}, lib.kit.profiles.load_profile)."""
    measured = read_measured(results or published_root())
    runs: list[PlannedRun] = []
    needs: list[Need] = []
    for name, overrides in notebooks.items():
        if name in PLANNERS:
            more_runs, more_needs = PLANNERS[name](name, {**notebook_defaults(name), **overrides}, measured)
            runs += more_runs
            needs += more_needs
    return runs, needs


# ---------------------------------------------------------------------------------------------------------
# The printed plan
# ---------------------------------------------------------------------------------------------------------
def show_bytes(size: float | None) -> str:
    if size is None:
        return "?"
    return f"{size / GB:,.1f} GB" if size >= 0.1 * GB else f"{size / 1e6:,.0f} MB"


def format_plan(profile: str, notebooks: Mapping[str, Mapping[str, Any]], results: Path | None = None) -> str:
    """The plan as printed: per notebook its runs and needs, then the totals and what is missing."""
    runs, needs = plan_profile(notebooks, results)
    lines = [f"plan of profile {profile}: nothing below has run; GPU-hours are training only (sources in brackets)"]
    for name in notebooks:
        info = NOTEBOOKS[name]
        mine = [r for r in runs if r.notebook == name]
        wanted = [n for n in needs if n.notebook == name]
        lines.append(f"\n{name} ({info.device}; {info.paper_runtime})")
        for r in mine:
            lines.append(
                f"  {r.run:<36} {r.steps:>11,} steps x {r.global_batch:>4} on {r.gpus} GPU(s) "
                f"{'bf16' if r.bf16 else 'fp32'}: {r.gpu_hours:>8,.1f} GPU-h "
                f"({r.gpu_hours / r.gpus:,.1f} h on {r.gpus}), disk {show_bytes(r.disk_bytes)}  [{r.source}]"
            )
        for n in wanted:
            state = "present" if n.present else "MISSING"
            lines.append(f"  needs {n.what}: {n.where} ({show_bytes(n.size_bytes)}) {state}; {n.how}")
        if not mine and not wanted:
            lines.append("  no GPU training, no downloads")
    gpu_hours = sum(r.gpu_hours for r in runs)
    disk = sum(r.disk_bytes for r in runs) + sum(n.size_bytes or 0 for n in needs if n.written)
    downloads = {n.where: n for n in needs if not n.written}  # one entry per thing, not per notebook that needs it
    missing = [n for n in downloads.values() if not n.present]
    lines += [
        f"\ntotal: {len(runs)} training runs, {sum(r.steps for r in runs):,} steps, {gpu_hours:,.0f} GPU-hours "
        f"({gpu_hours / PAPER_GPUS / 24:,.1f} days on {PAPER_GPUS} GPUs); written: {show_bytes(disk)} "
        f"(checkpoints, shards, pairs); given or downloaded: "
        f"{show_bytes(sum(n.size_bytes or 0 for n in downloads.values()))}",
        f"missing here: {', '.join(f'{n.what} ({n.where})' for n in missing) or 'nothing'}",
    ]
    return "\n".join(lines)
