"""Notebook 12: when does LOOM's finite noise table overfit, and what fixes it (issue 15).

The quantity studied is V = steps x global batch / (examples x caches) (lib.couplings.visits_per_noise): how
often training sees each stored noise. A run (:class:`StudyRun`) trains one velocity field with one coupling
and is evaluated at several steps (so at several V) on:

- fresh-noise quality per solver (digits: the classifier Frechet distance ``fd`` and exact W2 against the
  held-out split; Gaussian mixtures: exact W2 against fresh points of the mixture);
- the memorisation signature: samples from the table's own noise, their distance to the training example
  the table pairs that noise with, and the nearest-training-example distance of fresh samples, both relative
  to how far real held-out examples lie from the training set;
- path curvature, and the table's pairing cost and its gap to the exact global optimum.

Runs are trained in segments through lib.train's exact resume (a segment ends at each evaluation step), and a
finished evaluation is cached on disk under ``<cache>/<key>/`` keyed by the run's and the evaluation's
settings, so an interrupted study resumes where it stopped and a finished one reruns in seconds.

:func:`ratio_to_reference` divides each run's fresh-noise score by the table-free reference's (minibatch OT,
same model, data, seed and step); :func:`boundary_crossings` finds the V at which that ratio passes a
threshold; lib.boundary turns the boundary into the rule "use at least C caches" and lib.train's warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import multiprocessing
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lib.checkpoints import build_model
from lib.code import code_digest
from lib.couplings import (
    LoomCoupling,
    LoomOptions,
    caches_for_visits,
    make_coupling,
    total_pairing_cost,
    visits_per_noise,
)
from lib.evaluate import noise_like, path_curvature
from lib.experiments.ablations import as_model_input, digits_split, digits_velocity_field, score_samples
from lib.experiments.convergence import global_optimum
from lib.fid import DigitsClassifier, digits_frechet_distance, train_digits_classifier
from lib.files import write_text
from lib.metrics import w2
from lib.paper import COUPLING_ROWS, TABLE5_BATCH, sweep_label
from lib.solvers import FIXED_GRID, integrate
from lib.train import TrainConfig, train_flow

DATASETS: tuple[str, ...] = ("digits", "gmm")
GMM_TRAIN = 1024  # Gaussian-mixture training points unless a run's subset says otherwise
REFERENCE = "minibatch_ot"  # the table-free coupling each table run is compared with (same per-batch assignment)
# The paper's row of that coupling in Table 5 ("w/o saving local reassignments")
COUPLING_ROWS_OT = next(label for label, row in COUPLING_ROWS.items() if row.coupling == REFERENCE)


# ---------------------------------------------------------------------------------------------------------
# Data: digits (or a seeded subset) and Gaussian mixtures of any dimension
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """Training examples (N, *shape) and held-out examples (M, *shape) in the model's input shape.

    classifier: the digits classifier of lib.fid (scores ``fd``), None for Gaussian mixtures (W2 only).
    heldout_nn: (M,) distance of each held-out example to its nearest training example: how far new data lie
    from the training set, the yardstick of the memorisation signature.
    """

    name: str
    train: Tensor
    test: Tensor
    classifier: DigitsClassifier | None
    heldout_nn: Tensor

    @property
    def clamp(self) -> bool:
        """Digits live in [-1, 1] and samples are clipped as images are; mixtures are unbounded."""
        return self.classifier is not None


def nearest_distance(points: Tensor, reference: Tensor) -> Tensor:
    """Euclidean distance of each of points (P, *shape) to its nearest row of reference (R, *shape) -> (P,)."""
    return torch.cdist(points.flatten(1).double(), reference.flatten(1).double()).min(dim=1).values


def digits_task(model: str, subset: int = 0, split_seed: int = 0) -> Task:
    """The digits split of notebook 04 (held-out 20%), training on all N = 1437 or on ``subset`` of them
    (a seeded random subset: fewer examples, so a given V costs fewer steps)."""
    train, test = digits_split(split_seed)
    if subset:
        if not 2 <= subset <= len(train):
            raise ValueError(f"subset must be in [2, {len(train)}] digits, got {subset}")
        train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(split_seed))[:subset]]
    train, test = as_model_input(train, model), as_model_input(test, model)
    name = f"digits{f'-{subset}' if subset else ''}"
    return Task(name, train, test, train_digits_classifier(split_seed), nearest_distance(test, train))


def gaussian_mixture(dim: int, n: int, generator: torch.Generator, means: Tensor, std: float) -> Tensor:
    """n points (n, dim) of the equal-weight mixture of N(means[k], std^2 I)."""
    labels = torch.randint(len(means), (n,), generator=generator)
    return means[labels] + std * torch.randn(n, dim, generator=generator)


def gmm_task(
    dim: int,
    num_train: int = GMM_TRAIN,
    num_test: int = 512,
    components: int = 8,
    std: float = 0.3,
    split_seed: int = 0,
) -> Task:
    """A Gaussian mixture in ``dim`` dimensions: ``components`` means drawn from N(0, I), each component
    N(mean, std^2 I). Training and held-out points are independent draws, so exact W2 to the held-out set
    measures the distribution, not the training points."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    generator = torch.Generator().manual_seed(split_seed)
    means = torch.randn(components, dim, generator=generator)
    train = gaussian_mixture(dim, num_train, generator, means, std)
    test = gaussian_mixture(dim, num_test, generator, means, std)
    return Task(f"gmm-{dim}d", train, test, None, nearest_distance(test, train))


# ---------------------------------------------------------------------------------------------------------
# A run and how it is evaluated
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRun:
    """One training run: data, model, coupling with its table options, optimiser, the steps it is evaluated at."""

    dataset: str = "digits"  # digits or gmm
    subset: int = 0  # digits: train on this many (a seeded subset; 0: all 1437); gmm: training points (0: 1024)
    dim: int = 0  # gmm: dimension
    model: str = "mlp"  # mlp or unet (digits UNet preset, weight sharing)
    hidden: int = 512  # MLP width
    coupling: str = "loom"  # independent, minibatch_ot or loom
    caches: int = 1  # LOOM caches per example (a growing table's initial count)
    no_swaps: bool = False  # fixed source: the table never re-pairs
    redraw_every_epochs: int = 0  # periodic redraw of every seed
    refresh_prob: float = 0.0  # per-visit refresh
    mix_prob: float = 0.0  # fresh noise instead of the stored one
    jitter: float = 0.0  # sqrt(1 - eps^2) z + eps xi
    visit_cap: float = 0.0  # growing caches: a new slot once visits per stored noise pass this
    max_caches: int = 0  # growing caches: at most this many per example
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.999
    eval_steps: tuple[int, ...] = (2000,)  # evaluated after each of these steps; trained to the last
    seed: int = 0  # weights, data order, time samples, noise seeds

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; use one of {DATASETS}")
        if self.dataset == "gmm" and self.model != "mlp":
            raise ValueError("Gaussian mixtures are flat vectors: use model 'mlp'")
        if not self.eval_steps or list(self.eval_steps) != sorted(set(self.eval_steps)) or self.eval_steps[0] < 1:
            raise ValueError(f"eval_steps must be increasing positive steps, got {self.eval_steps}")

    @property
    def table(self) -> bool:
        """Whether the run pairs through a stored noise table (LOOM and its variants)."""
        return self.coupling == "loom"

    @property
    def plain_loom(self) -> bool:
        """Whether the run is LOOM with ``caches`` caches and none of the table options (fixed source, redraw,
        refresh, mix, jitter, growing caches): the runs of the dose-response's cache sweep."""
        return self == replace(self.reference(), coupling="loom", caches=self.caches)

    @property
    def label(self) -> str:
        """Short name of the coupling and its options, e.g. 'LOOM 4c', 'LOOM 1c refresh 0.01', 'OT', 'I-CFM'."""
        if not self.table:
            return {"independent": "I-CFM", "minibatch_ot": "OT"}[self.coupling]
        parts = [f"{'fixed' if self.no_swaps else 'LOOM'} {self.caches}c"]
        parts += [
            f"{name} {value:g}"
            for name, value in (
                ("redraw/ep", self.redraw_every_epochs),
                ("refresh", self.refresh_prob),
                ("mix", self.mix_prob),
                ("jitter", self.jitter),
                ("cap", self.visit_cap),
            )
            if value
        ]
        return " ".join(parts) + (f" max {self.max_caches}c" if self.max_caches else "")

    @property
    def setting(self) -> dict[str, Any]:
        """What the run shares with its reference (everything but the coupling and its options)."""
        return {
            "dataset": self.dataset,
            "subset": self.subset,
            "dim": self.dim,
            "model": self.model,
            "hidden": self.hidden if self.model == "mlp" else 0,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def reference(self) -> StudyRun:
        """The same run with the table-free minibatch-OT coupling."""
        return replace(
            self,
            coupling=REFERENCE,
            caches=1,
            no_swaps=False,
            redraw_every_epochs=0,
            **asdict(LoomOptions()),  # every table option off
        )

    @property
    def loom_options(self) -> LoomOptions:
        """The run's options of the LOOM table, from its fields of the same names."""
        return LoomOptions(**{f.name: getattr(self, f.name) for f in fields(LoomOptions)})


@dataclass(frozen=True)
class EvalSettings:
    """How every run is evaluated (part of the cache key: change it and runs are evaluated anew)."""

    solvers: tuple[str, ...] = ("euler-1", "euler-2", "midpoint-1", "midpoint-2", "midpoint-6", "dopri5")
    diagnostic_solver: str = "midpoint-6"  # table-noise samples and nearest-neighbour distances (NFE 12)
    curvature_steps: int = 20  # Euler steps of the curvature paths
    gap_max_slots: int = 3000  # exact global optimum of the table only up to this many stored noises
    split_seed: int = 0  # the data split (and eval noise) every run shares; runs differ in their own seed
    copy_quantile: float = 0.05  # "copy": nearer a training example than this quantile of held-out digits are


def scorer_fingerprint(run: StudyRun, settings: EvalSettings) -> str:
    """A hash of what a digits run's scores depend on beyond the settings: lib.fid's classifier weights. A change
    of the classifier then re-evaluates every cached digits run instead of mixing old and new scores."""
    if run.dataset != "digits":
        return ""
    digest = hashlib.sha1()
    for name, tensor in train_digits_classifier(settings.split_seed).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


# What a study run executes: run_study and what it reaches in this file, and the lib modules the file imports
# (lib.code); the plans and the analysis below it, and the figures, are not part of a run's key.
RUN_CODE = ("lib.experiments.study:run_study",)


@functools.cache
def run_code_digest() -> str:
    """lib.code's digest of :data:`RUN_CODE` (read once per process)."""
    return code_digest(RUN_CODE)


def run_key(run: StudyRun, settings: EvalSettings) -> str:
    """The run's cache folder name: a hash of its settings, the evaluation's, the scorer's fingerprint and the code
    the run executes (a fix in the coupling or the training step trains the run afresh)."""
    text = json.dumps(
        {
            "run": asdict(run),
            "eval": asdict(settings),
            "scorer": scorer_fingerprint(run, settings),
            "code": run_code_digest(),
        },
        sort_keys=True,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def task_for(run: StudyRun, settings: EvalSettings) -> Task:
    """The data a run trains and is evaluated on."""
    if run.dataset == "gmm":
        return gmm_task(run.dim, num_train=run.subset or GMM_TRAIN, split_seed=settings.split_seed)
    return digits_task(run.model, run.subset, settings.split_seed)


def make_run_coupling(run: StudyRun, num_examples: int):
    """The run's coupling, seeded by the run's seed."""
    return make_coupling(
        run.coupling,
        num_examples,
        num_caches=run.caches,
        seed=run.seed,
        no_swaps=run.no_swaps,
        options=run.loom_options,
    )


def make_run_model(run: StudyRun, task: Task) -> nn.Module:
    """A fresh velocity field with weights fixed by the run's seed (the global RNG is left as it was)."""
    if run.dataset == "digits":
        return digits_velocity_field(run.model, run.hidden, run.seed)
    return build_model("mlp", tuple(task.train.shape[1:]), run.hidden, run.seed)


# ---------------------------------------------------------------------------------------------------------
# Evaluation at one step
# ---------------------------------------------------------------------------------------------------------


def quality(samples: Tensor, task: Task) -> dict[str, float | None]:
    """{"fd", "w2"} of samples (P, *shape) against the held-out set (M, *shape).

    fd: digits only (samples clipped to [-1, 1] as images are); w2: exact, only when P == M.
    """
    reference = task.test.flatten(1)
    if task.classifier is None:
        return {"fd": None, "w2": w2(samples.flatten(1), reference) if len(samples) == len(reference) else None}
    if len(samples) == len(reference):
        return score_samples(samples, reference, task.classifier)
    digits = samples.detach().flatten(1).clamp(-1, 1).reshape(-1, 1, 8, 8)
    return {"fd": digits_frechet_distance(digits, reference.reshape(-1, 1, 8, 8), task.classifier), "w2": None}


def memorisation(samples: Tensor, partners: Tensor | None, task: Task, copy_quantile: float) -> dict[str, float]:
    """Distances that tell memorisation from generalisation, relative to held-out data.

    samples (P, *shape); partners (P, *shape) the training examples the samples' noises are paired with (table
    noise) or None (fresh noise: the nearest training example is used). Returns mean distance, its ratio to the
    held-out examples' mean nearest-training distance (1: as far as new data; 0: copies), and the fraction of
    samples nearer than the held-out ``copy_quantile`` (by construction ``copy_quantile`` for new data).
    """
    samples = samples.clamp(-1, 1) if task.clamp else samples
    if partners is None:
        distance = nearest_distance(samples, task.train)
    else:
        distance = (samples.flatten(1).double() - partners.flatten(1).double()).norm(dim=1)
    threshold = torch.quantile(task.heldout_nn, copy_quantile)
    return {
        "distance": distance.mean().item(),
        "ratio": (distance.mean() / task.heldout_nn.mean()).item(),
        "copy_fraction": (distance < threshold).double().mean().item(),
    }


def table_probe(coupling: LoomCoupling, task: Task, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` training examples (a seeded choice) and the noise the table pairs with each (its first cache):
    (noise (count, *shape), examples (count, *shape))."""
    pick = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(seed))[:count]
    noise = coupling.noise(pick, 0, "cpu", tuple(task.train.shape[1:]))
    return noise, task.train[pick]


def evaluate_step(
    ema: nn.Module, coupling: Any, run: StudyRun, task: Task, settings: EvalSettings, z: Tensor, optimum: float | None
) -> dict[str, Any]:
    """Everything measured at one step: per-solver fresh-noise quality, memorisation and pairing diagnostics."""
    solvers = []
    fresh_diag = None
    for spec in settings.solvers:
        result = integrate(ema, z, spec)
        solvers.append({"solver": result.spec.label, "nfe": result.nfe, **quality(result.x, task)})
        if spec == settings.diagnostic_solver:
            fresh_diag = memorisation(result.x, None, task, settings.copy_quantile)
    if fresh_diag is None:
        fresh_diag = memorisation(integrate(ema, z, settings.diagnostic_solver).x, None, task, settings.copy_quantile)
    diag: dict[str, Any] = {"fresh_nn_" + k: v for k, v in fresh_diag.items()}
    diag["curvature"] = float(path_curvature(ema, z, settings.curvature_steps).mean())
    if isinstance(coupling, LoomCoupling):
        noise, partners = table_probe(coupling, task, min(len(task.train), len(task.test)), settings.split_seed)
        table_samples = integrate(ema, noise, settings.diagnostic_solver).x
        diag.update({f"table_{k}": v for k, v in quality(table_samples, task).items()})
        diag.update(
            {
                "table_pair_" + k: v
                for k, v in memorisation(table_samples, partners, task, settings.copy_quantile).items()
            }
        )
        stored = int(coupling.active.sum())
        diag.update(
            {
                "stored_noises": stored,
                "visits_per_noise": int(coupling.visits.sum()) / stored,
                "table_cost": total_pairing_cost(coupling, task.train),
            }
        )
        if optimum is not None:
            diag["table_gap"] = (diag["table_cost"] - optimum) / optimum
    return {"solvers": solvers, "diagnostics": diag}


def table_optimum(coupling: Any, run: StudyRun, task: Task, settings: EvalSettings) -> float | None:
    """Mean cost of the exact global optimum of the table, when the stored noises never change (plain LOOM, fixed
    source, mixing, jitter) and there are at most ``gap_max_slots`` of them; else None."""
    changes = run.redraw_every_epochs or run.refresh_prob or run.visit_cap
    if not isinstance(coupling, LoomCoupling) or changes or len(task.train) * run.caches > settings.gap_max_slots:
        return None
    return global_optimum(coupling, task.train)


# ---------------------------------------------------------------------------------------------------------
# Training in segments, with the finished evaluations cached
# ---------------------------------------------------------------------------------------------------------


def train_config(run: StudyRun, steps: int) -> TrainConfig:
    """lib.train settings of the run, trained up to ``steps`` (a resumable change)."""
    return TrainConfig(
        steps=steps,
        batch_size=run.batch_size,
        lr=run.lr,
        ema_decay=run.ema_decay,
        seed=run.seed,
        redraw_every_epochs=run.redraw_every_epochs,
        progress=False,
        tensorboard=False,  # hundreds of short runs: their cached records are the study's view, not a live log
        log_every=max(1, min(run.eval_steps) // 10),
    )


def history_summary(history: Sequence[Mapping[str, float]], start: int, end: int) -> dict[str, float]:
    """Training loss and pairing statistics over the logged steps in (start, end]."""
    rows = [h for h in history if start < h["step"] <= end]
    if not rows:
        return {}
    return {
        "loss": float(np.mean([h["loss"] for h in rows])),
        "batch_cost": float(np.mean([h["cost_after"] for h in rows])),
        "swaps_per_step": float(np.mean([h["swaps"] for h in rows])),
    }


def read_cached(folder: Path | None) -> dict[int, dict[str, Any]]:
    """The evaluations already finished in ``folder``: {step: record}."""
    if folder is None or not folder.is_dir():
        return {}
    return {int(p.stem.split("_")[1]): json.loads(p.read_text()) for p in folder.glob("eval_*.json")}


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON through a temporary file and a rename (lib.files), so a killed run never leaves half a record."""
    write_text(path, json.dumps(data, indent=1, default=float) + "\n")


def run_study(run: StudyRun, settings: EvalSettings, cache: Path | None = None) -> list[dict[str, Any]]:
    """Train ``run`` to its last eval step, evaluating at each; returns one record per eval step.

    With ``cache`` the records (and a checkpoint while the run is unfinished) live in ``cache/<run_key>/``: a
    second call returns the cached records, and a call after an interruption resumes from the checkpoint
    (lib.train's resume is exact, so the result does not depend on where it stopped).
    """
    folder = cache / run_key(run, settings) if cache is not None else None
    records = read_cached(folder)
    if all(step in records for step in run.eval_steps):
        return [records[s] for s in run.eval_steps]
    task = task_for(run, settings)
    with tempfile.TemporaryDirectory() as scratch:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "run.json", {"run": asdict(run), "eval": asdict(settings), "label": run.label})
        checkpoint = (folder or Path(scratch)) / "checkpoint.pt"
        model, coupling = make_run_model(run, task), make_run_coupling(run, len(task.train))
        optimum = table_optimum(coupling, run, task, settings)
        z = noise_like(task.test, settings.split_seed + 1)
        previous = 0
        for step in run.eval_steps:
            if step in records:
                previous = step
                continue
            start = time.perf_counter()
            result = train_flow(model, task.train, coupling, train_config(run, step), checkpoint=checkpoint)
            seconds = time.perf_counter() - start
            record = {
                "step": step,
                "label": run.label,
                "task": task.name,
                **run.setting,
                "planned_visits_per_noise": visits_per_noise(step, run.batch_size, len(task.train), run.caches)
                if run.table
                else None,
                "train_seconds": seconds,
                **history_summary(result.history, previous, step),
                **evaluate_step(result.ema, coupling, run, task, settings, z, optimum),
            }
            records[step] = record
            if folder is not None:
                write_json_atomic(folder / f"eval_{step}.json", record)
            previous = step
    if folder is not None:
        (folder / "checkpoint.pt").unlink(missing_ok=True)  # finished: the records are what is kept
    return [records[s] for s in run.eval_steps]


def is_cached(run: StudyRun, settings: EvalSettings, cache: Path) -> bool:
    """Whether every evaluation of ``run`` is already in ``cache``."""
    return set(run.eval_steps) <= read_cached(cache / run_key(run, settings)).keys()


def training_cost(run: StudyRun) -> tuple[bool, int]:
    """A rough order of how long a run trains (UNet runs first, then steps x MLP width), to start the longest first."""
    return run.model == "unet", run.eval_steps[-1] * run.hidden


def _one_thread() -> None:
    """A worker's initializer: one torch thread, so N workers use N cores (and give the same numbers as one)."""
    torch.set_num_threads(1)


def fill_cache(runs: Sequence[StudyRun], settings: EvalSettings, cache: Path, workers: int, log: Any = print) -> None:
    """Train the runs ``cache`` lacks, ``workers`` at a time, each in its own process of one torch thread.

    The records are those :func:`run_study` writes in-process (same seeds, same single thread), so the study's
    results do not depend on ``workers``; a killed fill resumes like a single run (finished runs are kept,
    unfinished ones continue from their checkpoint).
    """
    todo = [r for r in dict.fromkeys(runs) if not is_cached(r, settings, cache)]
    todo.sort(key=training_cost, reverse=True)
    if not todo:
        return
    log(f"training {len(todo)} runs, {workers} at a time")
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: safe from a notebook kernel and any thread
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_one_thread) as pool:
        started = {pool.submit(run_study, run, settings, cache): (run, time.perf_counter()) for run in todo}
        for count, future in enumerate(as_completed(started), 1):
            future.result()  # a worker's error stops the fill here, with its traceback
            run, start = started[future]
            took = time.perf_counter() - start
            log(f"{count}/{len(todo)} {run.label:28s} {run.setting} -> steps {list(run.eval_steps)} in {took:.0f} s")


def run_all(
    runs: Iterable[StudyRun], settings: EvalSettings, cache: Path | None = None, log: Any = print, workers: int = 1
) -> list[tuple[StudyRun, list[dict[str, Any]]]]:
    """run_study for each run (duplicates once), logging each run's count (i/n), label and wall time; with
    ``workers`` > 1 (and a cache) the missing runs are first trained in parallel by :func:`fill_cache`."""
    runs = list(dict.fromkeys(runs))
    if workers > 1 and cache is not None:
        fill_cache(runs, settings, cache, workers, log)
    done: dict[StudyRun, list[dict[str, Any]]] = {}
    for count, run in enumerate(runs, 1):
        start = time.perf_counter()
        reused = cache is not None and is_cached(run, settings, cache)
        done[run] = run_study(run, settings, cache)
        took = "reused (same settings and run code)" if reused else f"in {time.perf_counter() - start:.0f} s"
        log(f"{count}/{len(runs)} {run.label:28s} {run.setting} -> steps {list(run.eval_steps)} {took}")
    return list(done.items())


# ---------------------------------------------------------------------------------------------------------
# The parts of the study: which runs
# ---------------------------------------------------------------------------------------------------------


def steps_for_visits(visits: Sequence[float], num_examples: int, batch_size: int, caches: int = 1) -> tuple[int, ...]:
    """Training steps at which a ``caches``-cache table reaches each V -> increasing steps."""
    return tuple(sorted({max(1, round(v * num_examples * caches / batch_size)) for v in visits}))


def dose_runs(
    caches: Sequence[int],
    eval_steps: Sequence[int],
    seeds: Sequence[int],
    fixed_caches: Sequence[int] = (),
    independent: bool = True,
    **common: Any,
) -> list[StudyRun]:
    """Part 1: the same model and budget with I-CFM (unless ``independent`` is False), minibatch OT, LOOM at each
    cache count and the fixed source at each of ``fixed_caches``, for each seed."""
    runs = []
    for seed in seeds:
        base = StudyRun(eval_steps=tuple(eval_steps), seed=seed, **common)
        runs += [replace(base, coupling="independent")] if independent else []
        runs += [base.reference()]
        runs += [replace(base, caches=c) for c in caches]
        runs += [replace(base, caches=c, no_swaps=True) for c in fixed_caches]
    return runs


def digits_train_size(split_seed: int = 0) -> int:
    """Training digits of the split (1437)."""
    return len(digits_split(split_seed)[0])


def num_examples_of(run: StudyRun) -> int:
    """N, the training examples of a run (its subset, else all training digits or GMM_TRAIN mixture points)."""
    return run.subset or (GMM_TRAIN if run.dataset == "gmm" else digits_train_size())


def capacity_runs(
    models: Sequence[tuple[str, int]],
    subsets: Sequence[int],
    visits: Sequence[float],
    seeds: Sequence[int],
    **common: Any,
) -> list[StudyRun]:
    """Part 2: LOOM with one cache and its minibatch-OT reference for each model (kind, width) and digits subset
    (0: all), evaluated at the steps where the table reaches each V."""
    runs = []
    for (model, hidden), subset, seed in ((m, s, seed) for m in models for s in subsets for seed in seeds):
        steps = steps_for_visits(
            visits, subset or digits_train_size(), common.get("batch_size", 128)
        )  # N of the subset
        loom = StudyRun(model=model, hidden=hidden, subset=subset, eval_steps=steps, seed=seed, **common)
        runs += [loom, loom.reference()]
    return runs


def dimension_runs(
    dims: Sequence[int], visits: Sequence[float], seeds: Sequence[int], num_examples: int = GMM_TRAIN, **common: Any
) -> list[StudyRun]:
    """Part 3: LOOM with one cache, I-CFM and the minibatch-OT reference on Gaussian mixtures of each dimension."""
    steps = steps_for_visits(visits, num_examples, common.get("batch_size", 128))
    runs = []
    for dim, seed in ((d, s) for d in dims for s in seeds):
        loom = StudyRun(
            dataset="gmm",
            dim=dim,
            subset=num_examples if num_examples != GMM_TRAIN else 0,
            eval_steps=steps,
            seed=seed,
            **common,
        )
        runs += [loom, replace(loom, coupling="independent"), loom.reference()]
    return runs


def fix_runs(base: StudyRun, fixes: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]) -> list[StudyRun]:
    """Part 4: the failing LOOM setting ``base``, each fix applied to it (name -> StudyRun fields), and the
    fresh-noise couplings at the same budget, for each seed."""
    runs = []
    for seed in seeds:
        seeded = replace(base, seed=seed)
        runs += [seeded, replace(seeded, coupling="independent"), seeded.reference()]
        runs += [replace(seeded, **options) for options in fixes.values()]
    return runs


# ---------------------------------------------------------------------------------------------------------
# Tables and analysis
# ---------------------------------------------------------------------------------------------------------


def quality_rows(results: Sequence[tuple[StudyRun, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per (run, step, solver): the run's settings, V, and fd / w2 / true NFE."""
    rows = []
    for run, records in results:
        for record in records:
            head = {k: record[k] for k in ("label", "task", *run.setting, "step", "planned_visits_per_noise")}
            rows += [{**head, "caches": run.caches, "coupling": run.coupling, **s} for s in record["solvers"]]
    return rows


def run_rows(results: Sequence[tuple[StudyRun, list[dict[str, Any]]]], settings: EvalSettings) -> list[dict[str, Any]]:
    """One row per distinct run (parts share runs: each is listed once): its label, settings, cache key (the folder
    its records live in) and training seconds summed over its segments, so a notebook that reused cached runs
    still says what they cost and where they are."""
    return [
        {
            "label": run.label,
            **run.setting,
            "last_step": run.eval_steps[-1],
            "cache_key": run_key(run, settings),
            "train_seconds": sum(r["train_seconds"] for r in records),
        }
        for run, records in dict(results).items()
    ]


def diagnostic_rows(results: Sequence[tuple[StudyRun, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per (run, step): V, training statistics, memorisation and pairing diagnostics."""
    rows = []
    for run, records in results:
        for record in records:
            head = {
                k: record.get(k)
                for k in (
                    "label",
                    "task",
                    *run.setting,
                    "step",
                    "planned_visits_per_noise",
                    "train_seconds",
                    "loss",
                    "batch_cost",
                    "swaps_per_step",
                )
            }
            rows.append({**head, "caches": run.caches, "coupling": run.coupling, **record["diagnostics"]})
    return rows


def score_of(record: Mapping[str, Any], solver: str, metric: str) -> float | None:
    """A record's ``metric`` for ``solver`` (None when that metric does not apply)."""
    for s in record["solvers"]:
        if s["solver"] == solver:
            return s[metric]
    raise KeyError(f"solver {solver!r} was not evaluated; evaluated: {[s['solver'] for s in record['solvers']]}")


def ratio_to_reference(
    results: Sequence[tuple[StudyRun, list[dict[str, Any]]]], solver: str, metric: str
) -> list[dict[str, Any]]:
    """For each table run and step: its fresh-noise ``metric`` over the minibatch-OT reference's at the same
    step (same data, model and seed). Rows: label, setting, caches, step, V (planned and measured), ratio,
    and the memorisation ratios."""
    by_run = {run: {r["step"]: r for r in records} for run, records in results}
    rows = []
    for run, records in results:
        reference = by_run.get(run.reference())
        if not run.table or reference is None:
            continue
        for record in records:
            ref = reference.get(record["step"])
            if ref is None:
                continue
            ours, theirs = score_of(record, solver, metric), score_of(ref, solver, metric)
            diag = record["diagnostics"]
            rows.append(
                {
                    "label": run.label,
                    "plain_loom": run.plain_loom,
                    "task": record["task"],
                    **run.setting,
                    "caches": run.caches,
                    "step": record["step"],
                    "visits_per_noise": diag["visits_per_noise"],
                    "planned_visits_per_noise": record["planned_visits_per_noise"],
                    "solver": solver,
                    "metric": metric,
                    "score": ours,
                    "reference_score": theirs,
                    "ratio": ours / theirs,
                    "table_pair_ratio": diag["table_pair_ratio"],
                    "fresh_nn_ratio": diag["fresh_nn_ratio"],
                    "reference_fresh_nn_ratio": ref["diagnostics"]["fresh_nn_ratio"],
                }
            )
    return rows


def crossing(points: Sequence[tuple[float, float]], threshold: float) -> float | None:
    """The V where a curve of (V, ratio) points first passes ``threshold``, interpolated in log V; None if it
    never does. A curve already above the threshold at its first point crosses there (an upper bound)."""
    points = sorted(points)
    for i, (v, r) in enumerate(points):
        if r >= threshold:
            if i == 0:
                return v
            v0, r0 = points[i - 1]
            frac = (threshold - r0) / (r - r0)
            return math.exp(math.log(v0) + frac * (math.log(v) - math.log(v0)))
    return None


def boundary_crossings(
    ratios: Sequence[Mapping[str, Any]],
    threshold: float,
    group: Sequence[str] = ("label", "task", "model", "hidden", "batch_size", "seed"),
) -> list[dict[str, Any]]:
    """Per curve, the V at which the ratio first reaches ``threshold`` ("crossed": False and V None when it never
    does; ``max_v`` says how far the curve went), with the measured V just below and at the crossing.

    A curve is the rows sharing ``group``: by default one run over its eval steps; grouped by ("step", "seed") over
    LOOM runs of several cache counts, it is the ratio against V at one training step (the boundary at that step).
    """
    curves: dict[tuple, list[tuple[float, float]]] = {}
    for r in ratios:
        curves.setdefault(tuple(r[k] for k in group), []).append((r["visits_per_noise"], r["ratio"]))
    rows = []
    for key, points in curves.items():
        v = crossing(points, threshold)
        above = next((p[0] for p in sorted(points) if p[1] >= threshold), None)
        below = max((p[0] for p in points if above is not None and p[0] < above), default=None)
        rows.append(
            {
                **dict(zip(group, key)),
                "threshold": threshold,
                "boundary_v": v,
                "crossed": v is not None,
                "v_below": below,
                "v_above": above,
                "max_v": max(p[0] for p in points),
                "min_v": min(p[0] for p in points),
                "max_ratio": max(p[1] for p in points),
            }
        )
    return rows


def boundary_by_step(ratios: Sequence[Mapping[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """The boundary at each training step and seed: across the plain LOOM runs (one per cache count), the V at
    which the ratio to minibatch OT first reaches ``threshold``. Runs with more caches reach a given V later in
    training, so this separates the boundary from how far training has come."""
    plain = [r for r in ratios if r["plain_loom"]]
    return sorted(boundary_crossings(plain, threshold, group=("step", "seed")), key=lambda r: (r["step"], r["seed"]))


def summarise_boundary(crossings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median and range of the crossing V over curves, in log space (the boundary and its uncertainty).

    Curves that never crossed give only a lower bound (their max V) and are counted, not averaged in.
    """
    crossed = sorted(r["boundary_v"] for r in crossings if r["crossed"])
    never = [r["max_v"] for r in crossings if not r["crossed"]]
    if not crossed:
        return {"curves": len(crossings), "crossed": 0, "boundary_v": None, "lower_bound_v": max(never, default=None)}
    logs = np.log(crossed)
    measured_below = [r["v_below"] for r in crossings if r["crossed"] and r["v_below"] is not None]
    return {
        "curves": len(crossings),
        "crossed": len(crossed),
        "boundary_v": float(np.exp(np.median(logs))),
        "low_v": crossed[0],
        "high_v": crossed[-1],
        # the measured V around the crossings: V* is interpolated in log V between them (the spacing of the runs)
        "measured_below_v": min(measured_below, default=None),
        "measured_above_v": max(r["v_above"] for r in crossings if r["crossed"]),
        "geometric_sd": float(np.exp(logs.std())) if len(crossed) > 1 else None,
        "never_crossed_max_v": max(never, default=None),
    }


def effective_visits(run: StudyRun, num_examples: int, step: int) -> float:
    """Expected visits per distinct stored noise after ``step`` steps, counting every noise a fix ever draws.

    Plain LOOM (and jitter, which perturbs the stored noise it still visits): V = step x B / (N x C). Periodic redraw
    every K epochs: the visits a table gets before it is replaced, K x (N // B) x B / (N x C). Per-visit refresh with
    probability phi: all visits over all noises drawn, step x B / (N x C + step x B x phi). Mixing with probability p:
    only the table rows visit, V (1 - p). A growing table's is measured instead (its ``visits_per_noise``).
    """
    visits = step * run.batch_size
    if run.visit_cap:
        raise ValueError("a growing table's visits per stored noise are measured (visits_per_noise), not derived")
    v = visits / (num_examples * run.caches)
    if run.redraw_every_epochs:
        v = min(
            v, run.redraw_every_epochs * (num_examples // run.batch_size) * run.batch_size / (num_examples * run.caches)
        )
    if run.refresh_prob:
        v = visits / (num_examples * run.caches + visits * run.refresh_prob)
    return v * (1 - run.mix_prob)


def fix_name(run: StudyRun, base: StudyRun, fixes: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Which row of the fix table a run is: a fix's name, "no fix", "I-CFM", "minibatch OT", or None."""
    base = replace(base, seed=run.seed)
    named = {
        "no fix": base,
        "I-CFM": replace(base, coupling="independent"),
        "minibatch OT": base.reference(),
        **{name: replace(base, **options) for name, options in fixes.items()},
    }
    return next((name for name, candidate in named.items() if candidate == run), None)


def fix_table(
    results: Sequence[tuple[StudyRun, list[dict[str, Any]]]],
    base: StudyRun,
    fixes: Mapping[str, Mapping[str, Any]],
    solvers: Sequence[str],
    metric: str = "fd",
) -> list[dict[str, Any]]:
    """Each fix of ``base`` (and no fix, I-CFM, minibatch OT) at its last step: ``metric`` per solver as mean and
    sample SD over seeds, memorisation and curvature diagnostics, and each score over minibatch OT's."""
    grouped: dict[str, list[tuple[StudyRun, dict[str, Any]]]] = {}
    for run, records in results:
        name = fix_name(run, base, fixes)
        if name is not None:
            grouped.setdefault(name, []).append((run, records[-1]))
    rows = []
    for name, members in grouped.items():
        row: dict[str, Any] = {
            "fix": name,
            "label": members[0][0].label,
            "seeds": len(members),
            "step": members[0][1]["step"],
        }
        for solver in solvers:
            values = np.array([score_of(rec, solver, metric) for _, rec in members], dtype=float)
            row[f"nfe_{solver}"] = float(np.mean([score_of(rec, solver, "nfe") for _, rec in members]))
            row[f"{metric}_{solver}"] = float(values.mean())
            row[f"{metric}_{solver}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else None
        diags = [rec["diagnostics"] for _, rec in members]
        run, record = members[0]
        if run.table:
            row["effective_visits_per_noise"] = (
                diags[0]["visits_per_noise"]
                if run.visit_cap
                else effective_visits(run, num_examples_of(run), record["step"])
            )
        for key in ("fresh_nn_ratio", "fresh_nn_copy_fraction", "table_pair_ratio", "curvature", "stored_noises"):
            vals = [d[key] for d in diags if d.get(key) is not None]
            row[key] = float(np.mean(vals)) if vals else None
        rows.append(row)
    ot = next((r for r in rows if r["fix"] == "minibatch OT"), None)
    for row in rows:
        for solver in solvers:
            row[f"over_ot_{solver}"] = row[f"{metric}_{solver}"] / ot[f"{metric}_{solver}"] if ot else None
    return rows


def capacity_of(run: StudyRun, settings: EvalSettings | None = None) -> dict[str, Any]:
    """The run's parameters, examples, stored noise numbers (examples x caches x dimension) and their ratio."""
    task = task_for(run, settings or EvalSettings())
    params = sum(p.numel() for p in make_run_model(run, task).parameters())
    stored = len(task.train) * run.caches * math.prod(task.train.shape[1:])
    return {
        "params": params,
        "num_examples": len(task.train),
        "stored_numbers": stored,
        "params_per_stored_number": params / stored,
    }


# ---------------------------------------------------------------------------------------------------------
# The rule applied to the paper's settings
# ---------------------------------------------------------------------------------------------------------


def visits_per_epoch(flip: bool) -> float:
    """Visits of each stored example per epoch in the released pipeline: with random flips an epoch visits each
    image once, as itself or its flipped copy (which owns its seeds), so each copy half the time; without (FFHQ
    latents store their flips as examples) every example once."""
    return 0.5 if flip else 1.0


def released_predictions(configs: Mapping[str, Mapping[str, Any]], boundary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For each released training config (lib.train.RELEASED_CONFIGS): V at the paper's caches, V with the kit's
    current epochs (which visit both copies of every image each epoch, issue 14), and the caches the rule asks for
    (at the boundary, and over its range: the high end of V* needs the fewest)."""
    rows = []
    for name, cfg in configs.items():
        if cfg.get("reflow"):  # fine-tunes on fixed teacher pairs, not a LOOM table: no caches to choose
            continue
        per_epoch = visits_per_epoch(cfg["flip"])
        visits = cfg["epochs"] * per_epoch
        rows.append(
            {
                "config": name,
                "epochs": cfg["epochs"],
                "flip": cfg["flip"],
                "paper_caches": cfg["caches"],
                "v_at_paper_caches": visits / cfg["caches"],
                "v_with_both_copies_each_epoch": cfg["epochs"] / cfg["caches"],
                "caches_needed": caches_for_visits(visits, boundary["boundary_v"]),
                "caches_needed_low": caches_for_visits(visits, boundary["high_v"]),
                "caches_needed_high": caches_for_visits(visits, boundary["low_v"]),
            }
        )
    return rows


def paper_cache_sweep(table5: Sequence[Mapping[str, str]], epochs: int, flip: bool = True) -> list[dict[str, Any]]:
    """The paper's Table 5 cache sweep at batch 128 (rows of lib.paper.paper_rows("5", "cifar10")) beside its own
    minibatch OT row ("w/o saving local reassignments", the same trainer with fresh noise): per cache count and
    solver the V, the FIDs and their ratio, the quantity notebook 12 measures on digits."""
    labels = {sweep_label(c, TABLE5_BATCH): c for c in range(1, 65)}

    def solver_of(r: Mapping[str, str]) -> str:
        return "dopri5" if r["solver"] == "dopri5" else f"{r['solver']}-{int(r['nfe']) // FIXED_GRID[r['solver']]}"

    reference = {solver_of(r): float(r["fid"]) for r in table5 if r["method"] == COUPLING_ROWS_OT}
    rows = []
    for r in table5:
        caches = labels.get(r["method"])
        if caches is None or solver_of(r) not in reference:
            continue
        ot = reference[solver_of(r)]
        rows.append(
            {
                "caches": caches,
                "v": epochs * visits_per_epoch(flip) / caches,
                "solver": solver_of(r),
                "paper_fid": float(r["fid"]),
                "paper_ot_fid": ot,
                "ratio": float(r["fid"]) / ot,
            }
        )
    return sorted(rows, key=lambda r: (r["solver"], r["caches"]))


def paper_boundary(sweep: Sequence[Mapping[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Per solver, the V at which the paper's own cache sweep crosses ``threshold`` (its boundary on CIFAR-10)."""
    by_solver: dict[str, list[tuple[float, float]]] = {}
    for r in sweep:
        by_solver.setdefault(r["solver"], []).append((r["v"], r["ratio"]))
    return [
        {
            "solver": solver,
            "threshold": threshold,
            "boundary_v": crossing(points, threshold),
            "v_range": f"{min(p[0] for p in points):.0f}-{max(p[0] for p in points):.0f}",
        }
        for solver, points in sorted(by_solver.items())
    ]


REFERENCE_ROWS = ("no fix", "I-CFM", "minibatch OT")  # the rows of the fix table that are not fixes


def best_fix(rows: Sequence[Mapping[str, Any]], high: str, low: str, metric: str = "fd") -> dict[str, Any]:
    """The fix with the best ``metric`` at ``high`` (many steps) among those at least as good as minibatch OT at
    ``low`` (the few-step advantage LOOM exists for); if none keeps it, the best at ``high`` overall.

    rows: :func:`fix_table` rows. Returns the row with ``keeps_few_step_advantage`` added.
    """
    ot = next(r for r in rows if r["fix"] == "minibatch OT")
    fixes = [dict(r) for r in rows if r["fix"] not in REFERENCE_ROWS]
    if not fixes:
        raise ValueError("the fix table has no fixes, only the reference rows")
    for r in fixes:
        r["keeps_few_step_advantage"] = r[f"{metric}_{low}"] <= ot[f"{metric}_{low}"]
    keeping = [r for r in fixes if r["keeps_few_step_advantage"]] or fixes
    return min(keeping, key=lambda r: r[f"{metric}_{high}"])


def worst_table(ratio: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The plain LOOM evaluation (a :func:`ratio_to_reference` row) with the highest ratio to the reference."""
    return dict(max((r for r in ratio if r["plain_loom"]), key=lambda r: r["ratio"]))
