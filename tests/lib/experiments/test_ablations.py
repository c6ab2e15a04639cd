"""lib.ablations (paper Table 5 at digits scale) and a papermill smoke run of notebooks/04_digits.ipynb."""

from __future__ import annotations

import math

import pytest
import torch

from lib.experiments import ablations
from lib.experiments.ablations import Ablation, AblationBudget
from lib.fid import train_digits_classifier
from lib.paper import paper_rows
from lib.solvers import parse_solver


def test_table5_rows_differ_from_loom_in_one_switch_and_never_repeat() -> None:
    rows = ablations.table5_ablations(caches=[1, 2, 4], batch_sizes=[32, 64, 128], main_caches=4, main_batch=128)
    labels = [r.label for r in rows]
    assert labels[:5] == [
        "I-CFM",
        "w/o saving local reassignments",
        "fixed source w/o reassignments",
        "train after convergence",
        "LOOM-CFM",
    ]
    assert labels[5:] == [
        "LOOM-CFM 1 caches bs128",
        "LOOM-CFM 2 caches bs128",
        "LOOM-CFM 4 caches bs32",
        "LOOM-CFM 4 caches bs64",
    ]
    configs = [(r.coupling, r.num_caches, r.batch_size, r.no_swaps, r.converge_first) for r in rows]
    assert len(set(configs)) == len(configs), "a configuration is trained twice"
    by = {r.label: r for r in rows}
    loom = by["LOOM-CFM"]
    assert by["fixed source w/o reassignments"] == Ablation(
        "fixed source w/o reassignments", "loom", 4, 128, no_swaps=True
    )
    assert by["train after convergence"] == Ablation("train after convergence", "loom", 4, 128, converge_first=True)
    assert by["w/o saving local reassignments"].coupling == "minibatch_ot" and by["I-CFM"].coupling == "independent"
    assert all(r.batch_size == loom.batch_size for r in rows[:5])
    assert loom.paper_label == "LOOM-CFM 4 caches bs128" and by["I-CFM"].paper_label is None
    assert by["LOOM-CFM 4 caches bs32"].paper_label == "LOOM-CFM 4 caches bs32"


def test_scaled_caches_stand_for_the_papers_rows_at_the_same_ratio() -> None:
    """Notebook 04's paper profile: LOOM-CFM at the rule's 14 caches stands for the paper's 4, the sweep 7 and 11 for
    its 2 and 3; every scaled row trains its own count and is compared with the paper's row of the same ratio."""
    rows = ablations.table5_ablations([7, 11, 14], [32, 64, 128], main_caches=14, main_batch=128, paper_main_caches=4)
    by = {r.label: r for r in rows}
    assert by["LOOM-CFM"].num_caches == 14 and by["LOOM-CFM"].paper_label == "LOOM-CFM 4 caches bs128"
    assert by["LOOM-CFM 7 caches bs128"].paper_label == "LOOM-CFM 2 caches bs128"
    assert by["LOOM-CFM 11 caches bs128"].paper_label == "LOOM-CFM 3 caches bs128"
    assert by["LOOM-CFM 14 caches bs32"].paper_label == "LOOM-CFM 4 caches bs32"
    assert by["fixed source w/o reassignments"].num_caches == 14
    assert by["fixed source w/o reassignments"].paper_label == "fixed source w/o reassignments"
    paper = {r["method"] for r in ablations.paper_rows("5", "cifar10")}
    assert {r.paper_label for r in rows if r.paper_label} <= paper  # every scaled row has its paper row
    assert ablations.table5_ablations([1, 4], [64], 4, 128, paper_main_caches=4) == ablations.table5_ablations(
        [1, 4], [64], 4, 128
    )  # no scaling: the rows as before


def test_solver_specs_spend_exactly_the_asked_nfe() -> None:
    specs = ablations.solver_specs([2, 4, 8, 12], ["midpoint", "euler"])
    assert specs == [
        "midpoint-1",
        "midpoint-2",
        "midpoint-4",
        "midpoint-6",
        "euler-2",
        "euler-4",
        "euler-8",
        "euler-12",
        "dopri5",
    ]
    assert [parse_solver(s).expected_nfe for s in specs[:-1]] == [2, 4, 8, 12] * 2
    assert ablations.solver_specs([4], ["euler"], adaptive=False) == ["euler-4"]
    with pytest.raises(ValueError, match="cannot spend exactly 3"):
        ablations.solver_specs([3], ["midpoint"])


def test_digits_split_is_held_out_and_model_shapes() -> None:
    train, test = ablations.digits_split(0)
    assert train.shape == (1437, 64) and test.shape == (360, 64)
    assert train.min() >= -1 and train.max() <= 1
    assert ablations.as_model_input(test, "unet").shape == (360, 1, 8, 8)
    assert ablations.as_model_input(test, "mlp").shape == (360, 64)
    with pytest.raises(ValueError, match="unknown model 'cnn'"):
        ablations.as_model_input(test, "cnn")
    assert isinstance(ablations.digits_velocity_field("mlp", hidden=16), torch.nn.Module)


def test_scores_are_zero_for_the_reference_itself_and_grow_with_noise() -> None:
    _, test = ablations.digits_split(0)
    classifier = train_digits_classifier(0)
    same = ablations.score_samples(test.reshape(-1, 1, 8, 8), test, classifier)
    assert same["w2"] == pytest.approx(0.0, abs=1e-6) and abs(same["fd"]) < 1e-6
    noisy = test + 0.5 * torch.randn(test.shape, generator=torch.Generator().manual_seed(0))
    worse = ablations.score_samples(noisy, test, classifier)
    assert worse["w2"] > 0.5 and worse["fd"] > 1.0


def test_concordance_counts_pairs_and_names_the_reversed_ones() -> None:
    paper = {"a": 1.0, "b": 2.0, "c": 3.0}
    assert ablations.concordance({"a": 5.0, "b": 6.0, "c": 7.0}, paper) == (1.0, [])
    score, wrong = ablations.concordance({"a": 5.0, "b": 8.0, "c": 7.0, "extra": 0.0}, paper)
    assert score == pytest.approx(2 / 3) and wrong == [("b", "c")]


def test_paper_table5_takes_loom_midpoint_8_from_table_1() -> None:
    paper = ablations.paper_table5(paper_rows("5", "cifar10"), paper_rows("1", "cifar10"))
    assert paper["LOOM-CFM 4 caches bs128", "midpoint", 4] == 11.60
    assert paper["LOOM-CFM 4 caches bs128", "midpoint", 8] == 5.38  # only in Table 1
    assert paper["train after convergence", "dopri5", None] == 5.07
    assert not any(label == "I-CFM" for label, _, _ in paper)


def test_ordering_agreement_compares_rows_at_the_papers_nfe() -> None:
    rows = ablations.table5_ablations([], [], main_caches=4, main_batch=128)
    paper = ablations.paper_table5(paper_rows("5", "cifar10"), paper_rows("1", "cifar10"))
    # Scores that reproduce the paper's midpoint-4 order exactly, and reverse it for dopri5.
    mine = {
        "LOOM-CFM": 1.0,
        "train after convergence": 2.0,
        "w/o saving local reassignments": 3.0,
        "fixed source w/o reassignments": 4.0,
        "I-CFM": 0.5,
    }
    metrics = [{"label": k, "method": "midpoint", "nfe": 4, "fd": v} for k, v in mine.items()]
    metrics += [{"label": k, "method": "dopri5", "nfe": 99, "fd": -v} for k, v in mine.items()]
    out = {(r["solver"], r["nfe"]): r for r in ablations.ordering_agreement(metrics, rows, paper)}
    assert set(out) == {("midpoint", 4), ("dopri5", "adaptive")}
    assert out["midpoint", 4]["concordance"] == 1.0 and out["midpoint", 4]["rows_compared"] == 4
    assert out["dopri5", "adaptive"]["concordance"] < 0.5
    assert "I-CFM" not in out["midpoint", 4]["our_order"]
    assert out["midpoint", 4]["disagreements"] == "" and out["dopri5", "adaptive"]["disagreements"]


@pytest.mark.parametrize("label", ["I-CFM", "fixed source w/o reassignments", "train after convergence", "LOOM-CFM"])
def test_train_ablation_runs_each_switch_and_evaluates_with_true_nfe(label: str) -> None:
    train, test = ablations.digits_split(0)
    row = next(r for r in ablations.table5_ablations([], [], 2, 64) if r.label == label)
    trained = ablations.train_ablation(row, train, AblationBudget(steps=4, hidden=16, ema_decay=0.5))
    assert trained.seconds_per_step > 0 and trained.history
    swaps = sum(h["swaps"] for h in trained.history)
    assert (swaps == 0) == (label in ("I-CFM", "fixed source w/o reassignments"))
    record = ablations.ablation_record(trained)
    assert record["label"] == label and record["ms_per_step"] > 0
    z = torch.randn(test[:80].shape, generator=torch.Generator().manual_seed(1))
    rows = ablations.evaluate_model(trained.ema, z, test[:80], ["midpoint-1", "euler-3"], train_digits_classifier(0))
    assert [r["nfe"] for r in rows] == [2, 3]
    assert all(math.isfinite(r["fd"]) and r["fd"] > 0 and r["w2"] > 0 for r in rows)


def test_compare_costs_trains_the_other_cost_from_the_same_start_and_scores_both() -> None:
    train, test = ablations.digits_split(0)
    row = next(r for r in ablations.table5_ablations([], [], 2, 64) if r.label == "LOOM-CFM")
    budget = AblationBudget(steps=4, hidden=16, ema_decay=0.5)
    trained = ablations.train_ablation(row, train, budget)
    z = torch.randn(test[:80].shape, generator=torch.Generator().manual_seed(1))
    rows = ablations.compare_costs(
        trained, train, budget, z, test[:80], ["euler-1", "midpoint-1"], train_digits_classifier(0)
    )
    assert [(r["label"], r["cost"], r["solver"]) for r in rows] == [
        ("LOOM-CFM", "l2", "euler-1"),
        ("LOOM-CFM", "l2", "midpoint-1"),
        ("LOOM-CFM (sqeuclidean)", "sqeuclidean", "euler-1"),
        ("LOOM-CFM (sqeuclidean)", "sqeuclidean", "midpoint-1"),
    ]
    assert all(r["fd"] > 0 and r["w2"] > 0 and r["final_cost"] > 0 for r in rows)
    # The squared cost's pairing cost is about the square of the plain one (images of 64 values in [-1, 1]).
    assert rows[2]["final_cost"] > 4 * rows[0]["final_cost"]
    assert Ablation("x", "loom", cost="sqeuclidean").paper_label is None  # no paper row pairs by the squared cost


def test_unet_model_trains_and_samples_on_images() -> None:
    train, test = ablations.digits_split(0)
    row = ablations.table5_ablations([], [], 1, 32)[-1]
    trained = ablations.train_ablation(row, train, AblationBudget(steps=2, model="unet"))
    z = torch.randn(80, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    rows = ablations.evaluate_model(trained.ema, z, test[:80], ["euler-1"], train_digits_classifier(0))
    assert rows[0]["nfe"] == 1 and rows[0]["w2"] > 0
