"""Run the notebooks with papermill for a profile, check the rerun against the committed results, publish changes.

    python -m lib.kit.reproduce                         # quick profile: rerun, compare, update what changed
    python -m lib.kit.reproduce --profile paper --only 05   # the paper settings (GPUs), one notebook
    python -m lib.kit.reproduce --verify                # rerun into a scratch folder and only compare (make verify)
    python -m lib.kit.reproduce --verify --match-cpu    # ... with the committed runs' CPU capability
    python -m lib.kit.reproduce --list                  # profiles, their notebooks and overrides
    python -m lib.kit.reproduce --profile paper --plan  # runs, steps, GPU-hours, disk, data: runs nothing

Parameters come from lib.kit.profiles (the committed notebooks are the quick profile, ``profiles/paper.json``
overrides them). Every notebook's parameters are checked before any notebook runs.

Notebooks run side by side, one per CPU core (``--jobs``), each in a worker process with one torch thread; notebook
10, which reads the others' results, runs once they are published. Each runs into a scratch copy of the results
folder (removed when it is done, failed or interrupted) and is then compared with the committed results, value
by value (lib.kit.verify): timings are reported, never judged. A folder whose metrics are the same (bit for bit, or
within the stated tolerances) is left as committed, so a rerun on another machine changes no tracked file unless a
metric really changed; a folder whose metrics changed, or that did not exist, replaces the committed one.
``--refresh-timings`` publishes every rerun folder, timings included (an explicit benchmark run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
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
from lib.kit.results import portable, published_root, replace_folder, results_root
from lib.progress import progress

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


KERNEL_LOG = "LOOM_KERNEL_LOG"  # set by a runner's worker: where its kernels' own log goes (IPCKernelManager)
KERNEL_FOLDERS: list[str] = []  # this process's kernels' socket folders (IPCKernelManager)


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
        # In the temporary folder, not deeper: a socket's path must fit in 107 bytes. Recorded, so that a worker
        # stopped by Ctrl-C mid-cell removes what its kernel's own cleanup did not get to.
        folder = tempfile.mkdtemp(prefix="loom-kernel-")
        KERNEL_FOLDERS.append(folder)
        return str(Path(folder) / "kernel")

    @default("connection_file")
    def _default_connection_file(self) -> str:
        return str(Path(self.ip).parent / "connection.json")  # beside the sockets, removed with them

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        # Under the side-by-side runner a kernel's own log (not its cells' output, which papermill records) goes to a
        # file in its notebook's scratch folder: a kernel stopped mid-cell by Ctrl-C logs a traceback of closed
        # sockets that would otherwise reach the user's terminal.
        log = os.environ.get(KERNEL_LOG)
        if log:
            with open(log, "ab") as stderr:  # the kernel holds its own copy of the descriptor
                return await super()._async_launch_kernel(kernel_cmd, stderr=stderr, **kw)
        return await super()._async_launch_kernel(kernel_cmd, **kw)

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
    name: str, parameters: dict[str, Any], root: Path, profile: str, scratch: Path, *, match_cpu: bool, progress: bool
) -> verify.Comparison:
    """Run ``name`` into ``scratch``, a copy of the results folder ``root``, and compare its folder with the committed
    one -> the comparison.

    ``scratch`` is ``<folder>/results``, so the rerun's training runs go to ``<folder>/runs``: it trains afresh,
    and its result files name paths exactly as a run in the repository does. The caller publishes from it and then
    deletes ``<folder>``.
    """
    if root.is_dir():
        shutil.copytree(root, scratch)  # later notebooks (10) read what earlier ones wrote
    else:
        scratch.mkdir(parents=True)  # a first run into a new results folder
    committed = root / profile / name
    with environment(capability_environment(committed_capability(committed) if match_cpu else None)):
        run_notebook(name, parameters, scratch, progress=progress)
    if not committed.is_dir():
        return verify.Comparison(name, missing=["(no committed results)"])
    return verify.compare_folders(scratch / profile / name, committed, name)


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
    parser.add_argument(
        "--jobs",
        type=cli.positive_int,
        default=0,
        help="notebooks run side by side (default: one per CPU core; 1: one at a time, with per-cell progress)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bar (with --jobs 1)")
    parser.add_argument(
        "--plan", action="store_true", help="print what the profile would train and need (lib.kit.plan); run nothing"
    )
    args = parser.parse_args(argv)
    notebooks = select(load_profile(args.profile), args.only)
    if args.plan:
        print(plan.format_plan(args.profile, notebooks, published_root(args.results_dir)))
        return 0
    if args.list:
        print(f"profile {args.profile} (profiles: {', '.join(profile_names())}):")
        for name, params in notebooks.items():
            print(f"  {name}: {json.dumps(params) if params else '(the committed parameters)'}")
        return 0
    for name, params in notebooks.items():  # every chosen notebook's parameters, before the first one runs
        check_parameters(name, params)
    return run_all(notebooks, args)


def default_jobs() -> int:
    """Notebooks run side by side by default: one per core this process may use (each kernel has one torch thread)."""
    return max(1, len(os.sched_getaffinity(0)) // max(info.threads for info in NOTEBOOKS.values()))


def estimated_seconds(root: Path, profile: str, name: str) -> float:
    """How long ``name`` took when last published (its run.json: CPU time, else wall time); 0 if never run."""
    run = root / profile / name / "run.json"
    if not run.is_file():
        return 0.0
    recorded = json.loads(run.read_text())
    return float(recorded.get("cpu_time_s", recorded.get("wall_time_s", 0.0)))


def waves(notebooks: dict[str, dict[str, Any]], root: Path, profile: str) -> list[list[str]]:
    """The order of a run: first every notebook that reads no other's results, longest first (so the last to finish
    is a short one), then those that read the others' (notebook 10), once all of those are published."""
    readers = [n for n in notebooks if NOTEBOOKS[n].reads_results]
    independent = sorted(
        (n for n in notebooks if n not in readers),
        key=lambda n: estimated_seconds(root, run_profile(n, notebooks[n]), n),
        reverse=True,
    )
    return [wave for wave in (independent, readers) if wave]


def _worker_signals() -> None:
    """A worker leaves Ctrl-C to the runner (which stops every worker itself) and turns its SIGTERM into
    KeyboardInterrupt, so papermill shuts the kernel down on the way out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stopped_by_runner)


def _stopped_by_runner(signum: int, frame: object) -> None:
    """SIGTERM from the runner: from now on this worker's stderr goes to its kernel log, then KeyboardInterrupt.
    Shutting a kernel down mid-cell makes nbclient log "Kernel died while waiting for execute reply" and asyncio
    "Task exception was never retrieved"; the runner's one line already says what happened."""
    sys.stderr.flush()
    with open(os.environ.get(KERNEL_LOG) or os.devnull, "ab") as log:
        os.dup2(log.fileno(), sys.stderr.fileno())
    raise KeyboardInterrupt


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM to the runner (kill, a job scheduler): stop as Ctrl-C does, so no worker or kernel is left running."""
    raise KeyboardInterrupt


def _rerun_quietly(
    name: str, parameters: dict[str, Any], root: Path, profile: str, scratch: Path, **kwargs: Any
) -> verify.Comparison | None:
    """:func:`rerun` in a worker process, its kernel's log in the scratch folder; None when the runner stopped it (no
    traceback: the runner says why)."""
    os.environ[KERNEL_LOG] = str(scratch.parent / "kernel.log")
    try:
        return rerun(name, parameters, root, profile, scratch, **kwargs)
    except KeyboardInterrupt:
        return None
    finally:
        while KERNEL_FOLDERS:
            shutil.rmtree(KERNEL_FOLDERS.pop(), ignore_errors=True)


class Runner:
    """Rerun, compare and (unless --verify) publish a profile's notebooks, ``jobs`` side by side, each in a worker
    process of its own with its own scratch folder; one progress line per notebook and a bar for the whole run."""

    def __init__(self, notebooks: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
        self.notebooks, self.args = notebooks, args
        self.root = published_root(args.results_dir)
        self.jobs = min(args.jobs or default_jobs(), len(notebooks))
        self.scratch: dict[str, Path] = {}  # notebook -> its scratch folder, removed once the notebook is done
        self.comparisons: list[verify.Comparison] = []
        self.failed = ""
        self.started = time.time()

    def run(self) -> int:
        """The whole run -> exit status (1: a notebook failed, or --verify found a real difference; 130: Ctrl-C or
        SIGTERM, which stop every worker and its kernel alike)."""
        signal.signal(signal.SIGTERM, _terminated)
        # A live bar for the whole run in a terminal; elsewhere (logs, CI) the per-notebook lines alone.
        bar = progress(
            total=len(self.notebooks),
            desc=f"[{self.args.profile}] {self.jobs} at a time",
            unit="notebook",
            disable=not sys.stderr.isatty(),
        )
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no state shared with this one
        pool = ProcessPoolExecutor(self.jobs, mp_context=spawn, initializer=_worker_signals)
        try:
            for wave in waves(self.notebooks, self.root, self.args.profile):
                self._run_wave(wave, pool, bar)
                if self.failed:
                    break
        except KeyboardInterrupt:
            self._stop(pool)
            bar.close()
            done = ", ".join(c.notebook for c in self.comparisons) or "none"
            print(f"interrupted: finished {done}; nothing of the others was kept. Rerun to do them.", file=sys.stderr)
            return 130
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for folder in self.scratch.values():
                shutil.rmtree(folder, ignore_errors=True)
        bar.close()
        if self.failed:
            print(f"FAILED: {self.failed}", file=sys.stderr)
            return 1
        minutes = (time.time() - self.started) / 60
        print(f"\n{len(self.notebooks)} notebook(s) in {minutes:.1f} min, {self.jobs} at a time")
        print(verify.table(self.comparisons))
        return 1 if self.args.verify and not all(c.ok for c in self.comparisons) else 0

    def _run_wave(self, wave: list[str], pool: ProcessPoolExecutor, bar: Any) -> None:
        """Keep ``jobs`` notebooks of ``wave`` running until all are done (or one failed: the running ones finish)."""
        todo, running = list(wave), {}
        while running or (todo and not self.failed):
            while todo and not self.failed and len(running) < self.jobs:
                name = todo.pop(0)
                running[self._submit(name, pool)] = (name, time.time())
                bar.write(f"{self._counter()} started {name} ({NOTEBOOKS[name].shows})")
                self._show_running(bar, running)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name, start = running.pop(future)
                self._finish(name, future, time.time() - start, bar)
                self._show_running(bar, running)

    def _counter(self) -> str:
        """'[quick 3/12 done, 4.2 min]': where the whole run stands."""
        minutes = (time.time() - self.started) / 60
        return f"[{self.args.profile} {len(self.comparisons)}/{len(self.notebooks)} done, {minutes:.1f} min]"

    @staticmethod
    def _show_running(bar: Any, running: dict[Future, tuple[str, float]]) -> None:
        bar.set_postfix_str("running " + ", ".join(n.split("_")[0] for n, _ in running.values()))

    def _submit(self, name: str, pool: ProcessPoolExecutor) -> Future:
        params = self.notebooks[name]
        folder = Path(tempfile.mkdtemp(prefix=f"loom-rerun-{name}-"))
        self.scratch[name] = folder
        profile = run_profile(name, params)
        per_cell = self.jobs == 1 and not self.args.no_progress  # side by side, per-cell bars would interleave
        return pool.submit(
            _rerun_quietly,
            name,
            params,
            self.root,
            profile,
            folder / "results",
            match_cpu=self.args.match_cpu,
            progress=per_cell,
        )

    def _finish(self, name: str, future: Future, seconds: float, bar: Any) -> None:
        """Publish a finished notebook if it changed (unless --verify), print its line, remove its scratch folder."""
        profile = run_profile(name, self.notebooks[name])
        try:
            comparison = future.result()
        except NotebookFailed as err:
            self.failed = self._keep_failed_copy(name, profile, str(err))
            comparison = None
        except Exception as err:  # the worker itself failed (no kernel, a full disk): the notebook did not run
            self.failed = f"{name}: {type(err).__name__}: {err}"
            comparison = None
        if comparison is not None:
            self.comparisons.append(comparison)  # before the line, so its counter counts this notebook
            # Within tolerance is the same result: only a real difference (or a new folder) is published.
            publishing = not self.args.verify and (not comparison.ok or self.args.refresh_timings)
            if publishing:
                publish(name, self.scratch[name] / "results", self.root, profile)
            verdict = "unchanged" if comparison.unchanged else "within tolerance" if comparison.ok else "changed"
            where = "published to" if publishing else "left as committed in"
            bar.write(
                f"{name}: {verdict} ({seconds / 60:.1f} min); {where} {portable(str(self.root / profile / name))}"
            )
        else:
            bar.write(f"{name}: FAILED after {seconds / 60:.1f} min")
        shutil.rmtree(self.scratch.pop(name), ignore_errors=True)
        bar.update(1)

    def _keep_failed_copy(self, name: str, profile: str, message: str) -> str:
        """Move a failed notebook's executed copy (the traceback) out of its scratch folder to
        ``<results>/<profile>/<name>.failed.ipynb`` (git ignores it) -> the error message naming it there."""
        failed = self.scratch[name] / "results" / profile / f"{name}.failed.ipynb"
        kept = self.root / profile / failed.name
        if failed.is_file():
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(failed, kept)
            strip_machine_paths(kept, self.scratch[name])
        return message.replace(str(failed), portable(str(kept)))

    def _stop(self, pool: ProcessPoolExecutor) -> None:
        """Ctrl-C: stop every worker (each shuts its kernel down, then takes no more work) and wait for them."""
        for process in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def run_all(notebooks: dict[str, dict[str, Any]], args: argparse.Namespace) -> int:
    """Rerun, compare and (unless --verify) publish every notebook (:class:`Runner`); print a table. Exit status 1
    when a notebook fails or --verify finds a real difference."""
    return Runner(notebooks, args).run()


if __name__ == "__main__":
    sys.exit(main())
