"""When a finite LOOM noise table overfits: the measured boundary, the caches rule and lib.train's warning.

A LOOM run stores ``caches`` noises per example and visits each V = steps x global batch / (examples x caches)
times (lib.couplings.visits_per_noise). Past a boundary the model learns the stored noises and samples from fresh
noise degrade. Two measurements say where the boundary lies, and :meth:`Boundary.check` picks one per run:

- **The capacity model** (notebook 14, ``capacity_model.json``): a logistic model of whether a run is past the
  boundary, in log V, log params per stored number (params / (examples x caches x dimension)), log steps and log
  dimension, fit to notebook 12's runs. It holds inside the ranges it was fit on (:attr:`CapacityModel.domain`).
- **Visits alone** (notebook 12, ``rule.json``): V* = 146 on digits at 20,000 steps. Used for runs outside the
  capacity model's domain (the paper's own configs: dimension 3,072 and more, hundreds of thousands of steps).

Both answer the same question for one run, so both give V* (the V at which the run would cross, holding everything
but the caches) and the fewest caches that keep the run at or below it.

    boundary = load_boundary()
    check = boundary.check(TableRun(steps=20_000, global_batch=128, num_examples=1437, caches=4, params=607_808,
                                    dim=64))
    check.past, check.v_star, check.caches_needed, check.basis
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lib import REPO_ROOT
from lib.couplings import caches_for_visits, visits_per_noise

STUDY_RESULTS = REPO_ROOT / "results" / "paper"
NOISE_TABLE_RULE = STUDY_RESULTS / "12_noise_table_study" / "rule.json"  # notebook 12: V* from visits alone
CAPACITY_MODEL = STUDY_RESULTS / "14_noise_boundary" / "capacity_model.json"  # notebook 14: the capacity model
FEATURES: tuple[str, ...] = ("visits", "params_per_stored_number", "steps", "dim")  # the model's inputs, logged


@dataclass(frozen=True)
class TableRun:
    """What decides whether a LOOM table overfits: the run's length, batch, table and model size.

    num_examples counts flipped copies where each owns its seeds; dim is the numbers in one noise (C x H x W).
    """

    steps: int
    global_batch: int
    num_examples: int
    caches: int
    params: int
    dim: int

    @property
    def visits(self) -> float:
        """V: how often training sees each stored noise."""
        return visits_per_noise(self.steps, self.global_batch, self.num_examples, self.caches)

    @property
    def params_per_stored_number(self) -> float:
        """Model parameters per number of the noise table (examples x caches x dim)."""
        return self.params / (self.num_examples * self.caches * self.dim)

    def features(self) -> dict[str, float]:
        """The capacity model's inputs, unlogged: {name in FEATURES: value}."""
        return {
            "visits": self.visits,
            "params_per_stored_number": self.params_per_stored_number,
            "steps": float(self.steps),
            "dim": float(self.dim),
        }


@dataclass(frozen=True)
class CapacityModel:
    """P(past the boundary) = sigmoid(intercept + sum_k coef[k] log feature_k), fit by notebook 14.

    domain: {feature: (lowest, highest)} of the runs it was fit on; outside them it is not used.
    """

    intercept: float
    coef: dict[str, float]
    domain: dict[str, tuple[float, float]]

    def logit(self, run: TableRun) -> float:
        """The model's log-odds that ``run`` is past the boundary."""
        x = run.features()
        return self.intercept + sum(self.coef[k] * math.log(x[k]) for k in FEATURES)

    def probability(self, run: TableRun) -> float:
        """P(past the boundary) for ``run``."""
        return 1.0 / (1.0 + math.exp(-self.logit(run)))

    def outside(self, run: TableRun) -> list[str]:
        """The features of ``run`` outside the fitted ranges, each as 'name value (fit lo-hi)'; empty inside."""
        x = run.features()
        return [
            f"{k} {x[k]:.3g} (fit {lo:.3g}-{hi:.3g})" for k, (lo, hi) in self.domain.items() if not lo <= x[k] <= hi
        ]

    def boundary_v(self, run: TableRun) -> float:
        """V* for ``run``: the V at which the log-odds reach 0 as the caches change (everything else held).

        Caches divide V and the params per stored number alike, so the log-odds fall by (coef_V + coef_P) per unit
        of log caches; a model where more caches do not help has no such V and is refused.
        """
        slope = self.coef["visits"] + self.coef["params_per_stored_number"]
        if slope <= 0:
            raise ValueError(f"the capacity model does not fall with more caches (slope {slope:.3g}); refit it")
        one = replace(run, caches=1)
        return one.visits / math.exp(self.logit(one) / slope)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CapacityModel:
        """The model as notebook 14 writes it (``intercept``, ``coef``, ``domain``)."""
        missing = {"intercept", "coef", "domain"} - set(data) or set(FEATURES) - set(data["coef"])
        if missing:
            raise ValueError(f"capacity model lacks {sorted(missing)}; rerun notebook 14's paper profile")
        return cls(
            float(data["intercept"]),
            {k: float(data["coef"][k]) for k in FEATURES},
            {k: (float(lo), float(hi)) for k, (lo, hi) in data["domain"].items()},
        )


@dataclass(frozen=True)
class Check:
    """One run against the boundary: its V, the V* that applies, whether it is past, the caches that fit."""

    visits: float
    v_star: float
    caches_needed: int
    basis: str  # which measurement gave v_star
    outside: tuple[str, ...]  # why the capacity model was not used (empty when it was)

    @property
    def past(self) -> bool:
        return self.visits > self.v_star


@dataclass(frozen=True)
class Boundary:
    """Notebook 12's boundary in visits alone, and notebook 14's capacity model where it holds (or None)."""

    visits: dict[str, Any]  # rule.json: boundary_v, low_v, high_v, threshold, solver
    capacity: CapacityModel | None = None

    def check(self, run: TableRun) -> Check:
        """``run`` against the capacity model inside its domain, else against V* from visits alone."""
        outside = tuple(self.capacity.outside(run)) if self.capacity else ()
        if self.capacity and not outside:
            v_star = self.capacity.boundary_v(run)
            basis = "capacity model (notebook 14)"
        else:
            v_star = float(self.visits["boundary_v"])
            basis = (
                f"visits alone (notebook 12, digits: range {show(self.visits['low_v'])}-{show(self.visits['high_v'])})"
            )
        visits_at_one = replace(run, caches=1).visits
        return Check(run.visits, v_star, caches_for_visits(visits_at_one, v_star), basis, outside)


def show(x: float) -> str:
    """A V for people: one decimal at most (V is 1781 on digits, 0.9 in a toy run)."""
    return f"{round(x, 1):g}"


def load_boundary(rule: Path | None = None, model: Path | None = None) -> Boundary | None:
    """The committed boundary: notebook 12's ``rule`` and notebook 14's capacity ``model`` (defaults: their paper
    results). None when notebook 12's results are absent or found no boundary (then nothing is checked)."""
    rule, model = rule or NOISE_TABLE_RULE, model or CAPACITY_MODEL
    if not rule.is_file():
        return None
    visits = json.loads(rule.read_text())
    if not visits.get("boundary_v"):
        return None
    capacity = CapacityModel.from_json(json.loads(model.read_text())) if model.is_file() else None
    return Boundary(visits, capacity)


def noise_table_warning(run: TableRun, boundary: Boundary | None) -> str | None:
    """A warning when ``run`` is past the boundary that applies to it, else None (and None without a boundary)."""
    if boundary is None:
        return None
    check = boundary.check(run)
    if not check.past:
        return None

    where = f"; outside the capacity model's range: {', '.join(check.outside)}" if check.outside else ""
    return (
        f"warning: this run visits each stored noise V = {run.steps} x {run.global_batch} / ({run.num_examples} x "
        f"{run.caches}) = {show(check.visits)} times, above the boundary V* = {show(check.v_star)} from the "
        f"{check.basis}{where}; past it the table overfits: samples from fresh noise degrade (fresh-noise quality "
        f"{boundary.visits['threshold']}x minibatch OT's at {boundary.visits['solver']}). Use --caches "
        f"{check.caches_needed} or more (README: Choosing caches)."
    )
