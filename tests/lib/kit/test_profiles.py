"""lib.kit.profiles: a run is filed under the profile whose settings it really used."""

from __future__ import annotations

import pytest

from lib.kit import profiles

NOTEBOOK = "03_toy_generation"


def test_committed_defaults_are_the_quick_profile_and_paper_adds_its_overrides() -> None:
    quick, paper = profiles.profile_settings(NOTEBOOK, "quick"), profiles.profile_settings(NOTEBOOK, "paper")
    assert quick == profiles.notebook_defaults(NOTEBOOK) and quick["QUICK"] is True
    assert paper["QUICK"] is False and paper["STEPS"] == profiles.load_profile("paper")[NOTEBOOK]["STEPS"]
    assert profiles.resolve(NOTEBOOK, quick).profile == "quick"
    assert profiles.resolve(NOTEBOOK, paper).profile == "paper"


def test_setting_only_quick_false_applies_exactly_the_paper_overrides() -> None:
    flipped = {**profiles.notebook_defaults(NOTEBOOK), "QUICK": False}
    resolved = profiles.resolve(NOTEBOOK, flipped)
    assert resolved.profile == "paper" and resolved.parameters == profiles.profile_settings(NOTEBOOK, "paper")
    assert resolved.applied and "QUICK" not in resolved.applied


def test_other_settings_make_a_custom_run_that_names_what_differs() -> None:
    tiny = {**profiles.notebook_defaults(NOTEBOOK), "STEPS": 3}
    resolved = profiles.resolve(NOTEBOOK, tiny)
    assert resolved.profile == "custom" and resolved.differences["STEPS"][1] == 3 and not resolved.applied
    edited_paper = {**profiles.profile_settings(NOTEBOOK, "paper"), "STEPS": 7}
    assert profiles.resolve(NOTEBOOK, edited_paper).profile == "custom"
    where = {**profiles.notebook_defaults(NOTEBOOK), "RESULTS_DIR": "/elsewhere"}  # a location, not a setting
    assert profiles.resolve(NOTEBOOK, where).profile == "quick"


def test_worker_count_is_how_a_run_executes_not_what_it_computes() -> None:
    study = "12_noise_table_study"
    quick, paper = profiles.profile_settings(study, "quick"), profiles.profile_settings(study, "paper")
    assert (quick["WORKERS"], paper["WORKERS"]) == (1, 2)
    assert profiles.resolve(study, {**quick, "WORKERS": 8}).profile == "quick"
    assert profiles.resolve(study, {**paper, "WORKERS": 8}).profile == "paper"
    flipped = profiles.resolve(study, {**quick, "QUICK": False, "WORKERS": 8})  # JupyterLab: QUICK off, 8 cores
    assert flipped.profile == "paper" and flipped.parameters["WORKERS"] == 8 and "WORKERS" not in flipped.applied


def test_a_broken_profile_file_names_the_file_and_the_format(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    monkeypatch.setattr(profiles, "PROFILES_DIR", tmp_path)
    with pytest.raises(profiles.ProfileError, match="broken.json is not valid: JSONDecodeError"):
        profiles.load_profile("broken")
