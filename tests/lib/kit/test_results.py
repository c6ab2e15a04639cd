"""lib.kit.results: a run folder is replaced whole, never mixed; paths are stored relative to the repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

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


def test_a_run_names_its_root_or_writes_to_the_git_ignored_local_results(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Only a command that names the committed root publishes there; any other run (JupyterLab, plain papermill)
    writes under results-local/, which git ignores, and says so in its one summary line."""
    monkeypatch.delenv("LOOM_RESULTS", raising=False)
    assert results.results_root() == results.LOCAL_RESULTS and results.published_root() == results.COMMITTED_RESULTS
    assert results.results_root(tmp_path) == tmp_path == results.published_root(tmp_path)  # RESULTS_DIR wins
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "results-local/quick/01_toy_couplings/run.json"], cwd=REPO_ROOT
    )
    assert ignored.returncode == 0, "results-local/ must be in .gitignore"
    monkeypatch.setattr(results, "LOCAL_RESULTS", tmp_path / "results-local")  # a local run, without touching the repo
    capsys.readouterr()
    run = results.start_run("03_toy_generation", profiles.notebook_defaults("03_toy_generation"))
    printed = capsys.readouterr().out.splitlines()
    assert run.directory == tmp_path / "results-local" / "quick" / "03_toy_generation"
    assert len(printed) == 1, f"expected one summary line, measured {len(printed)}: {printed[:3]}"
    assert printed[0].startswith("03_toy_generation: profile quick, commit ") and "seed 0" in printed[0]
    assert "git-ignored; make reproduce publishes to results/" in printed[0]


UNFINISHED_RUN = """
from lib.kit import profiles, results
run = results.start_run("03_toy_generation", {**profiles.notebook_defaults("03_toy_generation"), "RESULTS_DIR": %r})
run.write_json("a", {"x": 2})
print(run.staging.is_dir())
"""


def test_a_kernel_shut_down_mid_run_leaves_no_staging_folder(tmp_path: Path) -> None:
    """JupyterLab's restart or shut-down of a kernel whose run never reached finish(): the staging folder goes with
    the kernel, and the results of the last finished run stay."""
    from jupyter_client.manager import start_new_kernel

    finished = _run(tmp_path)
    finished.write_json("a", {"x": 1})
    finished.finish()
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(REPO_ROOT))
    try:
        outputs = []
        reply = client.execute_interactive(
            UNFINISHED_RUN % str(tmp_path), output_hook=lambda m: outputs.append(m["content"].get("text", ""))
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        assert "True" in "".join(outputs), f"the run staged nothing: {outputs}"
    finally:
        client.stop_channels()
        manager.shutdown_kernel()  # a shutdown request, as Lab sends on restart or shut-down
    assert sorted(p.name for p in (tmp_path / "quick").iterdir()) == ["03_toy_generation"]
    assert json.loads((tmp_path / "quick" / "03_toy_generation" / "a.json").read_text()) == {"x": 1}
