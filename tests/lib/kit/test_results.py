"""lib.kit.results: a run folder is replaced whole, never mixed; paths are stored relative to the repository."""

from __future__ import annotations

import json
from pathlib import Path

from lib import REPO_ROOT
from lib.kit import profiles, results


def _run(root: Path, notebook: str = "03_toy_generation") -> results.Run:
    """A run of ``notebook`` with its committed (quick) parameters, writing under ``root``."""
    return results.start_run(notebook, {**profiles.notebook_defaults(notebook), "RESULTS_DIR": str(root)})


def test_a_rerun_replaces_the_folder_whole_and_an_interrupted_one_leaves_it(tmp_path: Path) -> None:
    first = _run(tmp_path)
    first.write_json("a", {"x": 1})
    first.write_json("stale", {"x": 1})
    first.finish()
    folder = tmp_path / "quick" / "03_toy_generation"
    assert {p.name for p in folder.iterdir()} == {"a.json", "stale.json", "run.json"}
    interrupted = _run(tmp_path)
    interrupted.write_json("a", {"x": 2})  # never finished: the committed folder is untouched
    assert json.loads((folder / "a.json").read_text()) == {"x": 1}
    second = _run(tmp_path)  # starts from an empty staging folder
    second.write_json("a", {"x": 3})
    second.finish()
    assert {p.name for p in folder.iterdir()} == {"a.json", "run.json"}  # no stale file from the first run
    assert json.loads((folder / "a.json").read_text()) == {"x": 3}
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())


def test_paths_inside_the_repository_are_stored_relative_and_run_json_names_the_machine(tmp_path: Path) -> None:
    run = _run(tmp_path)
    run.write_table("rows", [{"reference": str(REPO_ROOT / "runs" / "x"), "fid": 1.0}])
    run.finish()
    assert results.read_table(tmp_path / "quick" / "03_toy_generation" / "rows.csv")[0]["reference"] == "runs/x"
    device = json.loads((tmp_path / "quick" / "03_toy_generation" / "run.json").read_text())["device"]
    assert {"cpu_model", "torch_cpu_capability", "torch_threads", "isa_environment"} <= set(device)
    provenance = json.loads((tmp_path / "quick" / "03_toy_generation" / "run.json").read_text())
    assert provenance["assignment_solver"].startswith(("lapjv", "scipy")) and "lapjv" in provenance["versions"]


def test_runs_of_other_results_roots_start_in_a_fresh_folder(tmp_path: Path) -> None:
    run = _run(tmp_path / "results")
    assert run.runs_dir() == tmp_path / "runs" / "quick" / "03_toy_generation"
    assert run.runs_dir("data/x") == REPO_ROOT / "data" / "x"


def test_quick_false_in_a_notebook_switches_its_namespace_to_the_paper_settings(tmp_path: Path) -> None:
    namespace = {**profiles.notebook_defaults("03_toy_generation"), "RESULTS_DIR": str(tmp_path), "QUICK": False}
    run = results.start_run("03_toy_generation", namespace)
    paper = profiles.profile_settings("03_toy_generation", "paper")
    assert run.profile == "paper" and run.directory == tmp_path / "paper" / "03_toy_generation"
    assert all(namespace[k] == v for k, v in paper.items() if k != "RESULTS_DIR")
