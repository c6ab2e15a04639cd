"""``python -m lib.kit.benchmark``: the coupling-cost benchmark of lib.experiments.benchmarks, written to results/.

python -m lib.kit.benchmark            # results/quick/benchmarks/coupling_cost.{csv,json}, run.json
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from lib.experiments.benchmarks import CouplingBenchmark, summary, time_couplings
from lib.kit import results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib.kit.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--num-examples", type=int, default=CouplingBenchmark.num_examples, help="rows of LOOM's seed table"
    )
    parser.add_argument("--batch-size", type=int, default=CouplingBenchmark.batch_size, help="OT batch")
    parser.add_argument("--steps", type=int, default=CouplingBenchmark.steps, help="timed steps per coupling")
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
    }
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
