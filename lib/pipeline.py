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
from typing import Any, Mapping

from torch import Tensor
from torchvision.utils import save_image

from lib.datasets import CIFAR10_FOLDER, write_fake_cifar10
from lib.results import REPO_ROOT

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
        match = [p for p in paper if p["method"] == method and p["solver"] == family
                 and (family == "dopri5" or p["nfe"] == str(int(row["nfe"])))]
        rows.append({**row, "paper_fid": float(match[0]["fid"]) if match else None,
                     "paper_nfe": match[0]["nfe"] if match else None})
    return rows


def run_name(row: str) -> str:
    """A folder name for a table row: 'w/o saving local reassignments' -> 'wo_saving_local_reassignments'."""
    return "_".join("".join(c for c in word if c.isalnum()) for word in row.lower().split()).strip("_")


def read_history(checkpoint: Path) -> list[dict[str, float]]:
    """The loss / swaps / cost records lib.train wrote beside ``checkpoint`` (history.json)."""
    return json.loads((checkpoint.parent / "history.json").read_text())
