"""Coupling-cost benchmark: wall time of one coupling step, LOOM vs independent vs minibatch OT.

Issue target: at batch 128 with CIFAR-shaped examples (3x32x32) and 50k examples, on the CPU, a LOOM
step costs at most 2x an independent step. All couplings see the same batches in one run, so the
ratios are comparable even on a noisy machine. The LOOM step is also broken into its parts (noise
regeneration from seeds, cost matrix, exact assignment) to show where the time goes.

    python -m lib.benchmarks            # writes results/quick/benchmarks/coupling_cost.{csv,json}
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from lib import results
from lib.couplings import COUPLINGS, SEED_HIGH, cost_matrix, epoch_batches, exact_assignment, make_coupling, noise_from_seeds


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


def _clock() -> float:
    """perf_counter after any queued CUDA work has finished."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def interleaved_median_ms(fns: dict[str, Callable[[int], object]], steps: int, warmup: int) -> dict[str, float]:
    """Median wall time in ms of each ``fn(step)``; the functions take turns at every step.

    Taking turns exposes every contender to the same background load, so their ratios stay
    meaningful on a shared, noisy machine even when the absolute times drift.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for step in range(warmup + steps):
        for name, fn in fns.items():
            start = _clock()
            fn(step)
            if step >= warmup:
                times[name].append(_clock() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def _batches(setting: CouplingBenchmark) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x (B, *shape), index (B,)) pairs: random CIFAR-shaped data with disjoint indices from one epoch.

    Only the batch's data is materialised; the seed table still has num_examples rows.
    """
    generator = torch.Generator().manual_seed(setting.seed)
    indices = epoch_batches(setting.num_examples, setting.batch_size, generator)
    count = setting.steps + setting.warmup
    return [(torch.rand(setting.batch_size, *setting.shape, generator=generator).to(setting.device) * 2 - 1,
             indices[i % len(indices)]) for i in range(count)]


def file_per_example_step(folder: Path, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The approach we replace: each example's noise lives in its own file, read and rewritten every step.

    x: (B, *shape), index: (B,) -> z (B, *shape) re-paired by exact assignment, files rewritten.
    """
    z = torch.stack([torch.load(folder / f"{i}.pt") for i in index.tolist()])
    perm = exact_assignment(cost_matrix(x, z))
    z = z[torch.as_tensor(perm)]
    for i, noise in zip(index.tolist(), z):
        torch.save(noise.clone(), folder / f"{i}.pt")
    return z


def seed_files(folder: Path, setting: CouplingBenchmark, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """One noise file per example touched by ``batches`` (the untouched 50k would only cost disk)."""
    for i in torch.cat([index for _, index in batches]).unique().tolist():
        torch.save(torch.randn(setting.shape), folder / f"{i}.pt")


def time_couplings(setting: CouplingBenchmark) -> list[dict[str, object]]:
    """One row per contender: median ms per step and its ratio to the independent coupling.

    Contenders: the three couplings, LOOM with one file per example (the approach replaced), and
    the parts of a LOOM step (noise from seeds, cost matrix, exact assignment) next to torch.randn.
    """
    batches = _batches(setting)
    coupling = {name: make_coupling(name, setting.num_examples, seed=setting.seed) for name in COUPLINGS}
    x, _ = batches[0]
    seeds = torch.randint(SEED_HIGH, (setting.batch_size,), generator=torch.Generator().manual_seed(1))
    z = noise_from_seeds(seeds, setting.shape, setting.device)
    costs = cost_matrix(x, z)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seed_files(folder, setting, batches)
        fns: dict[str, Callable[[int], object]] = {
            **{name: (lambda step, c=c: c(*batches[step])) for name, c in coupling.items()},
            "loom with one file per example": lambda step: file_per_example_step(folder, *batches[step]),
            "loom part: noise from seeds": lambda step: noise_from_seeds(seeds, setting.shape, setting.device),
            "independent part: torch.randn": lambda step: torch.randn(x.shape, device=x.device),
            "loom part: cost matrix (cdist)": lambda step: cost_matrix(x, z),
            "loom part: exact assignment (scipy)": lambda step: exact_assignment(costs),
        }
        medians = interleaved_median_ms(fns, setting.steps, setting.warmup)
    base = medians["independent"]
    return [{"part": name, "ms_per_step": ms, "ratio_to_independent": ms / base} for name, ms in medians.items()]


def summary(rows: list[dict[str, object]], setting: CouplingBenchmark) -> dict[str, object]:
    """The headline ratios and whether the issue's target (LOOM <= 2x independent) is met."""
    ms = {r["part"]: r["ms_per_step"] for r in rows}
    return {
        **asdict(setting), "torch_threads": torch.get_num_threads(),
        "ms_independent": ms["independent"], "ms_minibatch_ot": ms["minibatch_ot"], "ms_loom": ms["loom"],
        "loom_over_independent": ms["loom"] / ms["independent"],
        "minibatch_ot_over_independent": ms["minibatch_ot"] / ms["independent"],
        "loom_over_minibatch_ot": ms["loom"] / ms["minibatch_ot"],
        "file_per_example_over_loom": ms["loom with one file per example"] / ms["loom"],
        "target_loom_at_most_2x_independent": ms["loom"] / ms["independent"] <= 2.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-examples", type=int, default=CouplingBenchmark.num_examples)
    parser.add_argument("--batch-size", type=int, default=CouplingBenchmark.batch_size)
    parser.add_argument("--steps", type=int, default=CouplingBenchmark.steps)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"], help="results subfolder")
    parser.add_argument("--results-dir", default="", help="results root (default: <repo>/results)")
    args = parser.parse_args(argv)
    setting = CouplingBenchmark(num_examples=args.num_examples, batch_size=args.batch_size, steps=args.steps,
                                device=args.device)
    params = {"QUICK": args.profile == "quick", "SEED": setting.seed, "RESULTS_DIR": args.results_dir,
              **{k.upper(): v for k, v in asdict(setting).items()}}
    run = results.start_run("benchmarks", params)
    rows = time_couplings(setting)
    run.write_table("coupling_cost", rows)
    run.write_json("coupling_cost", summary(rows, setting))
    run.finish()
    for row in rows:
        print(f"{row['part']:38s} {row['ms_per_step']:8.2f} ms  x{row['ratio_to_independent']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def time_training_steps(model: torch.nn.Module, data: torch.Tensor, batch_size: int, steps: int, warmup: int = 3,
                        seed: int = 0, bf16: bool = False) -> list[dict[str, object]]:
    """Median ms of one full training step (coupling + CFM loss + backward + Adam) per coupling, and of the
    coupling alone, taking turns every step. data: (N, *shape) on the model's device.

    Rows: part ("<coupling>: training step" or "<coupling>: coupling alone"), ms_per_step, and
    ratio_to_independent (training steps) or share_of_step (coupling alone).
    """
    from lib.train import Loop, TrainConfig, cfm_step

    device = next(model.parameters()).device
    config = TrainConfig(batch_size=batch_size, seed=seed, bf16=bf16)
    generator = torch.Generator().manual_seed(seed)
    batches = [epoch_batches(len(data), batch_size, generator)[0] for _ in range(steps + warmup)]
    fns: dict[str, Callable[[int], object]] = {}
    for name in COUPLINGS:
        net = copy.deepcopy(model)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        loop = Loop(step=0, epoch=0, batches=[], generator=torch.Generator().manual_seed(seed))
        coupling = make_coupling(name, len(data), seed=seed)
        shadow = make_coupling(name, len(data), seed=seed)  # its own state, so timing it leaves training intact

        def train_step(step: int, net=net, optimizer=optimizer, loop=loop, coupling=coupling) -> None:
            loss, _ = cfm_step(net, data, coupling, batches[step], loop, config, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        fns[f"{name}: training step"] = train_step
        fns[f"{name}: coupling alone"] = lambda step, c=shadow: c(data[batches[step]], batches[step])
    medians = interleaved_median_ms(fns, steps, warmup)
    base = medians["independent: training step"]
    rows: list[dict[str, object]] = []
    for name in COUPLINGS:
        step_ms, coupling_ms = medians[f"{name}: training step"], medians[f"{name}: coupling alone"]
        rows.append({"part": f"{name}: training step", "ms_per_step": step_ms, "ratio_to_independent": step_ms / base,
                     "images_per_s": 1e3 * batch_size / step_ms, "bf16": bf16})
        rows.append({"part": f"{name}: coupling alone", "ms_per_step": coupling_ms, "share_of_step": coupling_ms / step_ms})
    return rows
