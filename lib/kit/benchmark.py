"""``python -m lib.kit.benchmark``: the targets of issues 13 and 21 (lib.experiments.benchmarks), into results/.

One run, each ratio from contenders taking turns in it (meaningful on a busy machine; absolute times are not):

- the synchronous coupling step at batch 128 of 3x32x32 examples with a 50,000-row seed table, LOOM and minibatch OT
  against the independent coupling, and the LOOM step's parts (targets: LOOM <= 1.8x independent, issue 13; LOOM
  <= 1.3x and minibatch OT <= 1.2x, issue 21), with the assignment's solver and LOOM's noise source;
- the exact assignment (lib.assignment's solver against scipy's) at m = 128..1024 (target: <= 40 ms at m = 1024) and
  the released code's coupling step (cited, lib.paper) over the kit's LOOM step (target: >= 100x), one torch thread;
- training-step wall time with the model on one torch thread (a pipelined pairing takes the other core): the digits
  UNet at batches 128 and 512 (target: pipelined LOOM <= 1.05x the independent coupling's step) and the 2-D MLP at
  batch 256 (target <= 1.10x), every coupling paired synchronously and pipelined;
- under ``torchrun --nproc_per_node=2`` (gloo, launched here): how long a rank takes to hold the global batch's data
  when every rank fetches it whole vs fetches its slice and all-gathers (digits in memory, 3x32x32 HDF5 on disk).

    python -m lib.kit.benchmark     # results/quick/benchmarks/{coupling_cost,assignment,training_steps,...,targets}.*
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from lib import REPO_ROOT, cli, distributed
from lib.datasets import make_dataset, write_hdf5_images
from lib.experiments.benchmarks import (
    ASSIGNMENT_TARGET,
    RELEASED_TARGET,
    TRAINING_TARGETS,
    CouplingBenchmark,
    pipelined_ratios,
    released_comparison,
    solver_comparison,
    summary,
    time_couplings,
    time_rank_data,
    torch_threads,
    training_step_sweep,
)
from lib.files import write_text
from lib.kit import results

MODELS = {"digits UNet": "digits", "2-D MLP": "mlp"}  # label -> lib.checkpoints.build_model name


def target_rows(ratios: list[dict[str, object]]) -> list[dict[str, object]]:
    """The training-step targets: pipelined LOOM over the independent coupling's (synchronous) step, per model and
    batch size measured, against TRAINING_TARGETS."""
    return [
        {
            "model": r["model"],
            "batch_size": r["batch_size"],
            "loom_pipelined_over_independent": r["pipelined_over_independent"],
            "loom_synchronous_over_independent": r["synchronous_over_independent"],
            "target": TRAINING_TARGETS[MODELS[str(r["model"])]],
            "met": float(r["pipelined_over_independent"]) <= TRAINING_TARGETS[MODELS[str(r["model"])]],
        }
        for r in ratios
        if r["coupling"] == "loom"
    ]


def assignment_target(rows: list[dict[str, object]]) -> dict[str, object]:
    """Issue 21's assignment target from :func:`solver_comparison` rows: the solver's ms at ASSIGNMENT_TARGET's m."""
    m, limit = ASSIGNMENT_TARGET
    row = next((r for r in rows if int(r["m"]) == m), None)
    if row is None:
        return {"m": m, "target_ms": limit, "measured": False}
    ms = float(row["assignment_ms"])
    return {
        "m": m,
        "solver": row["solver"],
        "ms": ms,
        "scipy_ms": row["scipy_ms"],
        "target_ms": limit,
        "met": ms <= limit,
    }


def released_target(rows: list[dict[str, object]]) -> dict[str, object]:
    """Issue 21's released-code target from :func:`released_comparison` rows at one torch thread: the cited released
    step (its low end, the conservative ratio) over the kit's LOOM step measured now."""
    row = next(r for r in rows if int(r["torch_threads"]) == 1)
    ratio = float(row["released_over_kit_low"])
    return {
        "released_low_ms": row["released_low_ms"],
        "released_high_ms": row["released_high_ms"],
        "kit_loom_ms": row["kit_loom_ms"],
        "released_over_kit_low": ratio,
        "released_over_kit_high": row["released_over_kit_high"],
        "target": RELEASED_TARGET,
        "met": ratio >= RELEASED_TARGET,
        "source": row["source"],
    }


def rank_data_worker(out: str, hdf5: str, batch_size: int, steps: int) -> None:
    """One torchrun rank of the rank-data timing: rank 0 writes the rows to ``out`` (JSON)."""
    distributed.init_from_env()
    torch.set_num_threads(1)
    datasets = {
        "digits (in memory)": make_dataset("digits", split="train"),
        "3x32x32 HDF5 (on disk)": make_dataset("hdf5", path=hdf5),
    }
    rows = time_rank_data(datasets, batch_size, steps)
    if distributed.is_main():
        write_text(out, json.dumps(rows))
    distributed.shutdown()


def time_rank_data_under_torchrun(ranks: int, batch_size: int, steps: int) -> list[dict[str, object]]:
    """Launch :func:`rank_data_worker` on ``ranks`` CPU processes (torchrun, gloo) and return rank 0's rows."""
    with tempfile.TemporaryDirectory() as tmp:
        hdf5 = write_hdf5_images(
            Path(tmp) / "images.h5", torch.randint(0, 256, (4 * ranks * batch_size, 3, 32, 32), dtype=torch.uint8)
        )
        out = Path(tmp) / "rows.json"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        worker = ["-m", "lib.kit.benchmark", "--rank-data-worker", str(out), str(hdf5), str(batch_size), str(steps)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        subprocess.run([*launcher, *worker], cwd=REPO_ROOT, env=env, check=True, timeout=1200)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.kit.benchmark``: an expected error is one line and status 2 (lib.cli)."""
    return cli.run(benchmark_command, argv)


def benchmark_command(argv: list[str]) -> int:
    parser = cli.parser("python -m lib.kit.benchmark", __doc__)
    parser.add_argument(
        "--num-examples",
        type=cli.positive_int,
        default=CouplingBenchmark.num_examples,
        help="rows of LOOM's seed table",
    )
    parser.add_argument(
        "--batch-size", type=cli.positive_int, default=CouplingBenchmark.batch_size, help="coupling step's batch"
    )
    parser.add_argument(
        "--steps", type=cli.positive_int, default=CouplingBenchmark.steps, help="timed coupling steps each"
    )
    parser.add_argument(
        "--unet-batches", type=cli.positive_int, nargs="*", default=[128, 512], help="digits UNet batches"
    )
    parser.add_argument("--mlp-batches", type=cli.positive_int, nargs="*", default=[256], help="2-D MLP batch sizes")
    parser.add_argument(
        "--assign-sizes", type=cli.positive_int, nargs="*", default=[128, 256, 512, 1024], help="m of the solver timing"
    )
    parser.add_argument("--assign-steps", type=cli.positive_int, default=9, help="timed solves per m and solver")
    parser.add_argument("--training-steps", type=cli.positive_int, default=5, help="timed turns per training contender")
    parser.add_argument("--block", type=cli.positive_int, default=3, help="training steps per turn")
    parser.add_argument(
        "--ranks", type=cli.non_negative_int, default=2, help="torchrun ranks of the rank-data timing (0: skip)"
    )
    parser.add_argument(
        "--rank-batch", type=cli.positive_int, default=128, help="per-rank batch of the rank-data timing"
    )
    parser.add_argument("--rank-data-worker", nargs=4, help=argparse.SUPPRESS)  # OUT HDF5 BATCH STEPS, under torchrun
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"], help="results subfolder")
    parser.add_argument("--results-dir", default="", help="results root (default: <repo>/results)")
    args = parser.parse_args(argv)
    if args.rank_data_worker:
        out, hdf5, batch, steps = args.rank_data_worker
        rank_data_worker(out, hdf5, int(batch), int(steps))
        return 0
    cli.check_device(args.device)
    if args.batch_size > args.num_examples:
        raise ValueError(f"--batch-size {args.batch_size} exceeds --num-examples {args.num_examples}")
    setting = CouplingBenchmark(
        num_examples=args.num_examples, batch_size=args.batch_size, steps=args.steps, device=args.device
    )
    params = {
        "QUICK": args.profile == "quick",
        "SEED": setting.seed,
        "RESULTS_DIR": str(results.published_root(args.results_dir)),  # a command that publishes
        **{k.upper(): v for k, v in asdict(setting).items()},
        "UNET_BATCHES": args.unet_batches,
        "MLP_BATCHES": args.mlp_batches,
        "TRAINING_STEPS": args.training_steps,
        "BLOCK": args.block,
        "RANKS": args.ranks,
        "RANK_BATCH": args.rank_batch,
        "ASSIGN_SIZES": args.assign_sizes,
        "ASSIGN_STEPS": args.assign_steps,
    }
    run = results.start_run("benchmarks", params, profile=args.profile)
    with torch_threads(1):  # the setting: one torch thread
        rows = time_couplings(setting)
        coupling = summary(rows, setting)
        solvers = solver_comparison(args.assign_sizes, setting.shape, args.assign_steps, 1, setting.seed)
    released = released_comparison(coupling["ms_loom"], 1)
    run.write_table("coupling_cost", rows)
    run.write_json("coupling_cost", coupling)
    run.write_table("assignment", solvers)
    run.write_table("released_comparison", released)
    training = []
    for label, batches in (("digits UNet", args.unet_batches), ("2-D MLP", args.mlp_batches)):
        training += training_step_sweep(
            {label: MODELS[label]}, batches, args.training_steps, 1, args.block, threads=1, device=args.device
        )
    run.write_table("training_steps", training)
    ratios = pipelined_ratios(training)
    run.write_table("training_step_ratios", ratios)
    rank_data = time_rank_data_under_torchrun(args.ranks, args.rank_batch, args.steps) if args.ranks > 1 else []
    if rank_data:
        run.write_table("rank_data", rank_data)
    # The load average says how much of "the other core" the pairing thread really had (other processes count).
    targets = {
        "assignment_solver": coupling["assignment_solver"],
        "coupling": coupling,
        "assignment": assignment_target(solvers),
        "released": released_target(released),
        "training": target_rows(ratios),
        "rank_data": rank_data,
        "load_average_1_5_15_min": os.getloadavg(),
    }
    run.write_json("targets", targets)
    run.finish()
    print(
        f"LOOM coupling step {coupling['loom_over_independent']:.2f}x independent (target <= 1.8; noise from "
        f"{coupling['loom_noise']}, assignment by {coupling['assignment_solver']})"
    )
    for t in coupling["coupling_targets"]:
        print(f"{t['coupling']} coupling step {t['over_independent']:.2f}x independent (issue 21: <= {t['target']})")
    print(f"LOOM parts' medians summed: {coupling['loom_parts_over_independent']:.2f}x independent (not judged)")
    a = targets["assignment"]
    if a.get("measured", True):
        print(
            f"exact assignment at m = {a['m']}: {a['ms']:.1f} ms by {a['solver']} (scipy {a['scipy_ms']:.1f} ms; "
            f"target <= {a['target_ms']:.0f} ms)"
        )
    r = targets["released"]
    print(
        f"released coupling step / kit LOOM step: {r['released_over_kit_low']:.0f}-{r['released_over_kit_high']:.0f}x "
        f"(target >= {r['target']:.0f}x)"
    )
    for t in targets["training"]:
        print(
            f"{t['model']} batch {t['batch_size']}: pipelined LOOM {t['loom_pipelined_over_independent']:.3f}x "
            f"independent (synchronous {t['loom_synchronous_over_independent']:.3f}x; target <= {t['target']})"
        )
    for r in rank_data:
        print(f"{r['dataset']}, {r['ranks']} ranks: fetch {r['fetch_ms']:.2f} ms, gather {r['gather_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
