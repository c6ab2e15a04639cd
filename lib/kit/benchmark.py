"""``python -m lib.kit.benchmark``: issue 13's targets measured by lib.experiments.benchmarks, written to results/.

One run, each ratio from contenders taking turns in it (meaningful on a busy machine; absolute times are not):

- the synchronous coupling step at batch 128 of 3x32x32 examples with a 50,000-row seed table, LOOM against the
  independent coupling, and the LOOM step's parts (target: LOOM <= 1.8x independent);
- training-step wall time with the model on one torch thread (a pipelined pairing takes the other core): the digits
  UNet at batches 128 and 512 (target: pipelined LOOM <= 1.05x the independent coupling's step) and the 2-D MLP at
  batch 256 (target <= 1.10x), every coupling paired synchronously and pipelined.

    python -m lib.kit.benchmark     # results/quick/benchmarks/{coupling_cost,training_steps,targets}.*, run.json
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict

from lib.experiments.benchmarks import (
    TRAINING_TARGETS,
    CouplingBenchmark,
    pipelined_ratios,
    summary,
    time_couplings,
    torch_threads,
    training_step_sweep,
)
from lib.kit import results

MODELS = {"digits UNet": "digits", "2-D MLP": "mlp"}  # label -> lib.checkpoints.build_model name


def target_rows(ratios: list[dict[str, object]]) -> list[dict[str, object]]:
    """The training-step targets: pipelined LOOM over the independent coupling's (synchronous) step, per model and
    batch size measured, against TRAINING_TARGETS."""
    names = {label: name for label, name in MODELS.items()}
    return [
        {
            "model": r["model"],
            "batch_size": r["batch_size"],
            "loom_pipelined_over_independent": r["pipelined_over_independent"],
            "loom_synchronous_over_independent": r["synchronous_over_independent"],
            "target": TRAINING_TARGETS[names[str(r["model"])]],
            "met": float(r["pipelined_over_independent"]) <= TRAINING_TARGETS[names[str(r["model"])]],
        }
        for r in ratios
        if r["coupling"] == "loom"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib.kit.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--num-examples", type=int, default=CouplingBenchmark.num_examples, help="rows of LOOM's seed table"
    )
    parser.add_argument("--batch-size", type=int, default=CouplingBenchmark.batch_size, help="coupling step's batch")
    parser.add_argument("--steps", type=int, default=CouplingBenchmark.steps, help="timed coupling steps each")
    parser.add_argument("--unet-batches", type=int, nargs="*", default=[128, 512], help="digits UNet batch sizes")
    parser.add_argument("--mlp-batches", type=int, nargs="*", default=[256], help="2-D MLP batch sizes")
    parser.add_argument("--training-steps", type=int, default=5, help="timed turns per training contender")
    parser.add_argument("--block", type=int, default=3, help="training steps per turn")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--profile", default="quick", choices=["quick", "paper"], help="results subfolder")
    parser.add_argument("--results-dir", default="", help="results root (default: <repo>/results)")
    args = parser.parse_args(argv)
    setting = CouplingBenchmark(
        num_examples=args.num_examples, batch_size=args.batch_size, steps=args.steps, device=args.device
    )
    params = {
        "QUICK": args.profile == "quick",
        "SEED": setting.seed,
        "RESULTS_DIR": args.results_dir,
        **{k.upper(): v for k, v in asdict(setting).items()},
        "UNET_BATCHES": args.unet_batches,
        "MLP_BATCHES": args.mlp_batches,
        "TRAINING_STEPS": args.training_steps,
        "BLOCK": args.block,
    }
    run = results.start_run("benchmarks", params, profile=args.profile)
    with torch_threads(1):  # the setting: one torch thread
        rows = time_couplings(setting)
        coupling = summary(rows, setting)
    run.write_table("coupling_cost", rows)
    run.write_json("coupling_cost", coupling)
    training = []
    for label, batches in (("digits UNet", args.unet_batches), ("2-D MLP", args.mlp_batches)):
        training += training_step_sweep(
            {label: MODELS[label]}, batches, args.training_steps, 1, args.block, threads=1, device=args.device
        )
    run.write_table("training_steps", training)
    ratios = pipelined_ratios(training)
    run.write_table("training_step_ratios", ratios)
    # The load average says how much of "the other core" the pairing thread really had (other processes count).
    targets = {"coupling": coupling, "training": target_rows(ratios), "load_average_1_5_15_min": os.getloadavg()}
    run.write_json("targets", targets)
    run.finish()
    print(f"LOOM coupling step {coupling['loom_over_independent']:.2f}x independent (target <= 1.8)")
    for t in targets["training"]:
        print(
            f"{t['model']} batch {t['batch_size']}: pipelined LOOM {t['loom_pipelined_over_independent']:.3f}x "
            f"independent (synchronous {t['loom_synchronous_over_independent']:.3f}x; target <= {t['target']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
