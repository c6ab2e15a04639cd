"""Released checkpoints through huggingface_hub, tested offline on a fake local hub cache."""

from __future__ import annotations

from lib import paper
from lib.solvers import parse_solver


def test_paper_evaluation_settings_match_the_paper_rows() -> None:
    """Each release is evaluated at exactly the fixed-grid NFEs the paper reports for its row, plus dopri5."""
    assert set(paper.PAPER_EVALUATION) == set(paper.RELEASED_REPOS)
    for name, spec in paper.PAPER_EVALUATION.items():
        rows = paper.paper_rows(spec.table, spec.dataset)
        reported = {
            (r["solver"], int(r["nfe"])) for r in rows if r["method"] == spec.method and r["solver"] != "dopri5"
        }
        ours = {parse_solver(s).expected_nfe for s in spec.solvers if s != "dopri5"}
        assert ours == {nfe for _, nfe in reported}, name
        assert all(solver in ("midpoint", "euler", "unknown") for solver, _ in reported)
        assert ("dopri5" in spec.solvers) == any(r["method"] == spec.method and r["solver"] == "dopri5" for r in rows)
    assert paper.PAPER_EVALUATION["cifar10_reflow"].grid_solver == "midpoint-1"
    assert paper.PAPER_EVALUATION["ffhq256"].grid_solver == "midpoint-4"


def test_table5_sweep_names_and_parses_its_rows() -> None:
    assert paper.table5_sweep([2, 3, 4], [32, 64, 128], paper.TABLE5_CACHES, paper.TABLE5_BATCH) == [
        (2, 128),
        (3, 128),
        (4, 32),
        (4, 64),
    ]
    assert (
        paper.table5_sweep(paper.TABLE5_SWEEP_CACHES, paper.TABLE5_SWEEP_BATCHES, 4, 128)
        == [
            paper.parse_sweep_label(r["method"])
            for r in paper.paper_rows("5", "cifar10")
            if paper.parse_sweep_label(r["method"]) not in (None, (4, 128))
        ][::2]
    )  # Table 5 reports each sweep row at two solvers
    assert paper.parse_sweep_label(paper.sweep_label(3, 64)) == (3, 64) and paper.parse_sweep_label("LOOM-CFM") is None
