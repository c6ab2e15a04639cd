"""Image experiments as the notebooks run them: data on disk -> torchrun training -> FID rows beside the paper.

Training always goes through the same entry point users launch by hand (``torchrun -m lib.train``), as a
subprocess, from a typed :class:`lib.train.TrainSettings`, so a notebook on one CPU and a run on 8 GPUs exercise
the same code. The figures of these steps are drawn by lib.kit.figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lib import REPO_ROOT
from lib.checkpoints import RELEASED_PREFIX, LoadedModel, kept_checkpoints, load_model
from lib.datasets import IndexedImages
from lib.evaluate import fid_rows, path_curvature
from lib.experiments.convergence import ConvergenceSetting, converge_table, subset_gaps
from lib.fabricate import FAKE_NOTE
from lib.fid import DEFAULT_PROTOCOL, PAPER_PROTOCOL, check_protocol, feature_network
from lib.paper import (
    COUPLING_ROWS,
    PAPER_EVALUATION,
    paper_rows,
    parse_sweep_label,
    same_setting,
    sweep_label,
    table5_sweep,
)
from lib.sample import generate, noise_for_images, to_images
from lib.solvers import parse_solver
from lib.train import TrainSettings, named_settings


class TrainingFailed(RuntimeError):
    """lib.train exited with an error: the message carries the command and the end of its output."""


class ScriptFailed(RuntimeError):
    """A data_prep script exited with an error: the message carries the command and the end of its output."""


# The image notebooks' (05-08) parameters for lib.train's settings: errors name these, not the command line's flags.
NOTEBOOK_PARAMETERS: dict[str, str] = {
    "steps": "STEPS",
    "epochs": "EPOCHS",
    "batch_size": "BATCH_SIZE",
    "lr": "LR",
    "warmup_steps": "WARMUP_STEPS",
    "ema_decay": "EMA_DECAY",
    "seed": "SEED",
    "bf16": "BF16",
    "checkpoint_every": "CHECKPOINT_EVERY",
    "keep_checkpoints_every": "KEEP_CHECKPOINTS_EVERY",
    "caches": "CACHES",
    "model": "MODEL",
    "resolution": "RESOLUTION",
}


def notebook_parameters(**names: str) -> contextlib.AbstractContextManager[None]:
    """Errors about lib.train settings built inside the block name the notebook's parameters
    (:data:`NOTEBOOK_PARAMETERS`, with ``names`` for a notebook's own, e.g. ``steps="TEACHER_STEPS"``)."""
    return named_settings({**NOTEBOOK_PARAMETERS, **names})


def launch_training(settings: TrainSettings, nproc: int = 1, timeout_s: float | None = None) -> Path:
    """Run ``torchrun --nproc_per_node=nproc -m lib.train <settings>`` (plain ``python -m lib.train`` for one
    process). Resumes by itself when ``<settings.out>/checkpoint.pt`` exists. Returns the checkpoint path."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    # The progress bar would only fill the captured output.
    argv = replace(settings, train=replace(settings.train, progress=False)).to_argv()
    command = [sys.executable, *launcher, "-m", "lib.train", *argv]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise TrainingFailed(f"{' '.join(command)}\nexited with {done.returncode}:\n{done.stderr[-4000:]}")
    return Path(settings.out) / "checkpoint.pt"


def run_script(script: str, argv: Sequence[str], timeout_s: float | None = None) -> str:
    """Run ``python <script> <argv>`` from the repository, as a user runs the data_prep scripts -> its stdout."""
    command = [sys.executable, script, *map(str, argv)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise ScriptFailed(f"{' '.join(command)}\nexited with {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


def side_by_side(ours: list[Mapping[str, Any]], paper: list[Mapping[str, str]]) -> list[dict[str, Any]]:
    """Join our rows {method, solver, nfe, fid} with the paper's on (method, solver, NFE) (lib.paper.same_setting)."""
    rows = []
    for row in ours:
        match = [p for p in paper if p["method"] == row["method"] and same_setting(p, row["solver"], row["nfe"])]
        rows.append(
            {
                **row,
                "paper_fid": float(match[0]["fid"]) if match else None,
                "paper_nfe": match[0]["nfe"] if match else None,
                "paper_provenance": match[0]["provenance"] if match else None,
            }
        )
    return rows


def source_digest() -> str:
    """A digest of lib's source code: a training run is reused only by the code that made it."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "lib").rglob("*.py")):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def keyed(settings: TrainSettings, folder: Path) -> TrainSettings:
    """``settings`` writing to ``<folder>-<key>``, the key a digest of the settings (the run folder aside) and of
    lib's code: a rerun resumes or reuses a finished run only when both are the same, and trains afresh otherwise
    (``runs/`` keeps the older runs; delete them at will)."""
    described = json.dumps({**asdict(replace(settings, out="")), "code": source_digest()}, sort_keys=True)
    return replace(settings, out=f"{folder}-{hashlib.sha256(described.encode()).hexdigest()[:10]}")


def run_name(row: str) -> str:
    """A folder name for a table row: 'w/o saving local reassignments' -> 'wo_saving_local_reassignments'."""
    return "_".join("".join(c for c in word if c.isalnum()) for word in row.lower().split()).strip("_")


def read_history(checkpoint: Path) -> list[dict[str, float]]:
    """The loss / swaps / cost records lib.train wrote beside ``checkpoint`` (history.json)."""
    return json.loads((checkpoint.parent / "history.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# The steps every image notebook takes: train the rows, evaluate
# ---------------------------------------------------------------------------------------------------------
def row_settings(row: str, settings: TrainSettings, runs: Path, nproc: int = 1) -> TrainSettings:
    """``settings`` with the coupling switches of paper row ``row``, run in ``runs/<run_name(row)>-<key>``
    (:func:`keyed`): a row of lib.paper.COUPLING_ROWS, or a Table 5 sweep row (lib.paper.sweep_label, "LOOM-CFM 2
    caches bs128": LOOM with those caches at that OT batch, split over ``nproc`` processes)."""
    sweep = parse_sweep_label(row)
    if sweep is not None:
        caches, ot_batch = sweep
        if ot_batch % nproc:
            raise ValueError(f"{row}: OT batch {ot_batch} does not split over {nproc} processes; change NPROC")
        swept = replace(
            settings,
            coupling="loom",
            caches=caches,
            no_swaps=False,
            train=replace(settings.train, batch_size=ot_batch // nproc, converge_first=False),
        )
        return keyed(swept, runs / run_name(row))
    if row not in COUPLING_ROWS:
        raise ValueError(
            f"unknown row {row!r}; rows are {sorted(COUPLING_ROWS)} or a {sweep_label(4, 128)!r} sweep row"
        )
    spec = COUPLING_ROWS[row]
    switched = replace(
        settings,
        coupling=spec.coupling,
        caches=settings.caches if spec.coupling == "loom" else 1,  # a table's caches do not apply to other couplings
        no_swaps=spec.no_swaps,
        train=replace(settings.train, converge_first=spec.converge_first),
    )
    return keyed(switched, runs / run_name(row))


def table5_grid(
    caches: Sequence[int], batch_sizes: Sequence[int], settings: TrainSettings, nproc: int = 1
) -> list[str]:
    """Table 5's sweep rows around the LOOM-CFM run of ``settings`` (its caches, OT batch = batch x ``nproc``):
    each of ``caches`` at that OT batch and each OT batch of ``batch_sizes`` at its caches (lib.paper.table5_sweep),
    as row names for :func:`train_rows`."""
    main = (settings.caches, settings.train.batch_size * nproc)
    return [sweep_label(c, b) for c, b in table5_sweep(caches, batch_sizes, *main)]


def train_rows(
    rows: Sequence[str],
    settings: TrainSettings,
    runs: Path,
    nproc: int = 1,
    keep_rows: Collection[str] | None = None,
) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """Train one model per paper row (:func:`row_settings`; a rerun resumes) -> (checkpoint by row, training history
    rows with "method"). ``keep_rows``: only these rows keep step-numbered checkpoint copies
    (``settings.train.keep_checkpoints_every``; a full checkpoint each, so not every row of a grid), None: all."""
    checkpoints: dict[str, Path] = {}
    history: list[dict[str, Any]] = []
    for row in rows:
        chosen = row_settings(row, settings, runs, nproc)
        if keep_rows is not None and row not in keep_rows:
            chosen = replace(chosen, train=replace(chosen.train, keep_checkpoints_every=0))
        checkpoints[row] = launch_training(chosen, nproc)
        history += [{"method": row, **record} for record in read_history(checkpoints[row])]
    return checkpoints, history


def eval_targets(eval_checkpoint: str, repo: Path = REPO_ROOT) -> dict[str, str | Path]:
    """``EVAL_CHECKPOINT`` -> {row name: what lib.checkpoints.load_model takes}: ``released:<name>`` is passed on
    (fetched through huggingface_hub), a path is taken relative to the repository."""
    if eval_checkpoint.startswith(RELEASED_PREFIX):
        return {eval_checkpoint[len(RELEASED_PREFIX) :]: eval_checkpoint}
    return {Path(eval_checkpoint).stem: repo / eval_checkpoint}


def fid_table(
    models: Mapping[str, LoadedModel],
    solvers: Sequence[str],
    num_samples: int,
    reference: str,
    paper: list[dict[str, str]],
    *,
    seed: int,
    device: str,
    features: str = "inception",
    dataset_res: int | None = 32,
    dataset_split: str = "train",
    protocol: str = DEFAULT_PROTOCOL,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """FID of every model at every solver under the named ``protocol`` of lib.fid (true NFE checked against the
    grid) -> (our rows, rows joined with the paper's). ``features="random"`` scores with lib.fid's random
    stand-in network: offline, not comparable. ``dataset_res`` / ``dataset_split`` pick clean-fid's
    precomputed statistics of a named dataset (cifar10 32 train, ffhq 256 trainval70k); the generated images
    must have that size (None: any size). ``paper-torcheval`` references are split images (CIFAR-10 root, HDF5
    shards, image folder); relative paths are taken from the repository, like the notebooks' parameters."""
    extractor = feature_network(features, check_protocol(protocol))  # both checked before any sampling
    if protocol == PAPER_PROTOCOL:
        reference = str(REPO_ROOT / reference)  # an absolute reference stays as it is
    ours: list[dict[str, Any]] = []
    for name, loaded in models.items():
        ours += [
            {"method": name, **row}
            for row in fid_rows(
                loaded,
                solvers,
                num_samples,
                reference,
                seed=seed,
                device=device,
                batch_size=min(250, num_samples),
                dataset_res=dataset_res,
                dataset_split=dataset_split,
                feature_extractor=extractor,
                protocol=protocol,
            )
        ]
    for row in ours:
        expected = parse_solver(row["solver"]).expected_nfe
        if expected is not None and row["nfe"] != expected:  # midpoint-k must cost 2k network calls
            raise RuntimeError(
                f"{row['method']} {row['solver']}: counted {row['nfe']} network calls, expected {expected}"
            )
    return ours, side_by_side(ours, paper)


def fid_vs_step(
    checkpoints: Mapping[str, Path],
    solver: str,
    num_samples: int,
    reference: str,
    *,
    seed: int,
    device: str,
    features: str = "inception",
    dataset_res: int | None = 32,
    dataset_split: str = "train",
    protocol: str = DEFAULT_PROTOCOL,
) -> list[dict[str, Any]]:
    """FID along training (convergence in training time): every copy lib.train kept of each row's checkpoint
    (``--keep-checkpoints-every``, lib.checkpoints.kept_checkpoints) at one ``solver`` -> rows {method, step, solver,
    nfe, fid, protocol...}, by row then step. Every snapshot samples the same noise (``seed``)."""
    rows: list[dict[str, Any]] = []
    for name, checkpoint in checkpoints.items():
        for step, path in kept_checkpoints(checkpoint).items():
            ours, _ = fid_table(
                {name: load_model(path)},
                [solver],
                num_samples,
                reference,
                [],
                seed=seed,
                device=device,
                features=features,
                dataset_res=dataset_res,
                dataset_split=dataset_split,
                protocol=protocol,
            )
            rows += [{"method": name, "step": step, **{k: v for k, v in r.items() if k != "method"}} for r in ours]
    return rows


def gap_at_scale(
    data: IndexedImages,
    setting: ConvergenceSetting,
    subset_sizes: Sequence[int],
    repeats: int,
    device: str,
) -> tuple[list[dict[str, float]], list[dict[str, Any]]]:
    """The reviewers' "how far from the global optimum" on an image dataset: converge a seed table over all of
    ``data``'s examples (flipped copies included) without training, then the gap of the initial and the converged
    table on random subsets of their slots (lib.experiments.convergence) -> (convergence history per epoch, gap
    rows {table, size, repeat, cost, optimum, gap})."""

    def fetch(index: Tensor) -> Tensor:
        return data.get_batch(index)[1].to(device)

    loom, initial, history = converge_table(len(data), fetch, setting)
    tables = {"initial": initial, "converged": loom.seeds}
    return history, subset_gaps(tables, fetch, subset_sizes, repeats, setting.cost, setting.seed + 2)


def curvature_rows(
    models: Mapping[str, LoadedModel], num_paths: int, seed: int, device: str, steps: int = 20
) -> list[dict[str, Any]]:
    """Paper Fig. 4: 1 - cos of consecutive velocities along ``steps``-step Euler paths from the same noise
    for every model -> rows {method, step, curvature}."""
    rows: list[dict[str, Any]] = []
    for name, loaded in models.items():
        z = noise_for_images(loaded, seed, num_paths, device)
        per_step = path_curvature(loaded.model.to(device), z, steps=steps)
        rows += [{"method": name, "step": i + 1, "curvature": float(c)} for i, c in enumerate(per_step)]
    return rows


def evaluate_releases(
    models: Mapping[str, LoadedModel],
    num_samples: int,
    references: Mapping[str, str],
    splits: Mapping[str, str],
    *,
    seed: int,
    device: str,
    features: str = "inception",
    fake: bool = False,
    protocol: str = DEFAULT_PROTOCOL,
) -> list[dict[str, Any]]:
    """FID of each release in ``models`` (name -> loaded) at its paper solvers (lib.paper.PAPER_EVALUATION),
    through :func:`fid_table` as our own runs are, joined with its paper rows.

    references / splits: by paper dataset (cifar10, imagenet32, imagenet64, ffhq256_latent), the FID reference
    (clean-fid dataset name, custom stats name or image folder; for protocol paper-torcheval the split's images:
    CIFAR-10 root, HDF5 validation shards or image folder) and a named dataset's split (default "train").
    fake: files of lib.fabricate.write_fake_release: images of any size, every row labelled FAKE_NOTE.
    Returns rows {dataset, release, method, solver, nfe, fid, protocol..., paper_fid, paper_nfe, paper_provenance,
    release_weights}, the method named as the paper's row ("LOOM-CFM", "LOOM-CFM + 1 Reflow").
    """
    missing = sorted({PAPER_EVALUATION[name].dataset for name in models} - set(references))
    if missing:
        raise ValueError(
            f"no FID reference for dataset(s) {missing}: add them to the references (a clean-fid "
            "dataset name such as cifar10, custom stats such as imagenet32_train, or an image folder)"
        )
    rows: list[dict[str, Any]] = []
    for name, loaded in models.items():
        spec = PAPER_EVALUATION[name]
        _, joined = fid_table(
            {spec.method: loaded},
            spec.solvers,
            num_samples,
            references[spec.dataset],
            paper_rows(spec.table, spec.dataset),
            seed=seed,
            device=device,
            features=features,
            dataset_res=None if fake else spec.resolution,
            dataset_split=splits.get(spec.dataset, "train"),
            protocol=protocol,
        )
        rows += [
            {
                "dataset": spec.dataset,
                "release": name,
                **row,
                "release_weights": FAKE_NOTE if fake else "published weights",
            }
            for row in joined
        ]
    return rows


def grid_samples(
    models: Mapping[str, LoadedModel], num_images: int, solver: str, seed: int, device: str
) -> dict[str, Tensor]:
    """``num_images`` samples of every model from the same noise -> {name: images (N, C, H, W) in [-1, 1] on the
    CPU} (latent models decoded to pixels), for the sample-grid figure (paper Fig. 7)."""
    return {
        name: torch.cat([to_images(loaded, x) for x, _ in generate(loaded, num_images, solver, seed, device=device)])
        .cpu()
        .clamp(-1, 1)
        for name, loaded in models.items()
    }
