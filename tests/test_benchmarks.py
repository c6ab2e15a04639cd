"""The coupling-cost benchmark measures what it says (timings themselves are checked in results/, not here)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from lib import benchmarks


def test_time_couplings_reports_every_contender_against_independent() -> None:
    setting = benchmarks.CouplingBenchmark(num_examples=500, shape=(3, 4, 4), batch_size=16, steps=3, warmup=1)
    rows = benchmarks.time_couplings(setting)
    parts = [r["part"] for r in rows]
    assert parts[:4] == ["independent", "minibatch_ot", "loom", "loom with one file per example"]
    assert all(r["ms_per_step"] > 0 for r in rows)
    assert rows[0]["ratio_to_independent"] == 1.0
    summary = benchmarks.summary(rows, setting)
    assert summary["loom_over_independent"] == rows[2]["ms_per_step"] / rows[0]["ms_per_step"]


def test_file_per_example_step_permutes_the_stored_noise() -> None:
    """The file-based baseline really re-pairs: the set of noise vectors on disk is unchanged, the order not."""
    setting = benchmarks.CouplingBenchmark(num_examples=64, shape=(2, 3), batch_size=8)
    x = torch.randn(8, 2, 3)
    index = torch.arange(8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        benchmarks.seed_files(folder, setting, [(x, index)])
        before = torch.stack([torch.load(folder / f"{i}.pt") for i in range(8)])
        z = benchmarks.file_per_example_step(folder, x, index)
        after = torch.stack([torch.load(folder / f"{i}.pt") for i in range(8)])
    assert torch.equal(z, after)
    key = lambda t: sorted(map(tuple, t.flatten(1).tolist()))  # noqa: E731
    assert key(before) == key(after)


def test_time_training_steps_times_every_coupling_and_its_share() -> None:
    from lib.models import MLP

    rows = benchmarks.time_training_steps(MLP(6, hidden=16, depth=2), torch.randn(64, 6), batch_size=16, steps=2,
                                          warmup=1)
    steps = [r for r in rows if r["part"].endswith("training step")]
    shares = [r for r in rows if r["part"].endswith("coupling alone")]
    assert [r["part"].split(":")[0] for r in steps] == ["independent", "minibatch_ot", "loom"]
    assert steps[0]["ratio_to_independent"] == 1.0 and all(r["images_per_s"] > 0 for r in steps)
    assert all(0 < r["share_of_step"] for r in shares)
