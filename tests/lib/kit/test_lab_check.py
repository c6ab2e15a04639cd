"""lib.kit.lab_check's judgement of what JupyterLab showed (the browser run itself is make lab-check, not a test)."""

from __future__ import annotations

from lib.kit import lab_check


def _notebook() -> dict:
    """A notebook as Lab holds it after Run All: a figure, a warning, a progress line, an error, an unrun cell."""
    cells = [
        {"execution_count": 1, "outputs": [{"output_type": "display_data", "data": {"image/png": "x"}}]},
        {
            "execution_count": 2,
            "outputs": [
                {"output_type": "stream", "name": "stderr", "text": ["/x.py:3: UserWarning: careful\n", "  warn()\n"]},
                {"output_type": "stream", "name": "stderr", "text": ["training: 100%|##########| 10/10\n"]},
            ],
        },
        {"execution_count": 3, "outputs": [{"output_type": "error", "ename": "ValueError", "evalue": "bad"}]},
        {"execution_count": None, "outputs": []},
    ]
    return {"metadata": {"kernelspec": {"name": "python3"}}, "cells": [{"cell_type": "code", **c} for c in cells]}


def test_what_the_notebook_holds_is_counted_and_judged() -> None:
    saved = lab_check.notebook_counts(_notebook())
    assert (saved["code_cells"], saved["executed_cells"], saved["figures_saved"]) == (4, 3, 1)
    assert saved["errors"] == ["ValueError: bad"] and saved["warnings"] == ["/x.py:3: UserWarning: careful"]
    assert saved["stderr"] == ["training: 100%|##########| 10/10"]
    shown = {"figures": 0, "images_not_loaded": 0, "widget_outputs": 0, "widget_elements": 0, "widget_errors": []}
    problems = lab_check.Counts(notebook="nb", seconds=1.0, **shown, **saved).problems()
    assert problems == [
        "nb: error output ValueError: bad",
        "nb: warning on stderr: /x.py:3: UserWarning: careful",
        "nb: 1 of 4 cells not run",
        "nb: 1 figures in the notebook, 0 shown",
    ]


def test_git_changes_outside_the_checks_own_folder_are_reported() -> None:
    before = {"notebooks/01.ipynb": "a", "results/quick/lab_check/x.png": "b"}
    after = {"notebooks/01.ipynb": "c", "results/quick/lab_check/x.png": "d", "results-local/y": "e"}
    assert lab_check.changes(before, after, ("results/quick/lab_check/",)) == ["notebooks/01.ipynb", "results-local/y"]
    assert lab_check.changes(before, dict(before), ("results/quick/lab_check/",)) == []
