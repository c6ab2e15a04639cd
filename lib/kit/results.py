"""Write what a notebook measured under ``results/<profile>/<notebook>/`` with its provenance.

Layout of one run's folder:
    metrics as CSV (tables: a list of rows) or JSON (a dict), figures as PNG + PDF, and ``run.json``
    with the parameters, profile, git commit, package versions, device, seed, wall time and the list of
    files written. Every number in results/ sits beside the run.json of the run that made it.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lib import REPO_ROOT

PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "torchdiffeq",
    "clean-fid",
    "scikit-learn",
    "h5py",
    "matplotlib",
    "papermill",
    "diffusers",
)
PARAMETER_TYPES = (bool, int, float, str, type(None), list, tuple, dict)


def results_root(root: str | os.PathLike[str] = "") -> Path:
    """The results folder: ``root`` if given, else $LOOM_RESULTS, else ``<repo>/results``."""
    return Path(root or os.environ.get("LOOM_RESULTS", "") or REPO_ROOT / "results")


def collect_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The UPPER_CASE literals of a notebook's namespace (its parameters cell, after injection)."""
    return {
        k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_") and isinstance(v, PARAMETER_TYPES)
    }


def git_commit() -> str:
    """The checkout's commit, with '+dirty' when tracked files differ from it; 'unknown' outside git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "lib", "notebooks")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description() -> dict[str, Any]:
    """Where the run computed ("cpu" or "cuda"), CPU model and thread count, and the GPU name if there is one."""
    info: dict[str, Any] = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_device_count"] = torch.cuda.device_count()
    return info


@dataclass
class Run:
    """One notebook run: where it writes and what it records. Call :meth:`finish` at the end."""

    notebook: str
    profile: str
    parameters: dict[str, Any]
    seed: int
    directory: Path
    started: float = field(default_factory=time.time)
    commit: str = field(default_factory=git_commit)  # read at the start: the code that ran, not the code at finish
    files: list[str] = field(default_factory=list)

    def path(self, name: str) -> Path:
        """A path inside this run's folder (recorded as written)."""
        self.files.append(name)
        return self.directory / name

    def write_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write rows (dicts) as ``<name>.csv``; a key missing from a row is left empty in that row."""
        if not rows:
            raise ValueError(f"table {name!r} has no rows")
        path = self.path(f"{name}.csv")
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))  # union, first-seen order
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        return path

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        """Write a dict of metrics as ``<name>.json``."""
        path = self.path(f"{name}.json")
        path.write_text(json.dumps(data, indent=2, default=float) + "\n")
        return path

    def save_figure(self, fig: Any, name: str) -> list[Path]:
        """Save a matplotlib figure as ``<name>.png`` and ``<name>.pdf``."""
        paths = [self.path(f"{name}.{ext}") for ext in ("png", "pdf")]
        for p in paths:
            fig.savefig(
                p, bbox_inches="tight", dpi=150, metadata={"CreationDate": None} if p.suffix == ".pdf" else None
            )
        return paths

    def provenance(self) -> dict[str, Any]:
        """Everything needed to say where this folder's numbers came from."""
        return {
            "notebook": self.notebook,
            "profile": self.profile,
            "parameters": self.parameters,
            "seed": self.seed,
            "git_commit": self.commit,
            "versions": package_versions(),
            "device": device_description(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_time_s": round(time.time() - self.started, 2),
            "files": sorted(set(self.files)),
        }

    def finish(self) -> Path:
        """Write ``run.json``; returns its path."""
        path = self.directory / "run.json"
        path.write_text(json.dumps(self.provenance(), indent=2, default=str) + "\n")
        return path


def start_run(notebook: str, parameters: Mapping[str, Any], quiet: bool = False) -> Run:
    """Open ``<results>/<profile>/<notebook>/`` for a notebook run and print its resolved config.

    parameters: the notebook's parameters (see :func:`collect_parameters`); ``QUICK`` picks the
    profile name ("quick" or "paper"), ``SEED`` the seed, ``RESULTS_DIR`` the results root.
    """
    params = dict(parameters)
    profile = "quick" if params.get("QUICK", True) else "paper"
    seed = int(params.get("SEED", 0))
    directory = results_root(params.get("RESULTS_DIR", "")) / profile / notebook
    directory.mkdir(parents=True, exist_ok=True)
    run = Run(notebook=notebook, profile=profile, parameters=params, seed=seed, directory=directory)
    if not quiet:
        shown = (
            directory.relative_to(REPO_ROOT) if directory.is_relative_to(REPO_ROOT) else directory
        )  # no machine path
        print(
            json.dumps(
                {
                    "notebook": notebook,
                    "profile": profile,
                    "results": str(shown),
                    "parameters": params,
                    "versions": package_versions(),
                    "device": device_description(),
                },
                indent=1,
                default=str,
            )
        )
    return run


def read_table(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read a CSV written by :meth:`Run.write_table` (values come back as strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
