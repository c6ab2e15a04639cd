"""Run the notebooks with papermill for a profile, check the rerun against the committed results, publish changes.

    python -m lib.kit.reproduce                         # quick profile: rerun, compare, update what changed
    python -m lib.kit.reproduce --profile paper --only 05   # the paper settings (GPUs), one notebook
    python -m lib.kit.reproduce --verify                # rerun into a scratch folder and only compare (make verify)
    python -m lib.kit.reproduce --verify --match-cpu    # ... with the committed runs' CPU capability
    python -m lib.kit.reproduce --list                  # profiles, their notebooks and overrides
    python -m lib.kit.reproduce --profile paper --plan  # runs, steps, GPU-hours, disk, data: runs nothing

Parameters come from lib.kit.profiles (the committed notebooks are the quick profile, ``profiles/paper.json``
overrides them). Every notebook's parameters are checked before any notebook runs.

Each notebook runs into a scratch copy of the results folder and is then compared with the committed results, value
by value (lib.kit.verify): timings are reported, never judged. A folder whose metrics are the same (bit for bit, or
within the stated tolerances) is left as committed, so a rerun on another machine changes no tracked file unless a
metric really changed; a folder whose metrics changed, or that did not exist, replaces the committed one.
``--refresh-timings`` publishes every rerun folder, timings included (an explicit benchmark run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import papermill
from jupyter_client.manager import AsyncKernelManager
from traitlets import default

from lib import REPO_ROOT, cli
from lib.kit import plan, verify
from lib.kit.notebooks import NOTEBOOKS
from lib.kit.profiles import (
    NOTEBOOKS_DIR,
    ProfileError,
    check_parameters,
    load_profile,
    notebook_defaults,
    notebook_path,
    profile_names,
    resolve,
)
from lib.kit.results import replace_folder, results_root

# torch's, MKL's and oneDNN's names for a CPU capability recorded in run.json (torch.backends.cpu).
CAPABILITY_ENVIRONMENT = {
    "AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "AVX512": {
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
    },
    "DEFAULT": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


class NotebookFailed(RuntimeError):
    """A notebook raised: the message names the notebook, the cell and the executed copy."""


class IPCKernelManager(AsyncKernelManager):
    """Kernels talk to papermill over local IPC sockets instead of TCP: no open port, no encryption warning."""

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc"

    @default("ip")
    def _default_ip(self) -> str:
        # jupyter_client's default ("kernel-ipc" in the working directory) lets two kernels started at once, such as
        # two pytest workers' notebooks, pick the same socket files and read each other's messages ("Invalid
        # Signature"); a private folder per kernel keeps them apart and out of the repository.
        return str(Path(tempfile.mkdtemp(prefix="loom-kernel-")) / "kernel")

    def cleanup_ipc_files(self) -> None:
        super().cleanup_ipc_files()
        shutil.rmtree(Path(self.ip).parent, ignore_errors=True)


def run_profile(name: str, parameters: dict[str, Any]) -> str:
    """The profile a run of ``name`` with injected ``parameters`` is filed under (as its kernel will decide)."""
    return resolve(name, {**notebook_defaults(name), **parameters}).profile


def run_notebook(name: str, parameters: dict[str, Any], results_dir: str | Path = "", progress: bool = False) -> Path:
    """Execute one notebook with ``parameters`` -> the executed copy, saved in its results folder
    ``<results>/<profile>/<name>/<name>.ipynb`` once the run has finished (an executed copy of a failed run is
    ``<results>/<profile>/<name>.failed.ipynb``, named in the error).

    The kernel runs with ``NotebookInfo.threads`` torch threads (lib.kit.notebooks) and logged progress bars.
    """
    path = notebook_path(name)
    root = results_root(results_dir)
    check_parameters(name, parameters)
    parameters = {**parameters, "RESULTS_DIR": str(root)}
    folder = root / run_profile(name, parameters) / name
    executing = folder.with_name(f".{name}.executing.ipynb")
    executing.parent.mkdir(parents=True, exist_ok=True)
    threads = str(NOTEBOOKS[name].threads)
    try:
        with environment({"LOOM_PROGRESS": "log", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}):
            papermill.execute_notebook(
                str(path),
                str(executing),
                parameters=parameters,
                cwd=str(NOTEBOOKS_DIR),
                progress_bar=progress,
                kernel_name="python3",
                kernel_manager_class=f"{__name__}.IPCKernelManager",
            )
    except papermill.PapermillExecutionError as err:
        failed = folder.with_name(f"{name}.failed.ipynb")
        os.replace(executing, failed)
        raise NotebookFailed(
            f"notebook {name} failed in cell {err.cell_index} (execution count {err.exec_count}): "
            f"{err.ename}: {err.evalue}\nexecuted copy with the traceback: {failed}"
        ) from None
    output = folder / f"{name}.ipynb"
    os.replace(executing, output)
    strip_machine_paths(output, root.parent)
    folder.with_name(f"{name}.failed.ipynb").unlink(missing_ok=True)
    return output


def strip_machine_paths(executed: Path, base: Path = REPO_ROOT) -> None:
    """Write the executed copy without this machine's folders (papermill records the notebook's path and the
    injected results folder, tracebacks and warnings theirs): ``base`` (the folder holding ``results/`` and
    ``runs/``: the checkout, or a rerun's scratch folder) and the checkout become ``.``, the Python environment
    ``<python>``."""
    text = executed.read_text()
    for folder, name in ((f"{base}/", ""), (str(base), "."), (f"{REPO_ROOT}/", ""), (str(REPO_ROOT), ".")):
        text = text.replace(folder, name)
    executed.write_text(text.replace(sys.prefix, "<python>"))


@contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """Set environment variables for what this process starts (kernels, torchrun), then restore them."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def select(notebooks: dict[str, dict[str, Any]], only: list[str] | None) -> dict[str, dict[str, Any]]:
    """Keep the notebooks whose name or number prefix is in ``only`` (all if None); every entry of ``only`` must
    match a notebook, so a typo is refused instead of silently dropped."""
    if only is None:
        return notebooks

    def matches(name: str, wanted: str) -> bool:
        return name == wanted or name.split("_")[0] == wanted

    unmatched = [o for o in only if not any(matches(n, o) for n in notebooks)]
    if unmatched or not only:
        raise ProfileError(
            f"--only {' '.join(unmatched or only)} matches no notebook of this profile; use names or number "
            f"prefixes of: {', '.join(notebooks)}"
        )
    return {n: p for n, p in notebooks.items() if any(matches(n, o) for o in only)}


def capability_environment(capability: str | None) -> dict[str, str]:
    """Environment that holds torch, MKL and oneDNN to a recorded CPU ``capability`` (None: the machine's own)."""
    if capability is None:
        return {}
    if capability not in CAPABILITY_ENVIRONMENT:
        raise ProfileError(f"cannot force CPU capability {capability!r}; torch knows {sorted(CAPABILITY_ENVIRONMENT)}")
    return CAPABILITY_ENVIRONMENT[capability]


def committed_capability(folder: Path) -> str | None:
    """The CPU capability recorded in a committed run.json (None when there is none)."""
    run = folder / "run.json"
    return json.loads(run.read_text())["device"].get("torch_cpu_capability") if run.is_file() else None


def _top_level_files(root: Path) -> set[str]:
    return {p.name for p in root.glob("*") if p.is_file()}


def rerun(
    name: str, parameters: dict[str, Any], root: Path, profile: str, *, match_cpu: bool, progress: bool
) -> tuple[Path, verify.Comparison]:
    """Run ``name`` into a scratch copy of the results folder ``root`` and compare its folder with the committed one.

    The scratch folder mirrors the repository (``<scratch>/results`` beside ``<scratch>/runs``), so the rerun trains
    afresh and its result files name paths exactly as a run in the repository does. Returns the scratch results
    folder (the caller publishes from it, then deletes its parent) and the comparison.
    """
    scratch = Path(tempfile.mkdtemp(prefix=f"loom-rerun-{name}-")) / "results"
    shutil.copytree(root, scratch)  # later notebooks (10) read what earlier ones wrote
    committed = root / profile / name
    with environment(capability_environment(committed_capability(committed) if match_cpu else None)):
        run_notebook(name, parameters, scratch, progress=progress)
    comparison = (
        verify.compare_folders(scratch / profile / name, committed, name)
        if committed.is_dir()
        else verify.Comparison(name, missing=["(no committed results)"])
    )
    return scratch, comparison


def publish(name: str, scratch: Path, root: Path, profile: str) -> None:
    """Copy a rerun's folder (and the top-level files it rewrote, e.g. tables.md) from ``scratch`` into ``root``."""
    staged = root / profile / f".{name}.publish"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(scratch / profile / name, staged)
    replace_folder(staged, root / profile / name)
    for file in _top_level_files(scratch):
        if not (root / file).is_file() or (root / file).read_bytes() != (scratch / file).read_bytes():
            shutil.copy2(scratch / file, root / file)


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.kit.reproduce``: an expected error is one line and status 2 (lib.cli)."""
    return cli.run(reproduce_command, argv)


def reproduce_command(argv: list[str]) -> int:
    parser = cli.parser("python -m lib.kit.reproduce", __doc__)
    parser.add_argument("--profile", default="quick", help=f"one of {profile_names()} (default quick)")
    parser.add_argument("--only", nargs="+", help="notebook names or number prefixes, e.g. 01 03")
    parser.add_argument("--results-dir", default="", help="results root (default: <repo>/results)")
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the profile's notebooks (those of --only) with their parameter overrides",
    )
    parser.add_argument(
        "--verify", action="store_true", help="only compare with the committed results; publish nothing"
    )
    parser.add_argument(
        "--match-cpu",
        action="store_true",
        help="run with the CPU capability recorded in the committed run.json (bit-identical reruns)",
    )
    parser.add_argument(
        "--refresh-timings",
        action="store_true",
        help="publish every rerun folder, even when only timings changed (an explicit benchmark run)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    parser.add_argument(
        "--plan", action="store_true", help="print what the profile would train and need (lib.kit.plan); run nothing"
    )
    args = parser.parse_args(argv)
    notebooks = select(load_profile(args.profile), args.only)
    if args.plan:
        print(plan.format_plan(args.profile, notebooks, results_root(args.results_dir)))
        return 0
    if args.list:
        print(f"profile {args.profile} (profiles: {', '.join(profile_names())}):")
        for name, params in notebooks.items():
            print(f"  {name}: {json.dumps(params) if params else '(the committed parameters)'}")
        return 0
    for name, params in notebooks.items():  # every chosen notebook's parameters, before the first one runs
        check_parameters(name, params)
    return run_all(notebooks, args)


def run_all(notebooks: dict[str, dict[str, Any]], args: argparse.Namespace) -> int:
    """Rerun, compare and (unless --verify) publish every notebook; print a table. Exit status 1 when --verify
    finds a real difference."""
    root = results_root(args.results_dir)
    started, comparisons = time.time(), []
    for i, (name, params) in enumerate(notebooks.items(), start=1):
        profile = run_profile(name, params)
        print(
            f"[{args.profile} {i}/{len(notebooks)}] {name} ({NOTEBOOKS[name].shows}); "
            f"{(time.time() - started) / 60:.1f} min so far",
            flush=True,
        )
        try:
            scratch, comparison = rerun(
                name, params, root, profile, match_cpu=args.match_cpu, progress=not args.no_progress
            )
        except NotebookFailed as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
        comparisons.append(comparison)
        # Within tolerance is the same result: only a real difference (or a new folder) is published.
        publishing = not args.verify and (not comparison.ok or args.refresh_timings)
        if publishing:
            publish(name, scratch, root, profile)
        shutil.rmtree(scratch.parent, ignore_errors=True)
        verdict = "unchanged" if comparison.unchanged else "within tolerance" if comparison.ok else "changed"
        print(
            f"    {verdict}: {'published to' if publishing else 'left as committed in'} {root / profile / name}",
            flush=True,
        )
    print(f"\n{len(notebooks)} notebook(s) in {(time.time() - started) / 60:.1f} min\n{verify.table(comparisons)}")
    return 1 if args.verify and not all(c.ok for c in comparisons) else 0


if __name__ == "__main__":
    sys.exit(main())
