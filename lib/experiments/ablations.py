"""Paper Table 5 ablations at laptop scale: scikit-learn digits, a small velocity field, CPU minutes.

One :class:`Ablation` per table row says how the noise is paired (coupling, caches, batch size, the
``no_swaps`` and ``converge_first`` switches of lib.couplings / lib.train). :func:`train_ablation` trains
it on the training split of the digits, :func:`evaluate_model` samples it with fixed-grid solvers at given
NFE (and dopri5) and scores the samples against the held-out split with two numbers:

- ``fd``: Frechet distance in the features of a small digits classifier (lib.fid, a CPU stand-in for FID);
- ``w2``: exact 2-Wasserstein distance in pixel space (64-d vectors in [-1, 1]), as many samples as held-out digits.

:func:`ordering_agreement` compares the ranking of the rows with the paper's Table 5 ranking at each NFE.

    train, test = digits_split(seed=0)
    rows = table5_ablations(caches=[1, 2, 4], batch_sizes=[32, 64, 128], main_caches=4, main_batch=128)
    trained = train_ablation(rows[-1], train, AblationBudget(steps=1500))
    evaluate_model(trained.ema, noise_like(test, 1), test, solver_specs([2, 4], ["midpoint"]), classifier)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn

from lib.checkpoints import build_model
from lib.couplings import make_coupling
from lib.fid import DigitsClassifier, digits_frechet_distance
from lib.metrics import w2
from lib.paper import COUPLING_ROWS, TABLE5_BATCH, TABLE5_CACHES, paper_rows, sweep_label, table5_sweep
from lib.solvers import integrate, solver_for_nfe
from lib.toy import digits_split_indices, digits_vectors
from lib.train import TrainConfig, TrainResult, train_flow

ModelKind = Literal["mlp", "unet"]
MODEL_KINDS: tuple[str, ...] = ("mlp", "unet")
DIGIT_SHAPE: tuple[int, int, int] = (1, 8, 8)


@dataclass(frozen=True)
class Ablation:
    """One row of Table 5: how noise is paired with data while training."""

    label: str  # the row's name, the paper's where it has one
    coupling: str  # independent, minibatch_ot or loom (lib.couplings)
    num_caches: int = 1  # LOOM noise caches per example
    batch_size: int = 128  # training and OT batch
    no_swaps: bool = False  # loom: never re-pair (fixed source w/o reassignments)
    converge_first: bool = False  # loom: converge the pairing before training (train after convergence)
    cost: str = "l2"  # pairing cost (lib.couplings.COST_NAMES): l2 as the released code, sqeuclidean as the paper
    paper_caches: int = 0  # the paper's cache count this row stands for when the counts are scaled (0: num_caches)

    @property
    def paper_label(self) -> str | None:
        """The matching row label of the paper's Table 5 (a plain LOOM-CFM run is named by its caches and batch
        there), or None (I-CFM is not in Table 5, and every paper row pairs with the released code's l2 cost)."""
        if self.cost != "l2":
            return None
        if self.coupling == "loom" and not (self.no_swaps or self.converge_first):
            return sweep_label(self.paper_caches or self.num_caches, self.batch_size)
        return self.label if self.label in {r["method"] for r in paper_rows("5", "cifar10")} else None


@dataclass(frozen=True)
class AblationBudget:
    """Training settings shared by every row (the batch size comes from the row)."""

    steps: int = 1500  # optimiser steps per row
    lr: float = 1e-3  # Adam learning rate
    hidden: int = 256  # MLP width (mlp only)
    model: str = "mlp"  # mlp: MLP on (N, 64) vectors; unet: lib.unet digits preset on (N, 1, 8, 8)
    ema_decay: float = 0.999  # EMA of the weights (what gets evaluated)
    seed: int = 0  # weights, data order, time samples, noise seeds


@dataclass
class TrainedAblation:
    """A trained row: its EMA model, wall seconds per training step, and the training history."""

    ablation: Ablation
    ema: nn.Module
    seconds_per_step: float
    history: list[dict[str, float]] = field(default_factory=list)


def table5_ablations(
    caches: Sequence[int],
    batch_sizes: Sequence[int],
    main_caches: int = 4,
    main_batch: int = 128,
    paper_main_caches: int = 0,
) -> list[Ablation]:
    """The Table 5 rows: I-CFM, the three ablations, LOOM-CFM, then LOOM with each cache count (at
    ``main_batch``) and each batch size (at ``main_caches``); no configuration appears twice.

    The ablation rows use LOOM-CFM's caches and batch size, so they differ from it in one switch only.
    paper_main_caches: the paper's caches that ``main_caches`` stands for (0: the same). When the counts are scaled
    (notebook 04's paper profile scales the paper's 4 to the caches rule's count), each LOOM row stands for the
    paper's row at the same ratio, c x paper_main_caches / main_caches, rounded: that row is its paper_label.
    """
    scale = (paper_main_caches or main_caches) / main_caches

    def paper_caches(c: int) -> int:
        return round(c * scale) if scale != 1 else 0

    rows = [
        Ablation(
            r.label,
            r.coupling,
            main_caches if r.coupling == "loom" else 1,
            main_batch,
            r.no_swaps,
            r.converge_first,
            paper_caches=paper_caches(main_caches) if r.coupling == "loom" else 0,
        )
        for r in COUPLING_ROWS.values()
    ]
    return rows + [
        Ablation(sweep_label(c, b), "loom", c, b, paper_caches=paper_caches(c))
        for c, b in table5_sweep(caches, batch_sizes, main_caches, main_batch)
    ]


def digits_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[Tensor, Tensor]:
    """The digits as flat vectors in [-1, 1]: (train (N, 64), held-out test (M, 64)), N + M = 1797.

    The kit's one digits split (lib.toy.digits_split_indices), which lib.fid's classifier also uses, so neither
    the flow nor the classifier saw the held-out digits.
    """
    x, _ = digits_vectors()
    train = torch.from_numpy(digits_split_indices("train", test_fraction, seed))
    test = torch.from_numpy(digits_split_indices("test", test_fraction, seed))
    return x[train], x[test]


def as_model_input(vectors: Tensor, kind: str) -> Tensor:
    """(N, 64) vectors -> the model's example shape: (N, 64) for mlp, (N, 1, 8, 8) for unet."""
    check_model_kind(kind)
    return vectors.reshape(-1, *DIGIT_SHAPE) if kind == "unet" else vectors.reshape(len(vectors), -1)


def check_model_kind(kind: str) -> None:
    """Refuse a model name other than mlp or unet, naming both."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; use one of {list(MODEL_KINDS)}")


def digits_velocity_field(kind: str, hidden: int = 256, seed: int = 0) -> nn.Module:
    """A fresh velocity field for digits with weights fixed by ``seed``: MLP(64) or the UNet digits preset."""
    check_model_kind(kind)
    return build_model("digits" if kind == "unet" else "mlp", DIGIT_SHAPE, hidden, seed)


def train_ablation(ablation: Ablation, train: Tensor, budget: AblationBudget) -> TrainedAblation:
    """Train one row on ``train`` (N, 64) vectors; same initial weights, data order and time samples for every row.

    seconds_per_step is wall time over the whole run (coupling + CFM step + EMA; for "train after
    convergence" the convergence pass is included).
    """
    data = as_model_input(train, budget.model)
    model = digits_velocity_field(budget.model, budget.hidden, budget.seed)
    coupling = make_coupling(
        ablation.coupling,
        len(data),
        num_caches=ablation.num_caches,
        seed=budget.seed,
        cost=ablation.cost,
        no_swaps=ablation.no_swaps,
    )
    config = TrainConfig(
        steps=budget.steps,
        batch_size=ablation.batch_size,
        lr=budget.lr,
        ema_decay=budget.ema_decay,
        seed=budget.seed,
        converge_first=ablation.converge_first,
        progress=False,
        log_every=max(1, budget.steps // 50),
    )
    start = time.perf_counter()
    result: TrainResult = train_flow(model, data, coupling, config)
    seconds = (time.perf_counter() - start) / budget.steps
    return TrainedAblation(ablation, result.ema, seconds, result.history)


def compare_costs(
    trained: TrainedAblation,
    train: Tensor,
    budget: AblationBudget,
    z: Tensor,
    reference: Tensor,
    specs: Sequence[str],
    classifier: DigitsClassifier,
) -> list[dict[str, object]]:
    """Plain vs squared Euclidean pairing cost, judged by generation: train ``trained``'s row again with the other
    cost (same budget, weights, data order and time samples), then score both at every solver from the same noise z
    -> rows {label, cost, solver, method, nfe, fd, w2, final_cost} (final_cost in the row's own cost)."""
    other = "sqeuclidean" if trained.ablation.cost == "l2" else "l2"
    variant = replace(trained.ablation, label=f"{trained.ablation.label} ({other})", cost=other)
    rows: list[dict[str, object]] = []
    for run in (trained, train_ablation(variant, train, budget)):
        final = run.history[-1]["cost_after"] if run.history else float("nan")
        rows += [
            {"label": run.ablation.label, "cost": run.ablation.cost, **row, "final_cost": final}
            for row in evaluate_model(run.ema, z, reference, specs, classifier)
        ]
    return rows


def solver_specs(nfes: Sequence[int], methods: Sequence[str], adaptive: bool = True) -> list[str]:
    """Fixed-grid specs that spend exactly each NFE, per method, then "dopri5" if ``adaptive``.

    ([2, 4], ["midpoint", "euler"]) -> ["midpoint-1", "midpoint-2", "euler-2", "euler-4", "dopri5"].
    """
    specs = [solver_for_nfe(m, n).label for m in methods for n in nfes]
    return specs + (["dopri5"] if adaptive else [])


def score_samples(samples: Tensor, reference: Tensor, classifier: DigitsClassifier) -> dict[str, float]:
    """samples (N, *shape), reference (M, 64) held-out vectors -> {"fd": Frechet distance, "w2": exact W2}.

    Samples are clipped to [-1, 1] first, as images are when saved. W2 needs N == M.
    """
    flat = samples.detach().float().reshape(len(samples), -1).clamp(-1, 1)
    return {
        "fd": digits_frechet_distance(flat.reshape(-1, *DIGIT_SHAPE), reference.reshape(-1, *DIGIT_SHAPE), classifier),
        "w2": w2(flat, reference),
    }


def evaluate_model(
    model: nn.Module, z: Tensor, reference: Tensor, specs: Sequence[str], classifier: DigitsClassifier
) -> list[dict[str, object]]:
    """One row per solver: samples from noise z (M, *shape) scored against reference (M, 64).

    Row: solver, method, nfe (TRUE network calls), solver_steps_accepted, solver_steps_attempted, fd, w2.
    """
    rows: list[dict[str, object]] = []
    for spec in specs:
        result = integrate(model, z, spec)
        rows.append(
            {
                "solver": result.spec.label,
                "method": result.spec.method,
                **result.cost(),
                **score_samples(result.x, reference, classifier),
            }
        )
    return rows


def reference_scores(train: Tensor, test: Tensor, classifier: DigitsClassifier, seed: int = 0) -> dict[str, float]:
    """The floor of each metric: training digits (as many as held-out ones) scored like samples -> {fd, w2}."""
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: len(test)]
    return score_samples(train[pick], test, classifier)


def paper_table5(
    table5: Sequence[Mapping[str, str]], table1: Sequence[Mapping[str, str]] = ()
) -> dict[tuple[str, str, int | None], float]:
    """Paper Table 5 FIDs keyed by (paper row label, solver family, NFE); dopri5 keys carry NFE None.

    table5 / table1: rows of lib/reference/paper_results.csv (lib.paper.paper_rows("5", "cifar10") and
    ("1", "cifar10")). Table 1's LOOM-CFM is the same run as Table 5's "LOOM-CFM 4 caches bs128" and fills
    the NFEs Table 5 leaves out (midpoint 8); Table 5's own numbers win where both exist.
    """
    out: dict[tuple[str, str, int | None], float] = {}
    alias = {"LOOM-CFM": sweep_label(TABLE5_CACHES, TABLE5_BATCH)}
    for rows, labels in ((table1, alias), (table5, None)):
        for r in rows:
            label = r["method"] if labels is None else labels.get(r["method"])
            if label is None:
                continue
            nfe = None if r["solver"] == "dopri5" or not r["nfe"] else int(r["nfe"])
            out[label, r["solver"], nfe] = float(r["fid"])
    return out


def concordance(ours: Mapping[str, float], paper: Mapping[str, float]) -> tuple[float, list[tuple[str, str]]]:
    """Fraction of row pairs (both scored in both) that the two scores order the same way, and the
    pairs they order differently, each as (better in the paper, worse in the paper). Lower is better."""
    common = [k for k in ours if k in paper]
    agree, disagree = 0, []
    for a, b in itertools.combinations(common, 2):
        if paper[a] == paper[b] or ours[a] == ours[b]:
            continue
        if (paper[a] < paper[b]) == (ours[a] < ours[b]):
            agree += 1
        else:
            disagree.append((a, b) if paper[a] < paper[b] else (b, a))
    total = agree + len(disagree)
    return (agree / total if total else float("nan")), disagree


def ordering_agreement(
    metrics: Sequence[Mapping[str, object]],
    ablations: Sequence[Ablation],
    paper: Mapping[tuple[str, str, int | None], float],
    metric: str = "fd",
    method: str = "midpoint",
    our_method: str | None = None,
) -> list[dict[str, object]]:
    """Per NFE the paper reports (and dopri5): how our ``metric`` orders the rows against the paper's FID.

    metrics: rows with label, method, nfe and ``metric``. ``our_method`` (default: ``method``) picks our
    fixed-grid solver compared at the same NFE with the paper's ``method`` (dopri5 is then left out).
    Returns rows: solver (ours), paper_solver, nfe, rows_compared, concordance (fraction of pairs ordered
    alike), paper_order / our_order (best first), disagreements.
    """
    our_method = our_method or method
    labels = {a.label: a.paper_label for a in ablations if a.paper_label}
    keys = sorted(
        {(m, n) for (_, m, n) in paper if m == method or (m == "dopri5" and our_method == method)},
        key=lambda k: (k[0] == "dopri5", k[1] or 0),
    )
    out: list[dict[str, object]] = []
    for family, nfe in keys:
        theirs = {label: paper[p, family, nfe] for label, p in labels.items() if (p, family, nfe) in paper}
        ours = family if family == "dopri5" else our_method
        mine = {
            str(r["label"]): float(r[metric])
            for r in metrics
            if r["method"] == ours and (family == "dopri5" or int(r["nfe"]) == nfe) and str(r["label"]) in theirs
        }
        if len(mine) < 2:
            continue
        score, wrong = concordance(mine, theirs)
        out.append(
            {
                "solver": ours,
                "paper_solver": family,
                "nfe": nfe if nfe is not None else "adaptive",
                "rows_compared": len(mine),
                "concordance": score,
                "paper_order": " < ".join(sorted(mine, key=theirs.__getitem__)),
                "our_order": " < ".join(sorted(mine, key=mine.__getitem__)),
                "disagreements": "; ".join(f"paper {a} < {b}" for a, b in wrong),
            }
        )
    return out


def ablation_record(trained: TrainedAblation) -> dict[str, object]:
    """A flat dict of a trained row's settings and timing, for a results table."""
    return {
        **asdict(trained.ablation),
        "paper_label": trained.ablation.paper_label or "",
        "ms_per_step": 1e3 * trained.seconds_per_step,
        "final_cost": trained.history[-1]["cost_after"] if trained.history else float("nan"),
    }
