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
