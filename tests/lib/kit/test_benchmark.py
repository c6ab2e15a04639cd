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


def test_bad_numbers_and_devices_are_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, message in (
        (["--steps", "0"], "--steps: must be a positive integer, got 0"),
        (["--batch-size", "-8"], "--batch-size: must be a positive integer, got -8"),
        (["--num-examples", "4", "--batch-size", "8"], "--batch-size 8 exceeds --num-examples 4"),
        (["--device", "cuda"], "no usable CUDA GPU; pass --device cpu"),
    ):
        assert benchmark.main([*argv, "--results-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "quick").exists()
