"""lib.boundary: the noise-table boundary from visits alone and from the capacity model, the rule, the warning."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from lib.boundary import (
    FEATURES,
    Boundary,
    CapacityModel,
    TableRun,
    load_boundary,
    noise_table_warning,
)

RULE = {"boundary_v": 100.0, "low_v": 80.0, "high_v": 130.0, "threshold": 1.25, "solver": "midpoint-6"}
DIGITS_04 = TableRun(steps=20_000, global_batch=128, num_examples=1437, caches=1, params=607_808, dim=64)
WIDE = {k: (1e-9, 1e12) for k in FEATURES}  # a domain every test run lies in


def model(**coef: float) -> CapacityModel:
    """A capacity model with the given coefficients (the rest 0) and intercept ``b0``."""
    b0 = coef.pop("b0", 0.0)
    return CapacityModel(b0, {k: coef.get(k, 0.0) for k in FEATURES}, WIDE)


def test_table_run_counts_v_and_params_per_stored_number() -> None:
    assert DIGITS_04.visits == pytest.approx(20_000 * 128 / 1437)  # 1781.5, notebook 04's 1-cache row
    assert replace(DIGITS_04, caches=4).params_per_stored_number == pytest.approx(607_808 / (1437 * 4 * 64))


def test_visits_alone_warning_names_v_the_boundary_and_the_caches_that_fit() -> None:
    boundary = Boundary(RULE)
    warning = noise_table_warning(DIGITS_04, boundary)  # notebook 04's old paper profile: V = 1781.5
    assert warning is not None
    assert "= 1781.5 times" in warning and "V* = 100 from the visits alone" in warning
    assert "range 80-130" in warning and "--caches 18 or more" in warning
    assert noise_table_warning(replace(DIGITS_04, caches=18), boundary) is None  # V = 99: at or below the boundary
    assert noise_table_warning(DIGITS_04, None) is None  # no study results: nothing to check


def test_capacity_v_star_is_where_the_probability_is_one_half() -> None:
    """Past the boundary (V > V*) exactly where the model's probability exceeds 1/2, at every cache count; and the
    caches the rule asks for are the fewest that are not past."""
    m = model(b0=-30.0, visits=1.6, params_per_stored_number=0.8, steps=1.5, dim=1.0)
    boundary = Boundary(RULE, m)
    for caches in range(1, 80):
        run = replace(DIGITS_04, caches=caches)
        check = boundary.check(run)
        assert check.basis.startswith("capacity model") and not check.outside
        assert check.past == (m.probability(run) > 0.5), caches
        assert check.v_star == pytest.approx(m.boundary_v(DIGITS_04))  # V* holds all but the caches
    needed = boundary.check(DIGITS_04).caches_needed
    assert needed > 1
    assert not boundary.check(replace(DIGITS_04, caches=needed)).past
    assert boundary.check(replace(DIGITS_04, caches=needed - 1)).past


def test_capacity_v_star_falls_with_more_parameters_per_stored_number_and_longer_runs() -> None:
    m = model(b0=-30.0, visits=1.6, params_per_stored_number=0.8, steps=1.5, dim=1.0)
    small, large = replace(DIGITS_04, params=100_000), replace(DIGITS_04, params=1_000_000)
    assert m.boundary_v(large) < m.boundary_v(small)
    assert m.boundary_v(replace(DIGITS_04, steps=40_000)) < m.boundary_v(DIGITS_04)


def test_outside_the_fitted_range_the_boundary_is_visits_alone_and_says_why() -> None:
    narrow = CapacityModel(
        -30.0, {"visits": 1.6, "params_per_stored_number": 0.8, "steps": 1.5, "dim": 1.0}, {**WIDE, "dim": (2.0, 128.0)}
    )
    boundary = Boundary(RULE, narrow)
    cifar = TableRun(390_625, 128, 100_000, 4, 35_746_307, 3072)  # the paper's CIFAR-10: V = 125
    check = boundary.check(cifar)
    assert check.v_star == 100.0 and check.basis.startswith("visits alone") and check.past
    assert check.outside == ("dim 3.07e+03 (fit 2-128)",)
    assert "outside the capacity model's range: dim 3.07e+03 (fit 2-128)" in noise_table_warning(cifar, boundary)
    assert boundary.check(DIGITS_04).basis.startswith("capacity model")  # d = 64 lies inside


def test_a_model_where_caches_do_not_help_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fall with more caches"):
        model(visits=0.5, params_per_stored_number=-0.5).boundary_v(DIGITS_04)


def test_load_boundary_reads_the_rule_and_the_capacity_model(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    assert load_boundary(missing, missing) is None
    (tmp_path / "none.json").write_text(json.dumps({"boundary_v": None, "crossed": 0}))
    assert load_boundary(tmp_path / "none.json", missing) is None  # the study found no boundary: no warning
    (tmp_path / "rule.json").write_text(json.dumps(RULE))
    assert load_boundary(tmp_path / "rule.json", missing) == Boundary(RULE, None)
    written = {"intercept": -3.0, "coef": dict.fromkeys(FEATURES, 0.5), "domain": {k: [1, 2] for k in FEATURES}}
    (tmp_path / "model.json").write_text(json.dumps(written))
    loaded = load_boundary(tmp_path / "rule.json", tmp_path / "model.json")
    assert loaded.capacity == CapacityModel(-3.0, dict.fromkeys(FEATURES, 0.5), dict.fromkeys(FEATURES, (1.0, 2.0)))
    (tmp_path / "bad.json").write_text(json.dumps({"intercept": 1.0, "coef": {"visits": 1.0}, "domain": {}}))
    with pytest.raises(ValueError, match="rerun notebook 14"):
        load_boundary(tmp_path / "rule.json", tmp_path / "bad.json")


def test_the_committed_boundary_flags_notebook_04s_failing_setting_and_not_64_caches() -> None:
    """lib.train reads the committed boundary (notebook 12's rule, notebook 14's capacity model where it holds): the
    digits run that overfit (1 cache, V = 1781.5) is past it and the 64-cache run that did not (V = 27.8) is not."""
    boundary = load_boundary()
    assert boundary is not None, "results/paper/12_noise_table_study/rule.json is missing or found no boundary"
    assert noise_table_warning(DIGITS_04, boundary) is not None
    assert noise_table_warning(replace(DIGITS_04, caches=64), boundary) is None
    assert math.isfinite(boundary.check(DIGITS_04).v_star)


def test_paper_profiles_warn_only_for_the_rows_that_show_a_table_overfitting() -> None:
    """Issue 24: lib.train's warning must not fire for a row of any notebook's paper profile unless the row is there to
    show the overfitting (and its notebook says so): Table 5's 2- and 3-cache rows on CIFAR-10 (notebook 05's grid)
    and their digits stand-ins (notebook 04's 7 and 11 caches at 20,000 steps)."""
    from lib.experiments.ablations import digits_velocity_field, table5_ablations
    from lib.kit.profiles import profile_settings
    from lib.models import MLP
    from lib.train import released_table_run

    boundary = load_boundary()
    assert boundary is not None
    p = profile_settings("04_digits", "paper")
    rows = table5_ablations(p["CACHES"], p["BATCH_SIZES"], p["MAIN_CACHES"], p["MAIN_BATCH"], p["PAPER_MAIN_CACHES"])
    params = sum(w.numel() for w in digits_velocity_field(p["MODEL"], p["HIDDEN"], p["SEED"]).parameters())
    past = {
        a.paper_label: boundary.check(TableRun(p["STEPS"], a.batch_size, 1437, a.num_caches, params, 64)).past
        for a in rows
        if a.coupling == "loom"
    }
    assert past == {
        "fixed source w/o reassignments": False,
        "train after convergence": False,
        "LOOM-CFM 4 caches bs128": False,
        "LOOM-CFM 2 caches bs128": True,  # shows it, as the paper's 2 caches do
        "LOOM-CFM 3 caches bs128": True,
        "LOOM-CFM 4 caches bs32": False,
        "LOOM-CFM 4 caches bs64": False,
    }
    main = TableRun(p["STEPS"], p["MAIN_BATCH"], 1437, p["MAIN_CACHES"], params, 64)
    assert boundary.check(main).caches_needed == p["MAIN_CACHES"]  # the paper profile's LOOM-CFM is the rule's pick
    c = profile_settings("05_cifar10", "paper")
    assert not boundary.check(released_table_run("cifar10", c["CACHES"])).past
    assert [boundary.check(released_table_run("cifar10", k)).past for k in c["GRID_CACHES"]] == [True, True, False]
    assert profile_settings("06_imagenet", "paper")["CACHES"] == 1
    assert not boundary.check(released_table_run("imagenet32", 1)).past  # 06's paper profile: ImageNet-32
    assert not boundary.check(
        released_table_run("ffhq256_latent", profile_settings("07_ffhq_latent", "paper")["CACHES"])
    ).past
    # The 2-D toys (01, 03) and the kit beside torchcfm (13): one table per toy or digits model, none there to overfit.
    t = profile_settings("01_toy_couplings", "paper")
    assert not boundary.check(
        TableRun(t["TRAIN_STEPS"], t["BATCH_SIZE"], t["DATASET_SIZE"], 1, n_params(MLP(2)), 2)
    ).past
    t = profile_settings("03_toy_generation", "paper")
    toy = TableRun(t["STEPS"], t["BATCH_SIZE"], t["DATASET_SIZE"], 1, n_params(MLP(2, hidden=t["HIDDEN"])), 2)
    assert not boundary.check(toy).past
    t = profile_settings("13_beside_peers", "paper")
    toy_params, digits_params = n_params(MLP(2, hidden=t["TOY_HIDDEN"])), n_params(MLP(64, hidden=t["DIGITS_HIDDEN"]))
    toy = TableRun(t["TOY_STEPS"], t["TOY_BATCH"], t["DATASET_SIZE"], t["LOOM_CACHES"], toy_params, 2)
    digits = TableRun(t["DIGITS_STEPS"], t["DIGITS_BATCH"], 1437, t["LOOM_CACHES"], digits_params, 64)
    assert not boundary.check(toy).past and not boundary.check(digits).past


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
