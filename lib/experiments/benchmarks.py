"""Performance of LOOM-CFM: what a coupling step, the assignment, sampling and training cost, and when it matters.

Every timing takes turns between its contenders at each step (:func:`interleaved_median_ms`), so the
ratios reported from one run hold on a noisy, shared machine even when the absolute times drift.
Speed is reported by writing results/, never asserted in tests.

- :func:`time_couplings`         one coupling step, LOOM vs independent vs minibatch OT (notebook 02's
  CIFAR-10 setting: batch 128 of 3x32x32 examples, a 50k-row seed table; targets: SYNC_COUPLING_TARGET,
  COUPLING_TARGETS).
- :func:`loom_breakdown`, :func:`coupling_sweep`   a LOOM step split into noise regeneration, cost matrix,
  assignment and seed write-back, beside the other couplings, for any batch size and example shape.
- :func:`assignment_scaling`, :func:`fit_power_law`   cost matrix, host transfer and exact assignment vs m,
  and the fit log t = a + k log m; :func:`solver_comparison`   the kit's solver (lib.assignment) against scipy's.
- :func:`time_sampling`, :func:`time_training_steps`, :func:`time_presets`, :func:`coupling_share_sweep`
  sampling throughput per solver, training-step time per UNet preset, the coupling's share of a step vs batch.
- :func:`peak_memory`   what a run occupies.

Notebook 09 draws these timings and writes its conclusion from them; ``make benchmark`` (lib.kit.benchmark) and
lib.kit.gpu_check time the same real steps.

    python -m lib.kit.benchmark         # writes results/quick/benchmarks/coupling_cost.{csv,json}
"""

from __future__ import annotations

import copy
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from lib import assignment, distributed
from lib.checkpoints import build_model
from lib.couplings import (
    COUPLINGS,
    LoomCoupling,
    cost_matrix,
    epoch_batches,
    exact_assignment,
    make_coupling,
)
from lib.pairing import PAIRING_MODES, check_pairing_mode
from lib.paper import OFFICIAL_MEASUREMENTS_SOURCE, RELEASED_CONFIGS, RELEASED_COUPLING_STEP
from lib.progress import progress
from lib.solvers import integrate, parse_solver
from lib.toy import sample_toy
from lib.train import RANK_DATA, Data, TrainConfig, Trainer, build_trainer, fetch_global, train_step
from lib.unet import PRESETS

K = TypeVar("K", bound=Hashable)  # what a timing's contenders are keyed by
MAX_DISTINCT_BATCHES = 8  # data tensors materialised per benchmark; later steps reuse them with new indices
LOOM_PARTS: tuple[str, ...] = ("noise from seeds", "cost matrix", "assignment", "write-back")
ASSIGNMENT_PARTS: tuple[str, ...] = ("cost matrix", "transfer", "assignment")


@dataclass(frozen=True)
class CouplingBenchmark:
    """Settings of the coupling-cost benchmark (defaults: the issue's CIFAR-10 setting)."""

    num_examples: int = 50_000  # size of LOOM's seed table
    shape: tuple[int, ...] = (3, 32, 32)  # one example
    batch_size: int = 128  # OT batch
    steps: int = 60  # timed steps per coupling
    warmup: int = 5  # untimed steps first (allocator, scipy import, caches)
    device: str = "cpu"
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Clocks
# ---------------------------------------------------------------------------------------------


def _clock() -> float:
    """perf_counter after any queued CUDA work has finished."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def interleaved_median_ms(fns: Mapping[K, Callable[[int], object]], steps: int, warmup: int) -> dict[K, float]:
    """Median wall time in ms of each ``fn(step)``, by the same keys (a name, or a tuple such as (coupling, pairing));
    the functions take turns at every step.

    Taking turns exposes every contender to the same background load, so their ratios stay
    meaningful on a shared, noisy machine even when the absolute times drift.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    times: dict[K, list[float]] = {name: [] for name in fns}
    for step in range(warmup + steps):
        for name, fn in fns.items():
            start = _clock()
            fn(step)
            if step >= warmup:
                times[name].append(_clock() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


class PartTimer:
    """Splits calls into consecutive parts: ``lap(name)`` closes the part begun at ``start()`` or the last lap.

    Used inside a contender of :func:`interleaved_median_ms`, so the parts come from the very steps
    being timed, under the same load as the other contenders.
    """

    def __init__(self) -> None:
        self.laps: dict[str, list[float]] = {}
        self._last = 0.0

    def start(self) -> None:
        self._last = _clock()

    def lap(self, name: str) -> None:
        now = _clock()
        self.laps.setdefault(name, []).append(now - self._last)
        self._last = now

    def median_ms(self, skip: int) -> dict[str, float]:
        """Median ms of each part over its calls after the first ``skip`` (the warm-up)."""
        return {name: 1e3 * statistics.median(t[skip:]) for name, t in self.laps.items()}


def column(part: str) -> str:
    """A part's column name in the tables: "noise from seeds" -> "noise_from_seeds_ms"."""
    return part.replace(" ", "_").replace("-", "_") + "_ms"


def shape_label(shape: Sequence[int]) -> str:
    """(3, 32, 32) -> "3x32x32"; (2,) -> "2"."""
    return "x".join(str(int(s)) for s in shape)


# ---------------------------------------------------------------------------------------------
# One coupling step (notebook 02's benchmark)
# ---------------------------------------------------------------------------------------------


def _batches(setting: CouplingBenchmark) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x (B, *shape), index (B,)) per step: random data with disjoint indices from one epoch.

    At most MAX_DISTINCT_BATCHES data tensors are materialised (later steps reuse them with other
    indices, so LOOM still meets fresh seeds), which keeps batch 1024 of 4x32x32 examples in memory.
    The seed table still has num_examples rows.
    """
    if setting.batch_size > setting.num_examples:
        raise ValueError(
            f"batch_size {setting.batch_size} exceeds num_examples {setting.num_examples}; "
            "raise num_examples (the seed-table rows) to at least the batch size"
        )
    generator = torch.Generator().manual_seed(setting.seed)
    indices = epoch_batches(setting.num_examples, setting.batch_size, generator)
    count = setting.steps + setting.warmup
    data = [
        torch.rand(setting.batch_size, *setting.shape, generator=generator).to(setting.device) * 2 - 1
        for _ in range(min(count, MAX_DISTINCT_BATCHES))
    ]
    return [(data[i % len(data)], indices[i % len(indices)]) for i in range(count)]


def time_couplings(setting: CouplingBenchmark) -> list[dict[str, object]]:
    """One row per coupling and per part of a LOOM step: median ms per step and its ratio to the independent
    coupling. The parts come from the real LOOM step's timing hook (:func:`loom_breakdown`), not from copies."""
    row = loom_breakdown(setting)
    base = float(row["independent_ms"])
    timed = [(name, float(row[f"{name}_ms"])) for name in COUPLINGS]
    timed += [(f"loom part: {part}", float(row[column(part)])) for part in LOOM_PARTS]
    how = {"assignment_solver": row["assignment_solver"], "loom_noise": row["loom_noise"]}
    return [{"part": name, "ms_per_step": ms, "ratio_to_independent": ms / base, **how} for name, ms in timed]


SYNC_COUPLING_TARGET = 1.8  # issue 13: a synchronous LOOM coupling step at most 1.8x an independent one
# Issue 21: each coupling's synchronous step over the independent one's (batch 128, 3x32x32, a 50k-row table).
COUPLING_TARGETS: dict[str, float] = {"loom": 1.3, "minibatch_ot": 1.2}
ASSIGNMENT_TARGET = (1024, 40.0)  # issue 21: the exact assignment at m = 1024 in at most 40 ms (one thread)
RELEASED_TARGET = 100.0  # issue 21: the released code's coupling step at least 100x the kit's LOOM step (one thread)
# Issue 13: a pipelined LOOM training step over the independent coupling's, per model (lib.checkpoints name).
TRAINING_TARGETS: dict[str, float] = {"digits": 1.05, "mlp": 1.10}


def summary(rows: list[dict[str, object]], setting: CouplingBenchmark) -> dict[str, object]:
    """The headline ratios and whether issue 13's target (a LOOM step at most 1.8x an independent one) and issue 21's
    (COUPLING_TARGETS) are met, with the solver and LOOM's noise source they were measured with."""
    ms = {r["part"]: r["ms_per_step"] for r in rows}
    ratios = {name: ms[name] / ms["independent"] for name in COUPLING_TARGETS}
    return {
        "assignment_solver": rows[0]["assignment_solver"],
        "loom_noise": rows[0]["loom_noise"],
        **asdict(setting),
        "torch_threads": torch.get_num_threads(),
        "ms_independent": ms["independent"],
        "ms_minibatch_ot": ms["minibatch_ot"],
        "ms_loom": ms["loom"],
        "loom_over_independent": ms["loom"] / ms["independent"],
        "minibatch_ot_over_independent": ms["minibatch_ot"] / ms["independent"],
        "loom_over_minibatch_ot": ms["loom"] / ms["minibatch_ot"],
        "target_loom_over_independent": SYNC_COUPLING_TARGET,
        "target_met": ms["loom"] / ms["independent"] <= SYNC_COUPLING_TARGET,
        "coupling_targets": [
            {"coupling": name, "over_independent": ratios[name], "target": t, "met": ratios[name] <= t}
            for name, t in COUPLING_TARGETS.items()
        ],
        # The sum of the LOOM parts' medians over the independent median: each part's median leaves out the steps
        # preempted inside it, so on a busy machine this tracks an idle machine's ratio better than the whole step's
        # median, which a longer step loses to preemption more often. Reported beside the target, never judged.
        "loom_parts_over_independent": sum(ms[f"loom part: {p}"] for p in LOOM_PARTS) / ms["independent"],
    }


# ---------------------------------------------------------------------------------------------
# A LOOM step in parts, per batch size and example shape
# ---------------------------------------------------------------------------------------------


def timed_loom_step(coupling: LoomCoupling, x: Tensor, index: Tensor, timer: PartTimer) -> Tensor:
    """One real LOOM step, ``coupling(x, index)``, with a lap of ``timer`` after each of LOOM_PARTS (through the
    coupling's timing hook) -> the re-paired noise (B, *shape). x: (B, *shape) data, index: (B,) its example indices.

    "write-back" includes the step's statistics (swaps, mean costs), which every training step computes too.
    """
    if coupling.seed_init != "upfront" or coupling.no_swaps:
        raise ValueError(
            "timed_loom_step times the plain LOOM step: build the LoomCoupling with "
            "seed_init='upfront' and no_swaps=False"
        )
    previous, coupling.lap = coupling.lap, timer.lap
    try:
        timer.start()
        return coupling(x, index).z
    finally:
        coupling.lap = previous


def loom_breakdown(setting: CouplingBenchmark) -> dict[str, object]:
    """One row: median ms per step of the three couplings and of each part of a LOOM step, taking turns.

    Columns: shape, dim, batch_size, num_examples, device, ``<coupling>_ms`` for independent /
    minibatch_ot / loom, ``<part>_ms`` for LOOM_PARTS (underscored), parts_total_ms (the timed step
    the parts come from), LOOM's ratios to the other two couplings, the assignment's solver and where LOOM's noise came
    from ("memory": its table's noises fit the default budget, lib.couplings.NoiseMemory; else "seeds").
    """
    batches = _batches(setting)
    couplings = {name: make_coupling(name, setting.num_examples, seed=setting.seed) for name in COUPLINGS}
    instrumented = LoomCoupling(setting.num_examples, seed=setting.seed)
    timer = PartTimer()
    fns: dict[str, Callable[[int], object]] = {
        **{name: (lambda step, c=c: c(*batches[step])) for name, c in couplings.items()},
        "parts_total": lambda step: timed_loom_step(instrumented, *batches[step], timer),
    }
    ms = interleaved_median_ms(fns, setting.steps, setting.warmup)
    parts = timer.median_ms(setting.warmup)
    return {
        "shape": shape_label(setting.shape),
        "dim": math.prod(setting.shape),
        "batch_size": setting.batch_size,
        "num_examples": setting.num_examples,
        "device": setting.device,
        **{f"{name}_ms": ms[name] for name in COUPLINGS},
        **{column(part): parts[part] for part in LOOM_PARTS},
        "parts_total_ms": ms["parts_total"],
        "loom_over_independent": ms["loom"] / ms["independent"],
        "loom_over_minibatch_ot": ms["loom"] / ms["minibatch_ot"],
        "assignment_solver": assignment.solver_for(math.prod(setting.shape)),
        "loom_noise": couplings["loom"].noise_source,
    }


def coupling_sweep(
    shapes: Sequence[Sequence[int]],
    batch_sizes: Sequence[int],
    num_examples: int = 50_000,
    steps: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict[str, object]]:
    """:func:`loom_breakdown` for every example shape x batch size (the seed table grows to the batch if needed).
    The progress bar moves once per sweep point, outside the timed steps."""
    points = [(tuple(int(s) for s in shape), b) for shape in shapes for b in batch_sizes]
    return [
        loom_breakdown(
            CouplingBenchmark(
                num_examples=max(num_examples, b),
                shape=shape,
                batch_size=b,
                steps=steps,
                warmup=warmup,
                device=device,
                seed=seed,
            )
        )
        for shape, b in progress(points, desc="coupling sweep (shape x batch)")
    ]


# ---------------------------------------------------------------------------------------------
# The assignment vs m
# ---------------------------------------------------------------------------------------------


def assignment_scaling(
    sizes: Sequence[int],
    shape: Sequence[int] = (3, 32, 32),
    steps: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    seed: int = 0,
    scipy: bool = False,
) -> list[dict[str, object]]:
    """Per m: median ms of the m x m cost matrix on ``device``, its transfer to the host in float64, and
    the exact assignment (lib.couplings.exact_assignment: lapjv, certified, for points of >= 8 values); the sizes
    take turns, and with ``scipy`` scipy's linear_sum_assignment on the same host matrix takes its own turns beside.

    Data x (m, *shape) uniform in [-1, 1] against Gaussian noise z (m, *shape), as in a LOOM step.
    Rows: m, dim, device, solver, cost_matrix_ms, transfer_ms, assignment_ms, total_ms (and scipy_ms).
    """
    generator = torch.Generator().manual_seed(seed)
    points = {
        m: (
            torch.rand(m, *shape, generator=generator).to(device) * 2 - 1,
            torch.randn(m, *shape, generator=generator).to(device),
        )
        for m in sizes
    }
    timers = {m: PartTimer() for m in sizes}

    def solve(m: int) -> np.ndarray:
        timer, (x, z) = timers[m], points[m]
        timer.start()
        costs = cost_matrix(x, z)
        timer.lap("cost matrix")
        host = costs.double().cpu()  # what exact_assignment solves; its own float64 conversion is then a no-op
        timer.lap("transfer")
        perm = exact_assignment(host, math.prod(shape))
        timer.lap("assignment")
        return perm

    fns: dict[tuple[str, int], Callable[[int], object]] = {("kit", m): (lambda step, m=m: solve(m)) for m in sizes}
    if scipy:
        hosts = {m: cost_matrix(*points[m]).cpu().numpy() for m in sizes}
        fns.update({("scipy", m): (lambda step, m=m: assignment.scipy_assignment(hosts[m])) for m in sizes})
    ms = interleaved_median_ms(fns, steps, warmup)
    rows = []
    for m in sizes:
        parts = timers[m].median_ms(warmup)
        rows.append(
            {
                "m": m,
                "dim": math.prod(shape),
                "device": device,
                "solver": assignment.solver_for(math.prod(shape)),
                **{column(p): parts[p] for p in ASSIGNMENT_PARTS},
                "total_ms": ms[("kit", m)],
                **({"scipy_ms": ms[("scipy", m)]} if scipy else {}),
            }
        )
    return rows


def solver_comparison(
    sizes: Sequence[int], shape: Sequence[int] = (3, 32, 32), steps: int = 5, warmup: int = 1, seed: int = 0
) -> list[dict[str, object]]:
    """Per m: median ms of the kit's exact assignment (lib.assignment: lapjv with its certificate for points of >= 8
    values, else scipy) and of scipy's linear_sum_assignment on the same float32 training cost matrix of uniform data
    against Gaussian noise, taking turns. Rows: m, dim, solver, assignment_ms, scipy_ms, scipy_over_solver,
    same_permutation (the two permutations equal, as lib.assignment proves they are).
    """
    generator = torch.Generator().manual_seed(seed)
    costs = {
        m: cost_matrix(torch.rand(m, *shape, generator=generator) * 2 - 1, torch.randn(m, *shape, generator=generator))
        .cpu()
        .numpy()
        for m in sizes
    }
    fns: dict[tuple[str, int], Callable[[int], object]] = {}
    for m in sizes:
        fns[("kit", m)] = lambda step, c=costs[m]: exact_assignment(c, math.prod(shape))
        fns[("scipy", m)] = lambda step, c=costs[m]: assignment.scipy_assignment(c)
    ms = interleaved_median_ms(fns, steps, warmup)
    return [
        {
            "m": m,
            "dim": math.prod(shape),
            "solver": assignment.solver_for(math.prod(shape)),
            "assignment_ms": ms[("kit", m)],
            "scipy_ms": ms[("scipy", m)],
            "scipy_over_solver": ms[("scipy", m)] / ms[("kit", m)],
            "same_permutation": bool(
                np.array_equal(exact_assignment(costs[m], math.prod(shape)), assignment.scipy_assignment(costs[m]))
            ),
        }
        for m in sizes
    ]


@dataclass(frozen=True)
class PowerLawFit:
    """Least-squares fit of log t = a + k log m, i.e. t = c m^k with c = exp(a) (t in ms)."""

    exponent: float  # k
    log_constant: float  # a (natural log)
    min_size: int  # smallest m used in the fit
    max_size: int  # largest m used in the fit
    points: int  # sizes used

    @property
    def constant(self) -> float:
        """c in t = c m^k (ms)."""
        return math.exp(self.log_constant)

    def predict(self, m: float) -> float:
        """Fitted time in ms at size m."""
        return self.constant * m**self.exponent


def fit_power_law(sizes: Sequence[float], times_ms: Sequence[float], min_size: float = 0) -> PowerLawFit:
    """Fit t = c m^k to (sizes, times_ms) by least squares in log-log, using the sizes >= ``min_size``.

    Small sizes are dominated by fixed overheads (Python, allocation), so ``min_size`` keeps the fit to
    the sizes where the algorithm's growth shows.
    """
    if len(sizes) != len(times_ms):
        raise ValueError(f"{len(sizes)} sizes but {len(times_ms)} times; pass one time per size")
    kept = [(float(m), float(t)) for m, t in zip(sizes, times_ms) if m >= min_size]
    if len({m for m, _ in kept}) < 2:
        raise ValueError(
            f"a power-law fit needs at least two distinct sizes >= min_size={min_size}, got "
            f"{sorted({m for m, _ in kept})}; add sizes or lower min_size"
        )
    if any(m <= 0 or t <= 0 for m, t in kept):
        raise ValueError("sizes and times must be positive for a log-log fit")
    log_m, log_t = np.log([m for m, _ in kept]), np.log([t for _, t in kept])
    k, a = np.polyfit(log_m, log_t, 1)
    return PowerLawFit(
        exponent=float(k),
        log_constant=float(a),
        min_size=int(min(m for m, _ in kept)),
        max_size=int(max(m for m, _ in kept)),
        points=len(kept),
    )


# ---------------------------------------------------------------------------------------------
# Sampling and training
# ---------------------------------------------------------------------------------------------


def check_bf16(device: torch.device | str, bf16: bool) -> None:
    """Refuse bf16 off CUDA: lib.train autocasts on CUDA only, so a CPU row labelled bf16 would be fp32."""
    if bf16 and torch.device(device).type != "cuda":
        raise ValueError(
            f"bf16 autocast runs on CUDA only, but the device is {device}; time bf16 on a GPU "
            "or pass bf16=False (BF16 = [False] in the notebook)"
        )


def autocast(device: torch.device | str, bf16: bool) -> torch.autocast | nullcontext:
    """bf16 autocast on CUDA when asked, fp32 otherwise (see :func:`check_bf16`)."""
    check_bf16(device, bf16)
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()


def time_sampling(
    model: nn.Module,
    shape: Sequence[int],
    solvers: Sequence[str],
    batch_size: int,
    steps: int = 3,
    warmup: int = 1,
    seed: int = 0,
    bf16: bool = False,
) -> list[dict[str, object]]:
    """Sampling throughput per solver spec: ``batch_size`` images from the same noise (B, *shape), solvers
    taking turns. Rows: solver, nfe (true network calls), ms_per_batch, images_per_s, ms_per_network_call.

    For adaptive solvers the NFE depends on the field: an untrained model's dopri5 NFE is not a trained one's.
    """
    device = next(model.parameters()).device
    check_bf16(device, bf16)
    for spec in solvers:
        parse_solver(spec)  # a bad spec fails before anything is timed
    model.eval()
    z = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(seed)).to(device)
    nfe: dict[str, int] = {}

    def run(spec: str) -> None:
        with autocast(device, bf16):
            nfe[spec] = integrate(model, z, spec).nfe

    ms = interleaved_median_ms({spec: (lambda step, spec=spec: run(spec)) for spec in solvers}, steps, warmup)
    return [
        {
            "solver": spec,
            "nfe": nfe[spec],
            "batch_size": batch_size,
            "bf16": bf16,
            "ms_per_batch": ms[spec],
            "images_per_s": 1e3 * batch_size / ms[spec],
            "ms_per_network_call": ms[spec] / nfe[spec],
        }
        for spec in solvers
    ]


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (None: as set), restoring the setting after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _training_turn(trainer: Trainer, block: int) -> None:
    """``block`` real training steps (lib.train.train_step on the trainer's next paired batch), the pairing thread
    let go for exactly this turn: it may pair ahead while these steps train, and the turn ends only when the batch
    it is pairing is done. So every contender's pairing is paid inside its own turns, never during another's."""
    trainer.pairing.resume()
    for _ in range(block):
        train_step(trainer, trainer.pairing.next())
    trainer.pairing.pause()


def time_training_steps(
    model: torch.nn.Module,
    data: torch.Tensor,
    batch_size: int,
    steps: int,
    warmup: int = 3,
    block: int = 2,
    seed: int = 0,
    bf16: bool = False,
    couplings: Sequence[str] = COUPLINGS,
    pairings: Sequence[str] = PAIRING_MODES,
    threads: int | None = None,
    compile_backend: str = "",
) -> list[dict[str, object]]:
    """Median ms of one full training step (lib.train: the pairing of the next batch, CFM loss, backward, clipping,
    Adam, warm-up schedule, EMA) per coupling x pairing mode, and of each coupling step alone, taking turns.

    data: (N, *shape) on the model's device. Each turn is ``block`` consecutive steps of one contender (its time / block
    is one sample), so a pipelined contender runs as in training: pairing the next batch while this one trains.
    ``threads``: torch threads during the timing (1: the model on one core, a pipelined pairing on the other).
    ``compile_backend``: train through ``torch.compile(model, backend=...)`` ("inductor" on a GPU; "" not compiled).
    Rows (one per coupling x pairing): coupling, pairing, step_ms, images_per_s, ratio_to_independent (to the
    independent coupling's synchronous step, or its first pairing mode timed), coupling_ms (that coupling's step
    alone), share_of_step (coupling_ms / step_ms). The caller's global RNG is left as it was.
    """
    if "independent" not in couplings or not set(couplings) <= set(COUPLINGS):
        raise ValueError(f"couplings must be a subset of {COUPLINGS} that includes 'independent', got {couplings}")
    for mode in pairings:
        check_pairing_mode(mode)
    device = next(model.parameters()).device
    check_bf16(device, bf16)
    config = TrainConfig(batch_size=batch_size, lr=1e-4, seed=seed, bf16=bf16, progress=False)
    generator = torch.Generator().manual_seed(seed)
    batches = [epoch_batches(len(data), batch_size, generator)[0] for _ in range(steps + warmup)]
    trainers = {
        (name, mode): build_trainer(
            copy.deepcopy(model), data, make_coupling(name, len(data), seed=seed), replace(config, pairing=mode)
        )
        for name in couplings
        for mode in pairings
    }
    if compile_backend:
        for trainer in trainers.values():
            trainer.net = torch.compile(trainer.net, backend=compile_backend)
    # Keyed (coupling, pairing mode) for a training step, (coupling, "alone") for the coupling step by itself.
    fns: dict[tuple[str, str], Callable[[int], object]] = {
        key: (lambda step, trainer=trainer: _training_turn(trainer, block)) for key, trainer in trainers.items()
    }
    for name in couplings:
        alone = make_coupling(name, len(data), seed=seed)  # its own state, so timing it leaves training intact
        fns[(name, "alone")] = lambda step, c=alone: [c(data[batches[step]], batches[step]) for _ in range(block)]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch_threads(threads):
        for trainer in trainers.values():
            trainer.pairing.start((steps + warmup) * block)
            trainer.pairing.pause()  # paired only inside its own turns
        try:
            medians = {k: v / block for k, v in interleaved_median_ms(fns, steps, warmup).items()}
        finally:
            for trainer in trainers.values():
                trainer.pairing.resume()
                trainer.pairing.stop()
    base = medians[("independent", "synchronous" if "synchronous" in pairings else pairings[0])]
    rows: list[dict[str, object]] = []
    for name, mode in trainers:
        step_ms, coupling_ms = medians[(name, mode)], medians[(name, "alone")]
        rows.append(
            {
                "coupling": name,
                "pairing": mode,
                "step_ms": step_ms,
                "images_per_s": 1e3 * batch_size / step_ms,
                "ratio_to_independent": step_ms / base,
                "coupling_ms": coupling_ms,
                "share_of_step": coupling_ms / step_ms,
                "bf16": bf16,
                "torch_threads": threads or torch.get_num_threads(),
            }
        )
    return rows


def preset_data(preset: str, num: int, device: str, seed: int = 0) -> Tensor:
    """Uniform [-1, 1] examples (num, C, H, W) of a UNet preset's input shape (timing needs no real images)."""
    cfg = PRESETS[preset]
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    return (torch.rand(num, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1).to(device)


def preset_batch(preset: str, batch_size: int) -> int:
    """``batch_size`` if positive, else the preset's released per-GPU batch (lib.paper.RELEASED_CONFIGS)."""
    if batch_size > 0:
        return batch_size
    if preset not in RELEASED_CONFIGS:
        raise ValueError(
            f"preset {preset!r} has no released config; give a positive batch size "
            f"(released: {sorted(RELEASED_CONFIGS)})"
        )
    return int(RELEASED_CONFIGS[preset]["batch_size"])


def peak_memory(device: str) -> dict[str, float | None]:
    """Peak resident memory of this process so far (MiB, resource.getrusage) and, on CUDA, the peak
    tensor memory since the last torch.cuda.reset_peak_memory_stats (MiB; None on the CPU)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else None
    return {"peak_rss_mib": rss_mib, "cuda_peak_mib": cuda}


def time_presets(
    presets: Sequence[str],
    batch_size: int,
    steps: int,
    warmup: int = 2,
    device: str = "cpu",
    bf16: Sequence[bool] = (False,),
    seed: int = 0,
) -> list[dict[str, object]]:
    """Training-step time of each UNet preset (x bf16 setting) with every coupling, paired inside the step and
    ahead of it: one row per (preset, bf16, coupling, pairing) of :func:`time_training_steps`, plus params_m,
    batch_size and :func:`peak_memory`.

    ``batch_size`` 0 takes each preset's released per-GPU batch. bf16 applies on CUDA only. The peak CUDA
    memory covers the whole timing, which holds one model + Adam copy per contender (six).
    """
    rows = []
    for preset in presets:
        b = preset_batch(preset, batch_size)
        for half in bf16:
            if torch.device(device).type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            model = build_model(preset, (), seed=seed).to(device)
            timed = time_training_steps(
                model, preset_data(preset, 2 * b, device, seed), b, steps, warmup, block=1, seed=seed, bf16=half
            )
            memory = peak_memory(device)
            params_m = sum(p.numel() for p in model.parameters()) / 1e6
            rows += [
                {"preset": preset, "device": device, "bf16": half, "batch_size": b, "params_m": params_m, **r, **memory}
                for r in timed
            ]
            del model, timed  # free the GPU memory before the next preset is built
    return rows


def training_step_sweep(
    models: Mapping[str, str],
    batch_sizes: Sequence[int],
    steps: int,
    warmup: int = 1,
    block: int = 2,
    threads: int | None = 1,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict[str, object]]:
    """Training-step wall time of each model x batch size with independent / minibatch OT / LOOM coupling, paired
    synchronously and pipelined (:func:`time_training_steps`; ``threads`` 1: the model on one core, the pairing
    thread on the other).

    models: label -> a lib.checkpoints.build_model name ("mlp" trains on 2-D 8 Gaussians, a UNet preset on uniform
    examples of its input shape); the data holds 4 batches, the seed table as many rows.
    Rows: model, shape, batch_size, then :func:`time_training_steps`' columns.
    """
    rows = []
    points = [(label, name, b) for label, name in models.items() for b in batch_sizes]
    for label, name, b in progress(points, desc="training steps (model x batch)"):  # between timed points
        data = sweep_data(name, 4 * b, device, seed)
        model = build_model(name, tuple(data.shape[1:]), seed=seed).to(device)
        timed = time_training_steps(model, data, b, steps, warmup, block, seed=seed, threads=threads)
        rows += [{"model": label, "shape": shape_label(data.shape[1:]), "batch_size": b, **r} for r in timed]
    return rows


def sweep_data(name: str, num: int, device: str, seed: int = 0) -> Tensor:
    """Training data of :func:`training_step_sweep`: 2-D 8 Gaussians for "mlp", else :func:`preset_data`."""
    if name == "mlp":
        return sample_toy("8gaussians", num, seed).to(device)
    return preset_data(name, num, device, seed)


def pipelined_ratios(rows: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """Per model x batch size of :func:`training_step_sweep` rows: each coupling's pipelined and synchronous step
    over the independent coupling's synchronous step (independent_ms), pipelined over synchronous, and the coupling
    step alone (coupling_ms: a pipelined step cannot be shorter than it)."""
    out = []
    for key in dict.fromkeys((r["model"], r["batch_size"]) for r in rows):
        ms = {(r["coupling"], r["pairing"]): float(r["step_ms"]) for r in rows if (r["model"], r["batch_size"]) == key}
        base = ms[("independent", "synchronous")]
        alone = {str(r["coupling"]): float(r["coupling_ms"]) for r in rows if (r["model"], r["batch_size"]) == key}
        out += [
            {
                "model": key[0],
                "batch_size": key[1],
                "coupling": name,
                "independent_ms": base,
                "coupling_ms": alone[name],
                "synchronous_over_independent": ms[(name, "synchronous")] / base,
                "pipelined_over_independent": ms[(name, "pipelined")] / base,
                "pipelined_over_synchronous": ms[(name, "pipelined")] / ms[(name, "synchronous")],
            }
            for name in dict.fromkeys(c for c, _ in ms)
        ]
    return out


def global_batch_assignment(
    ranks: Sequence[int],
    per_rank_batch: int,
    shape: Sequence[int] = (3, 32, 32),
    steps: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict[str, object]]:
    """What one LOOM step's assignment costs when W ranks pair their global batch of W x ``per_rank_batch``
    examples (simulated: the W-fold m on one process, as every rank solves it): :func:`assignment_scaling` at
    m = W x per_rank_batch, with the ranks' count. Rows: ranks, per_rank_batch, then assignment_scaling's columns.
    """
    sizes = [w * per_rank_batch for w in ranks]
    timed = assignment_scaling(sizes, shape, steps, warmup, device, seed)
    return [{"ranks": w, "per_rank_batch": per_rank_batch, **r} for w, r in zip(ranks, timed)]


def time_rank_data(
    datasets: Mapping[str, Data], batch_size: int, steps: int, warmup: int = 1, seed: int = 0
) -> list[dict[str, object]]:
    """Under torchrun (every rank calls it alike): per dataset, median ms for this rank to hold the data of the
    global batch (lib.train.fetch_global), fetched whole by every rank ("fetch") or fetched as this rank's slice and
    all-gathered ("gather"), the two taking turns on the same batches.

    Rows: dataset, shape, ranks, batch_size (per rank), global_batch, fetch_ms, gather_ms, gather_over_fetch.
    """
    rows = []
    for label, data in datasets.items():
        shape = tuple(data[0][1].shape) if not isinstance(data, Tensor) else tuple(data.shape[1:])
        trainers = {
            mode: build_trainer(
                build_model("mlp", shape, hidden=8, seed=seed),
                data,
                make_coupling("independent", len(data), seed=seed),
                TrainConfig(batch_size=batch_size, rank_data=mode, progress=False, seed=seed),
            )
            for mode in RANK_DATA
        }
        world = distributed.world_size()
        generator = torch.Generator().manual_seed(seed)  # the same batches on every rank
        batches = [epoch_batches(len(data), batch_size * world, generator)[0] for _ in range(steps + warmup)]
        fns = {mode: (lambda step, t=t, b=batches: fetch_global(t, b[step])) for mode, t in trainers.items()}
        ms = interleaved_median_ms(fns, steps, warmup)
        rows.append(
            {
                "dataset": label,
                "shape": shape_label(shape),
                "ranks": world,
                "batch_size": batch_size,
                "global_batch": batch_size * world,
                "fetch_ms": ms["fetch"],
                "gather_ms": ms["gather"],
                "gather_over_fetch": ms["gather"] / ms["fetch"],
            }
        )
    return rows


def released_comparison(kit_loom_ms: float, kit_torch_threads: int) -> list[dict[str, object]]:
    """The released implementation's coupling step (measured facts cited from lib.paper.RELEASED_COUPLING_STEP,
    lib/reference/official_measurements.md) beside the kit's LOOM coupling step measured now in the same setting.

    Rows: measured (what the fact says), torch_threads, released_low_ms / released_high_ms (cited), kit_loom_ms
    (measured here), released_over_kit_low / _high, source.
    """
    return [
        {
            "measured": fact.measured,
            "torch_threads": fact.torch_threads,
            "released_low_ms": fact.low_ms,
            "released_high_ms": fact.high_ms,
            "kit_loom_ms": kit_loom_ms,
            "kit_torch_threads": kit_torch_threads,
            "released_over_kit_low": fact.low_ms / kit_loom_ms,
            "released_over_kit_high": fact.high_ms / kit_loom_ms,
            "source": OFFICIAL_MEASUREMENTS_SOURCE,
        }
        for fact in RELEASED_COUPLING_STEP
    ]


def coupling_share_sweep(
    preset: str,
    batch_sizes: Sequence[int],
    steps: int,
    warmup: int = 1,
    device: str = "cpu",
    bf16: bool = False,
    seed: int = 0,
) -> list[dict[str, object]]:
    """The LOOM coupling's share of a training step of the same UNet as the batch grows.

    Per batch size: independent and LOOM training steps and LOOM's coupling alone, taking turns.
    Rows: preset, device, bf16, batch_size, independent_step_ms, loom_step_ms, coupling_ms,
    coupling_share (coupling_ms / loom_step_ms), loom_over_independent.
    """
    rows = []
    for b in progress(batch_sizes, desc="coupling share (batch)"):  # between timed points
        model = build_model(preset, (), seed=seed).to(device)
        independent, loom = time_training_steps(
            model,
            preset_data(preset, 2 * b, device, seed),
            b,
            steps,
            warmup,
            block=1,
            seed=seed,
            bf16=bf16,
            couplings=("independent", "loom"),
            pairings=("synchronous",),
        )
        rows.append(
            {
                "preset": preset,
                "device": device,
                "bf16": bf16,
                "batch_size": b,
                "independent_step_ms": independent["step_ms"],
                "loom_step_ms": loom["step_ms"],
                "coupling_ms": loom["coupling_ms"],
                "coupling_share": loom["share_of_step"],
                "loom_over_independent": loom["ratio_to_independent"],
            }
        )
    return rows
