"""lib.code: runs are reused under a digest of the code they execute, not of all of lib."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from lib import code
from lib.experiments import pipeline, study
from lib.train import TrainConfig, TrainSettings

KEYS = {"training (05-08)": pipeline.TRAINING_CODE, "study (12)": study.RUN_CODE}


@pytest.fixture
def lib_copy(tmp_path: Path) -> Path:
    """A copy of lib to edit: -> its folder."""
    return Path(shutil.copytree(code.LIB, tmp_path / "lib", ignore=shutil.ignore_patterns("__pycache__")))


def digests(lib: Path) -> dict[str, str]:
    return {name: code.code_digest(entries, lib) for name, entries in KEYS.items()}


ADDED = "\n\ndef _an_edit() -> None:\n    pass\n"  # a function added at the end of a file


def edit(lib: Path, file: str, old: str = "", new: str = ADDED) -> None:
    """Replace ``old`` by ``new`` in ``file`` of the copy (no ``old``: append ``new``)."""
    path = lib / file
    text = path.read_text()
    assert old in text, f"{file} no longer holds {old!r}: update this test"
    path.write_text(text.replace(old, new, 1) if old else text + new)


def test_the_copy_digests_like_lib_itself(lib_copy: Path) -> None:
    assert digests(lib_copy) == digests(code.LIB)


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        ("kit/figures.py", "", ADDED),  # a figure
        ("kit/summaries.py", "", ADDED),  # a closing text
        ("kit/reproduce.py", "", ADDED),  # the kit's machinery
        ("experiments/study.py", "def boundary_crossings(", "def boundary_crossings(  # edited analysis\n"),
    ],
)
def test_editing_a_figure_summary_or_analysis_reuses_every_run(lib_copy: Path, file: str, old: str, new: str) -> None:
    before = digests(lib_copy)
    edit(lib_copy, file, old, new)
    assert digests(lib_copy) == before


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        ("couplings.py", "", ADDED),  # the coupling module
        ("train.py", "def train_step(", "def train_step(  # edited training step\n"),  # the training step
        ("flow.py", "", ADDED),  # the CFM loss's module
    ],
)
def test_editing_the_coupling_or_the_training_step_retrains(lib_copy: Path, file: str, old: str, new: str) -> None:
    before = digests(lib_copy)
    edit(lib_copy, file, old, new)
    after = digests(lib_copy)
    assert all(after[k] != before[k] for k in KEYS), (before, after)


def test_a_study_run_keys_on_the_definitions_run_study_reaches(lib_copy: Path) -> None:
    before = digests(lib_copy)["study (12)"]
    edit(lib_copy, "experiments/study.py", "def make_run_coupling(", "def make_run_coupling(  # edited\n")
    assert digests(lib_copy)["study (12)"] != before
    reached = code.reached_definitions((code.LIB / "experiments/study.py").read_text(), "run_study")
    assert "def make_run_coupling(" in reached and "def evaluate_step(" in reached
    assert "def boundary_crossings(" not in reached and "def fix_table(" not in reached


def test_the_closure_follows_imports_and_refuses_unknown_modules() -> None:
    training = code.closure(pipeline.TRAINING_CODE)
    assert {"lib.train", "lib.couplings", "lib.flow", "lib.pairing"} <= training
    assert not any(m.startswith(("lib.kit", "lib.experiments")) for m in training)
    with pytest.raises(KeyError, match="lib.nothing"):
        code.closure(["lib.nothing"])


def test_keyed_run_folders_follow_the_code_and_say_when_reused(tmp_path: Path, monkeypatch, capsys) -> None:
    settings = TrainSettings(dataset="digits", train=TrainConfig(steps=3, batch_size=8))
    first = Path(pipeline.keyed(settings, tmp_path / "row").out)
    assert Path(pipeline.keyed(settings, tmp_path / "row").out) == first
    assert Path(pipeline.keyed(replace(settings, caches=2), tmp_path / "row").out) != first
    assert capsys.readouterr().out == ""
    first.mkdir()
    (first / "checkpoint.pt").write_bytes(b"")
    assert Path(pipeline.keyed(settings, tmp_path / "row").out) == first
    assert "reusing the run" in capsys.readouterr().out
    monkeypatch.setattr(pipeline, "code_digest", lambda entries: "edited training code")
    assert Path(pipeline.keyed(settings, tmp_path / "row").out) != first
