"""python -m lib.kit.benchmark: the coupling benchmark written to results/ with its run.json."""

from __future__ import annotations

import json
from pathlib import Path

from lib.kit import benchmark


def test_benchmarks_cli_still_writes_its_tables(tmp_path: Path) -> None:
    assert (
        benchmark.main(["--num-examples", "64", "--batch-size", "8", "--steps", "1", "--results-dir", str(tmp_path)])
        == 0
    )
    summary = json.loads((tmp_path / "quick" / "benchmarks" / "coupling_cost.json").read_text())
    assert summary["batch_size"] == 8 and summary["ms_loom"] > 0
