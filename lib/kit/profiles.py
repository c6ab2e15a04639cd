"""The profiles' settings, from one source each: a notebook's committed parameters cell is its quick profile, and
``profiles/paper.json`` lists the paper profile's overrides of it.

Every run is filed under the profile whose settings it really used (:func:`resolve`): ``quick`` when its parameters
are the committed defaults, ``paper`` when they are the defaults plus paper.json's overrides, ``custom`` otherwise
(results/custom/<notebook>/, which no table reads). In JupyterLab, setting ``QUICK = False`` in the parameters
cell is the one switch to the paper profile: the first cell after it (``results.start_run``) then applies exactly
the overrides ``python -m lib.kit.reproduce --profile paper`` would inject, and says so.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill

from lib import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
TABLES_NOTEBOOK = "10_paper_tables"  # reads what every other notebook wrote, so it always runs last
PROFILES = ("quick", "paper")  # the profiles results/ and the tables know; anything else is "custom"
# Where and how a run executes, not what it computes: never make a run "custom" (notebook 12's WORKERS: its
# training runs in parallel processes give the same records as one after another).
EXECUTION_PARAMETERS = frozenset({"RESULTS_DIR", "WORKERS"})


class ProfileError(ValueError):
    """A profile file, notebook or parameter that does not exist: the message lists what does."""


def profile_names() -> list[str]:
    """Profiles with a parameters file in lib/kit/profiles/ (quick and paper)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def notebook_path(name: str) -> Path:
    """notebooks/<name>.ipynb, with a clear error if it is missing."""
    path = NOTEBOOKS_DIR / f"{name}.ipynb"
    if not path.exists():
        known = sorted(p.stem for p in NOTEBOOKS_DIR.glob("*.ipynb"))
        raise ProfileError(f"no notebook {path}; known notebooks: {known}")
    return path


def load_profile(profile: str) -> dict[str, dict[str, Any]]:
    """The profile's notebooks in run order (by number, the tables notebook last), each with its overrides."""
    path = PROFILES_DIR / f"{profile}.json"
    if not path.exists():
        raise ProfileError(f"unknown profile {profile!r}; use one of {profile_names()}")
    try:
        notebooks = json.loads(path.read_text())["notebooks"]
        if not isinstance(notebooks, dict) or not all(isinstance(p, dict) for p in notebooks.values()):
            raise TypeError("'notebooks' must map each notebook name to a dict of parameters")
    except (ValueError, KeyError, TypeError) as err:
        raise ProfileError(
            f"profile {path} is not valid: {type(err).__name__}: {err}. It must be JSON of the form "
            '{"notebooks": {"01_toy_couplings": {"PARAM": value, ...}, ...}}; fix the file (git diff shows changes)'
        ) from err
    return dict(sorted(notebooks.items(), key=lambda item: (item[0] == TABLES_NOTEBOOK, item[0])))


def notebook_defaults(name: str) -> dict[str, Any]:
    """The committed parameters cell of a notebook as values: the quick profile's settings."""
    inspected = papermill.inspect_notebook(str(notebook_path(name)))
    return {key: ast.literal_eval(spec["default"]) for key, spec in inspected.items()}


def check_parameters(name: str, parameters: Mapping[str, Any]) -> None:
    """Refuse parameters the notebook's ``parameters`` cell does not define (papermill only warns)."""
    known = notebook_defaults(name)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ProfileError(
            f"{name}.ipynb has no parameter(s) {unknown}; its parameters are {sorted(known)}. "
            "Fix the name in the profile file or on the command line."
        )


def profile_settings(name: str, profile: str) -> dict[str, Any]:
    """Every parameter of notebook ``name`` in ``profile``: the committed defaults with the profile's overrides."""
    overrides = load_profile(profile).get(name)
    if overrides is None:
        raise ProfileError(f"profile {profile!r} has no notebook {name!r}; add it to {PROFILES_DIR / profile}.json")
    return {**notebook_defaults(name), **overrides}


@dataclass(frozen=True)
class Resolved:
    """Which profile a run's parameters belong to, the parameters it uses, and what was switched to get there."""

    profile: str  # quick, paper or custom
    parameters: dict[str, Any]
    applied: dict[str, Any]  # paper overrides applied because QUICK was set to False by hand (else empty)
    differences: dict[str, tuple[Any, Any]]  # custom runs: parameter -> (profile's value, the run's value)


def _differences(wanted: Mapping[str, Any], have: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    keys = (set(wanted) | set(have)) - EXECUTION_PARAMETERS
    return {k: (wanted.get(k), have.get(k)) for k in sorted(keys) if wanted.get(k) != have.get(k)}


def resolve(name: str, parameters: Mapping[str, Any]) -> Resolved:
    """File a run of notebook ``name`` with ``parameters`` under the profile whose settings it uses.

    ``QUICK = False`` with every paper-overridden parameter still at its committed default (the user flipped the
    one switch in JupyterLab) applies the paper overrides. Parameters that match neither profile make a custom run.
    """
    parameters = dict(parameters)
    quick = notebook_defaults(name)
    paper = {**quick, **load_profile("paper").get(name, {})}
    applied: dict[str, Any] = {}
    overridden = {k for k in paper if paper[k] != quick[k]} - {"QUICK"} - EXECUTION_PARAMETERS
    if parameters.get("QUICK") is False and all(parameters.get(k) == quick[k] for k in overridden):
        applied = {k: paper[k] for k in sorted(overridden)}
        parameters.update(applied)
    for profile, settings in (("quick", quick), ("paper", paper)):
        if not _differences(settings, parameters):
            return Resolved(profile, parameters, applied, {})
    base = quick if parameters.get("QUICK", True) else paper
    return Resolved("custom", parameters, applied, _differences(base, parameters))
