"""Image experiments as the notebooks run them: data on disk -> torchrun training -> FID rows beside the paper.

Training always goes through the same entry point users launch by hand (``torchrun -m lib.train``), as a
subprocess, from a typed :class:`lib.train.TrainSettings`, so a notebook on one CPU and a run on 8 GPUs exercise
the same code. The figures of these steps are drawn by lib.kit.figures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor

from lib import REPO_ROOT
from lib.checkpoints import RELEASED_PREFIX, LoadedModel, kept_checkpoints, load_model
from lib.code import code_digest
from lib.evaluate import fid_rows, path_curvature
from lib.fabricate import FAKE_NOTE
from lib.fid import DEFAULT_PROTOCOL, PAPER_PROTOCOL, check_protocol, feature_network
from lib.files import open_log
from lib.paper import (
    COUPLING_ROWS,
    PAPER_EVALUATION,
    paper_rows,
    parse_sweep_label,
    same_setting,
    sweep_label,
    table5_sweep,
)
from lib.progress import LOG_INTERVAL_S, RelayedBar
from lib.progress import progress as progress_bar
from lib.sample import generate, noise_for_images, to_images
from lib.solvers import parse_solver
from lib.train import TrainConfig, TrainSettings, named_settings


class TrainingFailed(RuntimeError):
    """lib.train exited with an error: the message carries the command, its error output and the run's train.log."""


class ScriptFailed(RuntimeError):
    """A data_prep script exited with an error: the message carries the command and the end of its output."""


TRAIN_LOG = "train.log"  # in the run folder: everything lib.train printed, every launch appended
STOP_GRACE_S = 600.0  # after forwarding an interrupt: time to finish the step and write the checkpoint


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


def notebook_train_config(parameters: Mapping[str, Any], **names: str) -> TrainConfig:
    """The TrainConfig an image notebook's parameters ask for: each lib.train setting of :data:`NOTEBOOK_PARAMETERS`
    (``names``: a notebook's own parameter for a setting, e.g. ``steps="TEACHER_STEPS"``) whose parameter
    ``parameters`` holds; errors name the parameters. Notebooks 05-08 and ``reproduce --plan`` (lib.kit.plan) build
    their runs' training settings through it, so the plan is the notebooks' runs."""
    names = {**NOTEBOOK_PARAMETERS, **names}
    config = {f.name for f in fields(TrainConfig)}
    with named_settings(names):
        return TrainConfig(**{s: parameters[n] for s, n in names.items() if s in config and n in parameters})


def launch_training(settings: TrainSettings, nproc: int = 1, timeout_s: float | None = None) -> Path:
    """Run ``torchrun --nproc_per_node=nproc -m lib.train <settings>`` (plain ``python -m lib.train`` for one
    process). Resumes by itself when ``<settings.out>/checkpoint.pt`` exists. Returns the checkpoint path.

    Its progress bar is drawn here (lib.progress.RelayedBar: a widget in JupyterLab, logged lines under papermill, a
    live bar in a terminal), its other lines are printed as they come, and everything goes to ``<out>/train.log``.
    Interrupting the caller (KeyboardInterrupt: a notebook's stop button, Ctrl-C, papermill's interrupt) stops the
    training as Ctrl-C stops lib.train: SIGINT to its process group, the step finishes, the checkpoint is written,
    every rank exits and the run folder's lock is released; then the KeyboardInterrupt goes on (a second one while
    it stops kills the group at once: checkpoints are atomic, the stale lock is taken over by the rerun). Rerunning
    resumes. A failure raises :class:`TrainingFailed` with lib.train's whole error output.
    """
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    command = [sys.executable, *launcher, "-m", "lib.train", *settings.to_argv()]
    log_path = REPO_ROOT / settings.out / TRAIN_LOG
    with open_log(log_path) as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n")
        log.flush()
        returncode, errors = _follow_training(command, log, timeout_s)
    if returncode != 0:
        raise TrainingFailed(
            f"{' '.join(command)}\nexited with {returncode}:\n{''.join(errors).rstrip()}\n(all its output: {log_path})"
        )
    return Path(settings.out) / "checkpoint.pt"


def _follow_training(command: list[str], log: TextIO, timeout_s: float | None) -> tuple[int, list[str]]:
    """Run ``command`` in its own process group, showing and logging its output (:func:`launch_training`) ->
    (exit status, its error output without progress lines)."""
    proc = subprocess.Popen(
        _stopped_with_parent(command),
        cwd=REPO_ROOT,
        env={**os.environ, "LOOM_PROGRESS": "relay", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        start_new_session=True,  # its own group: the interrupt reaches it only as forwarded here, once
    )
    follower = _OutputFollower(proc, log)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        follower.follow(deadline)
    except KeyboardInterrupt:
        _stop_group(proc, follower)
        raise
    except subprocess.TimeoutExpired:
        _stop_group(proc, follower)
        raise subprocess.TimeoutExpired(command, timeout_s or 0) from None
    return proc.wait(), follower.errors


# Run by the launched Python before it becomes ``command`` (exec keeps the setting): SIGINT when the launching
# process dies (prctl PR_SET_PDEATHSIG = 1), so a training whose kernel was killed (a restart, papermill shutting
# it down) stops cleanly instead of training on orphaned; it exits at once if that parent is already gone.
_STOP_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGINT); "
    "sys.exit(130) if os.getppid() != int(sys.argv[1]) else os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def _stopped_with_parent(command: list[str]) -> list[str]:
    """``command`` (``sys.executable ...``) started so that it gets SIGINT when this process dies (Linux; elsewhere
    as it is). An exec wrapper, not ``preexec_fn``, which is unsafe in a process with threads such as a kernel."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", _STOP_WITH_PARENT, str(os.getpid()), *command[1:]]


def _stop_group(proc: subprocess.Popen[str], follower: _OutputFollower) -> None:
    """Stop a launched training as Ctrl-C does (SIGINT to its group) and follow it until it exits; kill the group
    if it is interrupted again or outlives :data:`STOP_GRACE_S`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        follower.follow(time.monotonic() + STOP_GRACE_S)
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        follower.log.write("=== killed: interrupted again while stopping\n")


class _OutputFollower:
    """Reads a launched training's stdout and stderr (one thread each) and, in the calling thread, draws its
    relayed progress bar, prints its other lines and writes them to the log (progress every LOG_INTERVAL_S)."""

    def __init__(self, proc: subprocess.Popen[str], log: TextIO) -> None:
        self.proc, self.log = proc, log
        self.lines: queue.Queue[tuple[TextIO, str | None]] = queue.Queue()
        self.open = 2
        self.errors: list[str] = []
        self.bar = RelayedBar()
        self.logged_progress = 0.0
        for pipe, shown in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
            threading.Thread(target=self._pump, args=(pipe, shown), daemon=True).start()

    def _pump(self, pipe: Any, shown: TextIO) -> None:
        for line in pipe:
            self.lines.put((shown, line))
        self.lines.put((shown, None))

    def follow(self, deadline: float | None) -> None:
        """Until both pipes close (the process ended); TimeoutExpired past ``deadline``. The waits are short, so a
        KeyboardInterrupt arrives here at once."""
        while self.open:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.proc.args, 0)
            try:
                shown, line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                self.open -= 1
                if not self.open:
                    self.bar.close()
                continue
            self._take(shown, line)
        self.proc.wait()

    def _take(self, shown: TextIO, line: str) -> None:
        if self.bar.feed(line):
            now = time.monotonic()
            # The log keeps a line per interval and the last one, not every state.
            if now - self.logged_progress >= LOG_INTERVAL_S or self.bar.state.get("closed"):
                self.log.write(self.bar.describe() + "\n")
                self.log.flush()
                self.logged_progress = now
            return
        self.log.write(line)
        self.log.flush()
        self.bar.write(line.rstrip("\n"), file=shown)
        if shown is sys.stderr:
            self.errors.append(line)


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


# What a training run executes: ``python -m lib.train`` and the lib modules it imports (lib.code). Figures,
# summaries and the kit's machinery are not among them, so editing those reuses every run.
TRAINING_CODE = ("lib.train",)


def keyed(settings: TrainSettings, folder: Path) -> TrainSettings:
    """``settings`` writing to ``<folder>-<key>``, the key a digest of the settings (the run folder aside) and of
    the code the run executes (:data:`TRAINING_CODE`): a rerun resumes or reuses a finished run only when both are
    the same, and trains afresh otherwise (``runs/`` keeps the older runs; delete them at will). Says so when the
    folder exists."""
    described = json.dumps({**asdict(replace(settings, out="")), "code": code_digest(TRAINING_CODE)}, sort_keys=True)
    out = Path(f"{folder}-{hashlib.sha256(described.encode()).hexdigest()[:10]}")
    if (out / "checkpoint.pt").is_file():
        print(f"{out.name}: reusing the run with these settings and training code (resumed if unfinished)")
    return replace(settings, out=str(out))


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
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """FID of every model at every solver under the named ``protocol`` of lib.fid (true NFE checked against the
    grid) -> (our rows, rows joined with the paper's). ``features="random"`` scores with lib.fid's random
    stand-in network: offline, not comparable. ``dataset_res`` / ``dataset_split`` pick clean-fid's
    precomputed statistics of a named dataset (cifar10 32 train, ffhq 256 trainval70k); the generated images
    must have that size (None: any size). ``paper-torcheval`` references are split images (CIFAR-10 root, HDF5
    shards, image folder); relative paths are taken from the repository, like the notebooks' parameters.
    ``progress``: a bar over the (model, solver) evaluations (off where a caller draws its own)."""
    extractor = feature_network(features, check_protocol(protocol))  # both checked before any sampling
    if protocol == PAPER_PROTOCOL:
        reference = str(REPO_ROOT / reference)  # an absolute reference stays as it is
    ours: list[dict[str, Any]] = []
    evaluations = [(name, loaded, solver) for name, loaded in models.items() for solver in solvers]
    for name, loaded, solver in progress_bar(evaluations, desc="FID (model x solver)", disable=not progress):
        ours += [
            {"method": name, **row}
            for row in fid_rows(
                loaded,
                [solver],
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
    snapshots = [
        (name, step, path)
        for name, checkpoint in checkpoints.items()
        for step, path in kept_checkpoints(checkpoint).items()
    ]
    for name, step, path in progress_bar(snapshots, desc="FID along training (snapshot)"):
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
            progress=False,  # one bar over the snapshots
        )
        rows += [{"method": name, "step": step, **{k: v for k, v in r.items() if k != "method"}} for r in ours]
    return rows


def curvature_rows(
    models: Mapping[str, LoadedModel], num_paths: int, seed: int, device: str, steps: int = 20
) -> list[dict[str, Any]]:
    """Paper Fig. 4: 1 - cos of consecutive velocities along ``steps``-step Euler paths from the same noise
    for every model -> rows {method, step, curvature}."""
    rows: list[dict[str, Any]] = []
    for name, loaded in progress_bar(models.items(), desc="curvature (model)"):
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
    for name, loaded in progress_bar(models.items(), desc="FID of releases (release)"):
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
            progress=False,  # one bar over the releases
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
    models: Mapping[str, LoadedModel], num_images: int, solver: str, seed: int, device: str, progress: bool = True
) -> dict[str, Tensor]:
    """``num_images`` samples of every model from the same noise -> {name: images (N, C, H, W) in [-1, 1] on the
    CPU} (latent models decoded to pixels), for the sample-grid figure (paper Fig. 7). ``progress``: a bar over the
    models (off where a caller draws its own)."""
    return {
        name: torch.cat([to_images(loaded, x) for x, _ in generate(loaded, num_images, solver, seed, device=device)])
        .cpu()
        .clamp(-1, 1)
        for name, loaded in progress_bar(models.items(), desc="sample grids (model)", disable=not progress)
    }
