"""Write what a notebook measured under ``results/<profile>/<notebook>/`` with its provenance; read it back.

Layout of one run's folder: metrics as CSV (tables: a list of rows) or JSON (a dict), figures as PNG + PDF, and
``run.json`` with the parameters, profile, git commit, package versions, the exact assignment's solver (lib.assignment),
the hardware and software settings that decide bit-identity (CPU model and capability, BLAS/oneDNN ISA settings,
threads, CUDA/cuDNN and determinism flags), seed, wall time and the files written. Every number in results/ sits
beside the run.json of the run that made it.

Two results roots: the committed ``results/``, which only ``lib.kit.reproduce`` (make reproduce, verify, timings) and
the benchmark commands publish into, and the git-ignored ``results-local/``, where a notebook run anywhere else
(JupyterLab, plain papermill, nbval) writes, so an interactive session leaves the repository as it found it.

A run writes into a staging folder (``.<notebook>.partial`` beside the final one) and :meth:`Run.finish` swaps it
in whole, so a folder never mixes two runs and an interrupted run leaves the previous results untouched; a staging
folder left unfinished is removed when the process (the kernel) exits. Paths under the repository are stored
relative to it, so committed results hold nothing machine-specific.
"""

from __future__ import annotations

import atexit
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from lib import REPO_ROOT, assignment
from lib.kit import profiles

PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "lapjv",
    "torchdiffeq",
    "clean-fid",
    "torcheval",
    "scikit-learn",
    "h5py",
    "matplotlib",
    "papermill",
    "diffusers",
)
# Environment variables that change which kernels torch, MKL and oneDNN run, hence the last bits of every number.
ISA_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


COMMITTED_RESULTS = REPO_ROOT / "results"  # tracked: what lib.kit.reproduce published
LOCAL_RESULTS = REPO_ROOT / "results-local"  # git-ignored: any other run (JupyterLab, plain papermill)


def results_root(root: str | os.PathLike[str] = "") -> Path:
    """Where a run writes: ``root`` if given (RESULTS_DIR), else $LOOM_RESULTS, else the git-ignored
    ``<repo>/results-local``. lib.kit.reproduce always names its root, so only it publishes into ``results/``."""
    return Path(root or os.environ.get("LOOM_RESULTS", "") or LOCAL_RESULTS)


def published_root(root: str | os.PathLike[str] = "") -> Path:
    """The results that are read back and published into: ``root`` if given, else $LOOM_RESULTS, else the
    committed ``<repo>/results``."""
    return Path(root or os.environ.get("LOOM_RESULTS", "") or COMMITTED_RESULTS)


def portable(value: Any, base: Path = REPO_ROOT) -> Any:
    """``value`` with every absolute path under ``base`` (the folder holding ``results/`` and ``runs/``: the repository,
    or a rerun's scratch folder) or under the repository made relative (recursively in containers), so a result
    file reads the same whoever made it, wherever."""
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        for root in dict.fromkeys((Path(base), REPO_ROOT)):
            value = value.replace(f"{root}/", "").replace(str(root), ".")
        return value
    if isinstance(value, Mapping):
        return {k: portable(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, base) for v in value]
    return value


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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, platform.processor elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_description() -> dict[str, Any]:
    """Where the run computed and everything that decides whether a rerun matches it bit for bit."""
    info: dict[str, Any] = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "isa_environment": {name: os.environ[name] for name in ISA_VARIABLES if name in os.environ},
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if torch.cuda.is_available():
        info.update(
            {
                "cuda_device": torch.cuda.get_device_name(0),
                "cuda_device_count": torch.cuda.device_count(),
                "cuda_version": torch.version.cuda,
                "cudnn_version": torch.backends.cudnn.version(),
                "cudnn_deterministic": torch.backends.cudnn.deterministic,
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            }
        )
    return info


def cpu_seconds() -> float:
    """CPU seconds spent by this process and the child processes it waited for (torchrun, study workers).

    A notebook's kernel computes on one torch thread, so this is about its time alone on one idle core; unlike the
    wall time it does not grow when notebooks run side by side on shared cores (lib.kit.reproduce --jobs).
    """
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab or papermill), where figures are displayed inline."""
    try:
        from IPython import get_ipython  # IPython comes with the kernel; absent in plain scripts is fine
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


_unfinished: set[Path] = set()  # staging folders of runs started in this process and not finished


@atexit.register
def _remove_unfinished() -> None:
    """At exit (a kernel shut down or restarted, a script that raised) remove what unfinished runs staged."""
    for staging in _unfinished:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class Run:
    """One notebook run: where it writes and what it records. Call :meth:`finish` at the end."""

    notebook: str
    profile: str
    parameters: dict[str, Any]
    seed: int
    directory: Path  # the final folder; files are written to :attr:`staging` until finish()
    started: float = field(default_factory=time.time)
    cpu_started: float = field(default_factory=lambda: cpu_seconds())
    commit: str = field(default_factory=git_commit)  # read at the start: the code that ran, not the code at finish
    files: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """The results root this run writes under (``<root>/<profile>/<notebook>``)."""
        return self.directory.parent.parent

    @property
    def base(self) -> Path:
        """The folder holding this run's results root and ``runs/``: the repository for ``<repo>/results``."""
        return self.root.parent

    @property
    def staging(self) -> Path:
        """Where this run writes until :meth:`finish` swaps it in: ``.<notebook>.partial`` beside the final folder."""
        return self.directory.with_name(f".{self.directory.name}.partial")

    def runs_dir(self, runs: str = "") -> Path:
        """Where this notebook keeps training runs and the data it makes: ``runs`` (RUNS_DIR) relative to the
        repository if given, else ``runs/<profile>/<notebook>`` beside the results folder: the repository's
        ``runs/`` for its results/, a scratch folder's own for a rerun or a test, so those never reuse what an
        earlier run trained. Within a folder a training run is reused only with the same settings and code
        (lib.experiments.pipeline.row_settings)."""
        if runs:
            return REPO_ROOT / runs
        return self.base / "runs" / self.profile / self.notebook

    def path(self, name: str) -> Path:
        """A path inside this run's folder (recorded as written)."""
        self.files.append(name)
        return self.staging / name

    def write_table(self, name: str, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write rows (dicts) as ``<name>.csv``; a key missing from a row is left empty in that row."""
        if not rows:
            raise ValueError(f"table {name!r} has no rows")
        path = self.path(f"{name}.csv")
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))  # union, first-seen order
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(portable(dict(row), self.base) for row in rows)
        return path

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        """Write a dict of metrics as ``<name>.json``."""
        path = self.path(f"{name}.json")
        path.write_text(json.dumps(portable(data, self.base), indent=2, default=float) + "\n")
        return path

    def save_figure(self, fig: Any, name: str) -> None:
        """Save a matplotlib figure as ``<name>.png`` and ``<name>.pdf`` and, in a notebook, show it inline.

        The saved PNG is what is shown (so JupyterLab, the executed copy and results/ hold the same picture
        whatever matplotlib backend is active); the figure is closed so it is not drawn a second time. Nothing is
        returned, so a cell ending with this call shows the figure and no list of (staging) paths.
        """
        paths = [self.path(f"{name}.{ext}") for ext in ("png", "pdf")]
        for p in paths:
            fig.savefig(
                p,
                bbox_inches="tight",
                dpi=150,
                metadata={"CreationDate": None} if p.suffix == ".pdf" else {"Software": None},
            )
        if in_notebook():
            from IPython.display import Image, display  # only reached inside a kernel, where IPython is loaded

            display(Image(filename=str(paths[0])))
        plt.close(fig)

    def provenance(self) -> dict[str, Any]:
        """Everything needed to say where this folder's numbers came from."""
        return {
            "notebook": self.notebook,
            "profile": self.profile,
            "parameters": portable(self.parameters, self.base),
            "seed": self.seed,
            "git_commit": self.commit,
            "versions": package_versions(),
            "assignment_solver": assignment.solver_description(),  # which exact solver ran for which points
            "device": device_description(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_time_s": round(time.time() - self.started, 2),
            "cpu_time_s": round(cpu_seconds() - self.cpu_started, 2),
            "files": sorted(set(self.files)),
        }

    def finish(self) -> None:
        """Write ``run.json``, swap the staging folder in for the previous results and say where they are."""
        (self.staging / "run.json").write_text(json.dumps(self.provenance(), indent=2, default=str) + "\n")
        replace_folder(self.staging, self.directory)
        _unfinished.discard(self.staging)
        print(f"{len(set(self.files)) + 1} files in {portable(str(self.directory), self.base)}")


def replace_folder(new: Path, final: Path) -> None:
    """Put folder ``new`` in place of ``final`` by renames: at every moment ``final`` is the old or the new whole."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def start_run(notebook: str, namespace: MutableMapping[str, Any], profile: str | None = None) -> Run:
    """Open a run of ``notebook`` and print its resolved settings.

    namespace: the notebook's ``globals()``. Its parameters are filed under the profile whose settings they are
    (lib.kit.profiles.resolve); with ``QUICK = False`` set by hand the paper profile's overrides are applied to the
    namespace first. ``profile`` given explicitly (command lines that are not notebooks, e.g. lib.kit.benchmark)
    skips that resolution. ``SEED`` is the seed, ``RESULTS_DIR`` the results root.
    """
    if profile is None:
        resolved = profiles.resolve(notebook, {k: namespace[k] for k in profiles.notebook_defaults(notebook)})
        namespace.update(resolved.applied)
        params, profile = resolved.parameters, resolved.profile
        _say_profile(notebook, resolved)
    else:
        params = dict(namespace)
    directory = results_root(params.get("RESULTS_DIR", "")) / profile / notebook
    run = Run(
        notebook=notebook, profile=profile, parameters=params, seed=int(params.get("SEED", 0)), directory=directory
    )
    shutil.rmtree(run.staging, ignore_errors=True)  # what a run killed before its exit hook left
    run.staging.mkdir(parents=True)
    _unfinished.add(run.staging)
    print(summary_line(run))
    return run


def summary_line(run: Run) -> str:
    """One line saying what runs where and where its results go; the full provenance goes to run.json."""
    device = device_description()
    where = (
        f"{device['cuda_device']} (cuda)"
        if "cuda_device" in device
        else f"cpu {device['torch_cpu_capability']}, {device['torch_threads']} torch thread(s)"
    )
    results = portable(str(run.directory), run.base) + "/"
    if run.root == LOCAL_RESULTS:
        results += " (git-ignored; make reproduce publishes to results/)"
    commit = run.commit[:12] + ("+dirty" if run.commit.endswith("+dirty") else "")
    return f"{run.notebook}: profile {run.profile}, commit {commit}, {where}, seed {run.seed} -> {results}"


def _say_profile(notebook: str, resolved: profiles.Resolved) -> None:
    """Print what the resolution did: the overrides it applied, or why the run is a custom one."""
    if resolved.applied:
        print(
            f"QUICK = False: applied the paper profile's settings of {notebook} "
            f"(lib/kit/profiles/paper.json): {resolved.applied}"
        )
    if resolved.profile == "custom":
        changed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in resolved.differences.items())
        print(
            f"These parameters differ from the {'quick' if resolved.parameters.get('QUICK', True) else 'paper'} "
            f"profile ({changed}), so this run is filed under results/custom/{notebook}/, which no table reads. "
            "For a profile run restore the committed values (quick) or set only QUICK = False (paper)."
        )


def read_table(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read a CSV written by :meth:`Run.write_table` (values come back as strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
