"""Image experiments as the notebooks run them: data on disk -> torchrun training -> FID rows vs the paper.

Training always goes through the same entry point users launch by hand (``torchrun -m lib.train``),
as a subprocess, so a notebook on one CPU and a run on 8 GPUs exercise the same code.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from lib.datasets import CIFAR10_FOLDER, write_fake_cifar10
from lib.fid import DEFAULT_PROTOCOL, PAPER_PROTOCOL, check_protocol, feature_network
from lib.results import REPO_ROOT

if TYPE_CHECKING:  # the UNet stack loads only when a notebook evaluates
    from matplotlib.figure import Figure

    from lib.sample import LoadedModel

PAPER_RESULTS = Path(__file__).resolve().parent / "reference" / "paper_results.csv"

# Paper Table 1 / Table 5 rows -> lib.train options.
ABLATIONS: dict[str, dict[str, Any]] = {
    "I-CFM": {"coupling": "independent"},
    "w/o saving local reassignments": {"coupling": "minibatch_ot"},
    "fixed source w/o reassignments": {"coupling": "loom", "no_swaps": True},
    "train after convergence": {"coupling": "loom", "converge_first": True},
    "LOOM-CFM": {"coupling": "loom"},
}


class TrainingFailed(RuntimeError):
    """lib.train exited with an error: the message carries the command and the end of its output."""


class ScriptFailed(RuntimeError):
    """A data_prep script exited with an error: the message carries the command and the end of its output."""


def fabricate_cifar10(root: Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """A small CIFAR-10 in the official on-disk format under ``root`` (kept if already there) -> root."""
    if not (root / CIFAR10_FOLDER / "data_batch_1").is_file():
        write_fake_cifar10(root, num_train=num_train, num_test=num_test, seed=seed)
    return root


def write_reference_folder(images: Tensor, folder: Path) -> Path:
    """uint8 images (N, 3, H, W) -> PNG files in ``folder`` (a clean-fid folder reference) -> folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        save_image(image.float() / 255, folder / f"{i:06d}.png")
    return folder


def train_argv(out: Path, options: Mapping[str, Any]) -> list[str]:
    """lib.train command-line arguments for ``options`` (names as in its --help, underscores allowed).

    True switches a flag on; False leaves it at lib.train's default, which is off for every flag.
    """
    argv = ["--out", str(out), "--no-progress"]  # the bar would only fill the captured output
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False:
            argv += [flag, str(value)]
    return argv


def launch_training(out: Path, options: Mapping[str, Any], nproc: int = 1, timeout_s: float | None = None) -> Path:
    """Run ``torchrun --nproc_per_node=nproc -m lib.train`` (plain ``python -m lib.train`` for one process).

    Resumes by itself when ``out/checkpoint.pt`` exists. Returns the checkpoint path.
    """
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    command = [sys.executable, *launcher, "-m", "lib.train", *train_argv(out, options)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise TrainingFailed(f"{' '.join(command)}\nexited with {done.returncode}:\n{done.stderr[-4000:]}")
    return out / "checkpoint.pt"


def run_script(script: str, argv: Sequence[str], timeout_s: float | None = None) -> str:
    """Run ``python <script> <argv>`` from the repository, as a user runs the data_prep scripts -> its stdout."""
    command = [sys.executable, script, *map(str, argv)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise ScriptFailed(f"{' '.join(command)}\nexited with {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


def paper_rows(table: str, dataset: str) -> list[dict[str, str]]:
    """Rows of the paper's results (lib/reference/paper_results.csv) for one table and dataset."""
    with open(PAPER_RESULTS, newline="") as f:
        return [r for r in csv.DictReader(f) if r["table"] == table and r["dataset"] == dataset]


def side_by_side(ours: list[Mapping[str, Any]], paper: list[Mapping[str, str]]) -> list[dict[str, Any]]:
    """Join our rows {method, solver, nfe, fid} with the paper's on (method, solver, NFE).

    The paper reports fixed-grid results by NFE; ours carry the true network calls. Adaptive (dopri5)
    rows are joined on the method alone, since their NFE is whatever the solver needed.
    """
    rows = []
    for row in ours:
        method, family = row["method"], str(row["solver"]).split("-")[0]
        match = [p for p in paper if p["method"] == method and _same_setting(p, family, row["nfe"])]
        rows.append({**row, "paper_fid": float(match[0]["fid"]) if match else None,
                     "paper_nfe": match[0]["nfe"] if match else None,
                     "paper_provenance": match[0]["provenance"] if match else None})
    return rows


def _same_setting(paper: Mapping[str, str], family: str, nfe: float) -> bool:
    """A paper row matches our solver family at equal NFE (any NFE for dopri5; where the paper does not
    name its solver, "unknown", the NFE alone decides)."""
    if family == "dopri5":
        return paper["solver"] == "dopri5"
    return paper["solver"] in (family, "unknown") and paper["nfe"] == str(int(nfe))


def run_name(row: str) -> str:
    """A folder name for a table row: 'w/o saving local reassignments' -> 'wo_saving_local_reassignments'."""
    return "_".join("".join(c for c in word if c.isalnum()) for word in row.lower().split()).strip("_")


def read_history(checkpoint: Path) -> list[dict[str, float]]:
    """The loss / swaps / cost records lib.train wrote beside ``checkpoint`` (history.json)."""
    return json.loads((checkpoint.parent / "history.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# The steps every image notebook takes: train the rows, evaluate, draw
# ---------------------------------------------------------------------------------------------------------
def train_rows(rows: Sequence[str], options: Mapping[str, Any], runs: Path,
               nproc: int = 1) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """Train one model per paper row: ``options`` with the row's coupling (ABLATIONS) on top, each in
    ``runs/<run_name(row)>`` (a rerun resumes) -> (checkpoint by row, training history rows with "method")."""
    checkpoints: dict[str, Path] = {}
    history: list[dict[str, Any]] = []
    for row in rows:
        if row not in ABLATIONS:
            raise ValueError(f"unknown row {row!r}; rows are {sorted(ABLATIONS)}")
        checkpoints[row] = launch_training(runs / run_name(row), {**options, **ABLATIONS[row]}, nproc)
        history += [{"method": row, **record} for record in read_history(checkpoints[row])]
    return checkpoints, history


def eval_targets(eval_checkpoint: str, repo: Path = REPO_ROOT) -> dict[str, str | Path]:
    """``EVAL_CHECKPOINT`` -> {row name: what lib.sample.load_model takes}: ``released:<name>`` is passed on
    (fetched through huggingface_hub), a path is taken relative to the repository."""
    from lib.released import PREFIX

    if eval_checkpoint.startswith(PREFIX):
        return {eval_checkpoint[len(PREFIX):]: eval_checkpoint}
    return {Path(eval_checkpoint).stem: repo / eval_checkpoint}


def fid_table(models: Mapping[str, LoadedModel], solvers: Sequence[str], num_samples: int, reference: str,
              paper: list[dict[str, str]], *, seed: int, device: str, features: str = "inception",
              dataset_res: int | None = 32, dataset_split: str = "train",
              protocol: str = DEFAULT_PROTOCOL) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """FID of every model at every solver under the named ``protocol`` of lib.fid (true NFE checked against the
    grid) -> (our rows, rows joined with the paper's). ``features="random"`` scores with lib.fid's random
    stand-in network: offline, not comparable. ``dataset_res`` / ``dataset_split`` pick clean-fid's
    precomputed statistics of a named dataset (cifar10 32 train, ffhq 256 trainval70k); the generated images
    must have that size (None: any size). ``paper-torcheval`` references are split images (CIFAR-10 root, HDF5
    shards, image folder); relative paths are taken from the repository, like the notebooks' parameters."""
    from lib.evaluate import fid_rows
    from lib.solvers import parse_solver

    extractor = feature_network(features, check_protocol(protocol))  # both checked before any sampling
    if protocol == PAPER_PROTOCOL:
        reference = str(REPO_ROOT / reference)  # an absolute reference stays as it is
    ours: list[dict[str, Any]] = []
    for name, loaded in models.items():
        ours += [{"method": name, **row} for row in fid_rows(
            loaded, solvers, num_samples, reference, seed=seed, device=device, batch_size=min(250, num_samples),
            dataset_res=dataset_res, dataset_split=dataset_split, feature_extractor=extractor, protocol=protocol)]
    for row in ours:
        expected = parse_solver(row["solver"]).expected_nfe
        if expected is not None and row["nfe"] != expected:  # midpoint-k must cost 2k network calls
            raise RuntimeError(f"{row['method']} {row['solver']}: counted {row['nfe']} network calls, expected {expected}")
    return ours, side_by_side(ours, paper)


def curvature_rows(models: Mapping[str, LoadedModel], num_paths: int, seed: int, device: str,
                   steps: int = 20) -> list[dict[str, Any]]:
    """Paper Fig. 4: 1 - cos of consecutive velocities along ``steps``-step Euler paths from the same noise
    for every model -> rows {method, step, curvature}."""
    from lib.evaluate import path_curvature
    from lib.sample import noise_for_images

    rows: list[dict[str, Any]] = []
    for name, loaded in models.items():
        z = noise_for_images(loaded, seed, num_paths, device)
        per_step = path_curvature(loaded.model.to(device), z, steps=steps)
        rows += [{"method": name, "step": i + 1, "curvature": float(c)} for i, c in enumerate(per_step)]
    return rows


def fid_vs_nfe_figure(fid: Sequence[Mapping[str, Any]], curvature: Sequence[Mapping[str, Any]],
                      features: str) -> Figure:
    """Two panels: FID against true NFE per method (paper Fig. 3) and curvature per Euler step (Fig. 4).
    FIDs of different protocols share no scale: rows of more than one protocol are refused."""
    from lib import plots

    protocols = sorted({str(r.get("fid_protocol", "unrecorded")) for r in fid})
    if len(protocols) > 1:
        raise ValueError(f"FID rows of several protocols {protocols} cannot share one axis; plot each on its own")
    fig, axes = plots.figure(2, size=3.6)
    for method in dict.fromkeys(r["method"] for r in fid):
        mine = [r for r in fid if r["method"] == method]
        axes[0][0].plot([r["nfe"] for r in mine], [r["fid"] for r in mine], marker="o", label=method)
    axes[0][0].set(xscale="log", xlabel="NFE (true network calls)",
                   ylabel=f"FID ({', '.join(protocols)}, {features} features)", title="FID vs NFE")
    axes[0][0].legend(fontsize=6)
    plots.draw_curves(axes[0][1], curvature, "step", "curvature", "method", "curvature per Euler step", logy=True)
    fig.tight_layout()
    return fig


def sample_grids_figure(models: Mapping[str, LoadedModel], num_images: int, solver: str, seed: int,
                        device: str) -> Figure:
    """One panel per model: ``num_images`` samples from the same noise (latent models decoded to pixels)."""
    from lib import plots
    from lib.sample import generate, to_images

    fig, axes = plots.figure(len(models), size=3.0)
    for ax, (name, loaded) in zip(axes[0], models.items()):
        images = torch.cat([to_images(loaded, x) for x, _ in generate(loaded, num_images, solver, seed, device=device)])
        grid = make_grid(images.cpu().clamp(-1, 1), nrow=max(1, int(num_images**0.5)), normalize=True,
                         value_range=(-1, 1))
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_title(f"{name}\n{solver}", fontsize=7)
        ax.axis("off")
    return fig
