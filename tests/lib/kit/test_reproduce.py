"""python -m lib.kit.reproduce refuses what it cannot run before running anything: a typo in --only, a bare --only, a
malformed profile, an unknown parameter of any chosen notebook (not only the first)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lib import REPO_ROOT
from lib.kit import profiles, reproduce


def test_only_refuses_an_entry_that_matches_nothing(capsys) -> None:
    assert reproduce.main(["--only", "01", "3", "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --only 3 matches no notebook") and "01_toy_couplings" in err
    assert reproduce.main(["--only", "01", "03", "--list"]) == 0
    assert [line.split(":")[0].strip() for line in capsys.readouterr().out.splitlines()[1:]] == [
        "01_toy_couplings",
        "03_toy_generation",
    ]


def test_a_bare_only_is_refused_not_taken_as_everything(capsys) -> None:
    assert reproduce.main(["--only"]) == 2  # argparse: expected at least one argument
    assert "--only: expected at least one argument" in capsys.readouterr().err


def test_a_malformed_profile_is_one_line_naming_the_file(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(profiles, "PROFILES_DIR", tmp_path)
    (tmp_path / "broken.json").write_text('{"notebooks": {"01_toy_couplings": {"QUICK": tru')
    assert reproduce.main(["--profile", "broken", "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: profile {tmp_path / 'broken.json'} is not valid: JSONDecodeError")
    assert "Traceback" not in err
    (tmp_path / "list.json").write_text(json.dumps({"notebooks": ["01_toy_couplings"]}))
    assert reproduce.main(["--profile", "list", "--list"]) == 2
    assert "must map each notebook name to a dict" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not valid"):  # --debug: the exception itself, with its traceback
        reproduce.main(["--profile", "list", "--list", "--debug"])


def test_every_chosen_notebook_is_checked_before_the_first_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    """A bad parameter of the LAST chosen notebook stops the run before the first notebook starts."""
    monkeypatch.setattr(profiles, "PROFILES_DIR", tmp_path)
    profile = {"notebooks": {"01_toy_couplings": {}, "03_toy_generation": {"STEPZ": 10}}}
    (tmp_path / "p.json").write_text(json.dumps(profile))
    started = []
    monkeypatch.setattr(reproduce, "run_notebook", lambda name, *a, **k: started.append(name))
    assert reproduce.main(["--profile", "p", "--results-dir", str(tmp_path / "results")]) == 2
    assert "03_toy_generation.ipynb has no parameter(s) ['STEPZ']" in capsys.readouterr().err
    assert started == []


def test_executed_copies_hold_no_machine_folder(tmp_path: Path) -> None:
    """A rerun's scratch folder, the checkout and the Python environment never reach a committed executed copy."""
    executed = tmp_path / "nb.ipynb"
    scratch = tmp_path / "loom-rerun-01-abc"
    executed.write_text(
        f'"RESULTS_DIR = \\"{scratch}/results\\"" "{REPO_ROOT}/notebooks/01.ipynb" "{sys.prefix}/lib/x.py" "{scratch}"'
    )
    reproduce.strip_machine_paths(executed, scratch)
    text = executed.read_text()
    assert str(tmp_path) not in text and str(REPO_ROOT) not in text and sys.prefix not in text
    assert '"RESULTS_DIR = \\"results\\""' in text and '"notebooks/01.ipynb"' in text and '"."' in text


def test_notebooks_run_longest_first_and_readers_of_results_last(tmp_path: Path) -> None:
    """The order of a side-by-side run: independent notebooks longest first (by their last run.json), then 10."""
    for name, seconds in (("01_toy_couplings", 14.0), ("05_cifar10", 350.0), ("10_paper_tables", 6.0)):
        (tmp_path / "quick" / name).mkdir(parents=True)
        (tmp_path / "quick" / name / "run.json").write_text(json.dumps({"cpu_time_s": seconds}))
    chosen = {n: {} for n in ("10_paper_tables", "01_toy_couplings", "03_toy_generation", "05_cifar10")}
    assert reproduce.waves(chosen, tmp_path, "quick") == [
        ["05_cifar10", "01_toy_couplings", "03_toy_generation"],  # 03 has no run.json yet: last of its wave
        ["10_paper_tables"],
    ]


def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``marker`` (this test's runner and everything it started)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _start_runner(tmp_path: Path, args: list[str], notebooks: int, **popen: object) -> tuple:
    """``python -m lib.kit.reproduce <args>`` in its own session, TMPDIR and environment marker, returned once its
    ``notebooks`` notebooks have started their first cells: (runner, marker, scratch root)."""
    import os
    import subprocess
    import time
    import uuid

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    marker = f"LOOM_TEST_RUN={uuid.uuid4().hex}"
    env = {**os.environ, "TMPDIR": str(scratch_root), marker.split("=")[0]: marker.split("=")[1]}
    runner = subprocess.Popen(
        [sys.executable, "-m", "lib.kit.reproduce", *args, "--verify", "--results-dir", str(tmp_path / "results")],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        **popen,
    )
    deadline = time.time() + 120
    while len(list(scratch_root.glob("loom-rerun-*/results/*/.*.executing.ipynb"))) < notebooks:
        assert runner.poll() is None and time.time() < deadline, f"the {notebooks} notebook(s) did not start"
        time.sleep(0.5)
    time.sleep(2)  # into their first cells
    return runner, marker, scratch_root


def _assert_stopped_in_one_line_leaving_nothing(runner, marker: str, scratch_root: Path) -> None:
    """Status 130, the one 'interrupted' line, no worker, kernel or training process left, no scratch folder."""
    import time

    out, err = runner.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert runner.returncode == 130, (out, err)
    assert len(lines) == 1 and lines[0].startswith("interrupted: finished none"), err
    deadline = time.time() + 30
    while _processes_with(marker) and time.time() < deadline:  # kernels shut down after their worker
        time.sleep(0.5)
    assert _processes_with(marker) == []
    assert sorted(scratch_root.glob("loom-*")) == []  # no scratch copy, no kernel's socket folder


@pytest.mark.slow
def test_ctrl_c_stops_every_notebook_in_one_line_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) during two notebooks running side by side: status 130, one
    line, no scratch folder left, no worker, kernel or training process left running."""
    import os
    import signal

    # Ctrl-C raises KeyboardInterrupt in the runner, as in a terminal, even where this test runs with SIGINT ignored
    # (a shell's background job: the runner would inherit that).
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    runner, marker, scratch = _start_runner(
        tmp_path, ["--only", "03", "04", "--jobs", "2"], 2, preexec_fn=default_sigint
    )
    os.killpg(runner.pid, signal.SIGINT)
    _assert_stopped_in_one_line_leaving_nothing(runner, marker, scratch)


@pytest.mark.slow
def test_sigterm_to_the_runner_stops_its_notebook_and_kernel_as_ctrl_c_does(tmp_path: Path) -> None:
    """kill <runner> (SIGTERM to the runner alone, as a job scheduler or a closed session sends): status 130, the
    one line, and no worker or kernel left running on its own (they were, before the runner handled SIGTERM)."""
    runner, marker, scratch = _start_runner(tmp_path, ["--only", "02", "--no-progress"], 1)
    runner.terminate()  # the runner alone, not its process group
    _assert_stopped_in_one_line_leaving_nothing(runner, marker, scratch)


def test_a_worker_that_fails_outside_its_notebook_is_a_failed_notebook_not_a_traceback(tmp_path: Path) -> None:
    """A worker that raises something other than NotebookFailed (no kernel could start: a socket path too long, a
    full disk) marks its notebook failed, names the error and removes its scratch folder; the run goes on to exit 1."""
    import argparse
    from concurrent.futures import Future

    args = argparse.Namespace(profile="quick", results_dir=str(tmp_path), jobs=1, verify=True)
    runner = reproduce.Runner({"01_toy_couplings": {}}, args)
    runner.scratch["01_toy_couplings"] = scratch = tmp_path / "loom-rerun-01"
    scratch.mkdir()
    future: Future = Future()
    future.set_exception(OSError("File name too long"))
    bar = reproduce.progress(total=1, disable=True)
    runner._finish("01_toy_couplings", future, 1.0, bar)
    assert runner.failed == "01_toy_couplings: OSError: File name too long"
    assert not scratch.exists() and runner.comparisons == []
