"""Run the notebooks with papermill for a profile and save the executed copies beside their results.

    python -m lib.kit.reproduce --profile quick            # every CPU-feasible notebook, minutes
    python -m lib.kit.reproduce --profile paper --only 05  # the paper settings (GPUs), one notebook
    python -m lib.kit.reproduce --list                     # notebooks and profiles

Parameters come from ``lib/kit/profiles/<profile>.json`` (per notebook); the committed notebook defaults
are the quick profile. Unknown parameters are refused before anything runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import papermill

from lib import REPO_ROOT
from lib.kit.results import results_root

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
TABLES_NOTEBOOK = "10_paper_tables"  # reads what every other notebook wrote, so it always runs last


class NotebookFailed(RuntimeError):
    """A notebook raised: the message names the notebook, the cell and the executed copy."""


def profile_names() -> list[str]:
    """Profiles with a parameters file in lib/kit/profiles/."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def load_profile(profile: str) -> dict[str, dict[str, Any]]:
    """The profile's notebooks in run order (by number, the tables notebook last), each with its overrides."""
    path = PROFILES_DIR / f"{profile}.json"
    if not path.exists():
        raise SystemExit(f"unknown profile {profile!r}; use one of {profile_names()}")
    notebooks = json.loads(path.read_text())["notebooks"]
    return dict(sorted(notebooks.items(), key=lambda item: (item[0] == TABLES_NOTEBOOK, item[0])))


def notebook_path(name: str) -> Path:
    """notebooks/<name>.ipynb, with a clear error if it is missing."""
    path = NOTEBOOKS_DIR / f"{name}.ipynb"
    if not path.exists():
        known = sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb"))
        raise FileNotFoundError(f"no notebook {path}; known notebooks: {known}")
    return path


def check_parameters(path: Path, parameters: dict[str, Any]) -> None:
    """Refuse parameters the notebook's ``parameters`` cell does not define (papermill only warns)."""
    known = papermill.inspect_notebook(str(path))
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ValueError(
            f"{path.name} has no parameter(s) {unknown}; its parameters are {sorted(known)}. "
            "Fix the name in the profile file or on the command line."
        )


def run_notebook(name: str, parameters: dict[str, Any], results_dir: str | Path = "", progress: bool = False) -> Path:
    """Execute one notebook with ``parameters``; return the executed copy's path.

    The copy is saved in the notebook's results folder, results/<profile>/<name>/<name>.ipynb.
    """
    path = notebook_path(name)
    root = results_root(results_dir)
    # the default root stays "" so run.json records no machine path; an explicit one is made absolute
    # because the notebook runs with notebooks/ as its working directory
    parameters = {**parameters, "RESULTS_DIR": str(Path(results_dir).resolve()) if results_dir else ""}
    check_parameters(path, parameters)
    profile = "quick" if parameters.get("QUICK", True) else "paper"
    output = root / profile / name / f"{name}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(path),
            str(output),
            parameters=parameters,
            cwd=str(NOTEBOOKS_DIR),
            progress_bar=progress,
            kernel_name="python3",
        )
    except papermill.PapermillExecutionError as err:
        raise NotebookFailed(
            f"notebook {name} failed in cell {err.cell_index} (execution count {err.exec_count}): "
            f"{err.ename}: {err.evalue}\nexecuted copy with the traceback: {output}"
        ) from None
    strip_machine_paths(output)
    return output


def strip_machine_paths(executed: Path) -> None:
    """Write the executed copy without this machine's folders: the checkout becomes ``.`` and the Python
    environment ``<python>``, so results/ carries no absolute path of the machine that ran it."""
    text = executed.read_text()
    for folder, name in ((str(REPO_ROOT), "."), (sys.prefix, "<python>")):
        text = text.replace(folder, name)
    executed.write_text(text)


def select(notebooks: dict[str, dict[str, Any]], only: list[str] | None) -> dict[str, dict[str, Any]]:
    """Keep the notebooks whose name or number prefix is in ``only`` (all if empty)."""
    if not only:
        return notebooks
    chosen = {n: p for n, p in notebooks.items() if any(n == o or n.split("_")[0] == o for o in only)}
    if not chosen:
        raise SystemExit(f"--only {only} matches none of {list(notebooks)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib.kit.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="quick", help=f"one of {profile_names()} (default quick)")
    parser.add_argument("--only", nargs="*", help="notebook names or number prefixes, e.g. 01 03")
    parser.add_argument("--results-dir", default="", help="results root (default: <repo>/results)")
    parser.add_argument("--list", action="store_true", help="list the profile's notebooks and exit")
    args = parser.parse_args(argv)
    notebooks = select(load_profile(args.profile), args.only)
    if args.list:
        for name, params in notebooks.items():
            print(f"{name}: {json.dumps(params)}")
        return 0
    for name, params in notebooks.items():
        start = time.time()
        print(f"[{args.profile}] {name} ...", flush=True)
        try:
            output = run_notebook(name, params, args.results_dir)
        except (NotebookFailed, ValueError, FileNotFoundError) as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
        print(f"[{args.profile}] {name} done in {time.time() - start:.0f} s -> {output.parent}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
