"""Training launched from a notebook (lib.experiments.pipeline.launch_training): its progress and output reach the
cell and train.log, and interrupting the cell stops every process the way Ctrl-C stops lib.train."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lib import REPO_ROOT
from lib.checkpoints import read_training_checkpoint
from lib.experiments import pipeline
from lib.train import TrainConfig, TrainSettings

STEPS = 400


def settings(out: Path, checkpoint_every: int = 4) -> TrainSettings:
    """A tiny digits MLP run, long enough to be interrupted, checkpointing every 4 steps (0: at the end or on a
    stop only)."""
    config = TrainConfig(
        steps=STEPS, batch_size=8, log_every=4, checkpoint_every=checkpoint_every, pairing="synchronous"
    )
    return TrainSettings(out=str(out), dataset="digits", model="mlp", device="cpu", train=config)


def children(pid: int) -> dict[int, int]:
    """{child pid: parent pid} of every process below ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = {}, {pid}
    while frontier:
        below = {c: p for c, p in parents.items() if p in frontier and c not in found}
        found.update(below)
        frontier = set(below)
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def default_sigint() -> None:
    """In a child: Ctrl-C raises KeyboardInterrupt, as in a kernel, even where this test runs with SIGINT ignored (a
    shell's background job: the child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_kernel(run: TrainSettings, nproc: int, ready: Callable[[], bool]) -> subprocess.Popen[str]:
    """A process standing for a notebook kernel, running a cell that launches the training ``run``; returns once
    ``ready()``."""
    cell = (
        f"from lib.experiments import pipeline; from lib.train import TrainSettings, parse_args; "
        f"pipeline.launch_training(TrainSettings.from_args(parse_args({run.to_argv()!r})), {nproc})"
    )
    kernel = subprocess.Popen(
        [sys.executable, "-c", cell],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "LOOM_PROGRESS": "log"},  # as under papermill
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    while not ready():
        assert kernel.poll() is None, kernel.communicate()[1][-3000:]
        time.sleep(0.05)
    return kernel


@pytest.mark.slow
def test_an_interrupted_cell_stops_every_worker_releases_the_lock_and_the_rerun_resumes(tmp_path: Path) -> None:
    """The kernel gets SIGINT (the notebook's stop button) while launch_training runs torchrun with 2 ranks: the
    launcher forwards it, both ranks finish the step and write the checkpoint, no process survives, the lock is
    released, the KeyboardInterrupt reaches the cell, and running the cell again resumes from that step."""
    out = tmp_path / "run"
    kernel = start_kernel(settings(out), 2, (out / "checkpoint.pt").exists)
    launched = children(kernel.pid)
    assert len(launched) >= 3, launched  # torchrun and its two workers
    kernel.send_signal(signal.SIGINT)
    stdout, stderr = kernel.communicate(timeout=120)
    assert kernel.returncode != 0 and stderr.rstrip().endswith("KeyboardInterrupt"), stderr[-3000:]
    match = re.search(rf"interrupted by SIGINT after step (\d+) of {STEPS}: saved", stderr)
    assert match, stderr[-3000:]  # lib.train's own line, shown in the cell
    assert not [pid for pid in launched if alive(pid)], "processes survived the interrupted cell"
    assert not (out / "run.lock").exists()
    step = int(match.group(1))
    assert read_training_checkpoint(out / "checkpoint.pt")["global_step"] == step < STEPS
    assert re.search(r"loom: +\d+%\|", stderr)  # the relayed progress bar, drawn in the cell
    log = (out / pipeline.TRAIN_LOG).read_text()
    assert "lib.train --out" in log and f"interrupted by SIGINT after step {step}" in log

    pipeline.launch_training(settings(out), 2)  # the cell again
    log = (out / pipeline.TRAIN_LOG).read_text()
    assert f"resuming {out / 'checkpoint.pt'} at step {step} of {STEPS}" in log
    assert log.rstrip().splitlines()[-1].startswith(f"loom: step {STEPS}/{STEPS}, loss ")
    assert read_training_checkpoint(out / "checkpoint.pt")["global_step"] == STEPS
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history] == list(range(4, STEPS + 1, 4))  # nothing lost or repeated


@pytest.mark.slow
def test_a_killed_kernel_stops_its_training_with_a_checkpoint(tmp_path: Path) -> None:
    """The kernel is killed (a restart, papermill shutting it down): the training, in its own session, is not
    orphaned; it gets SIGINT (the parent-death signal) and stops as on Ctrl-C, though nobody reads its output any
    more: the checkpoint of the step it stopped at (the only one: no periodic checkpoints) and the lock released."""
    out = tmp_path / "run"
    log = out / pipeline.TRAIN_LOG

    def training() -> bool:  # its bar relayed its first state: the loop has started
        return log.exists() and "loom: step" in log.read_text()

    kernel = start_kernel(settings(out, checkpoint_every=0), 1, training)
    (training_pid,) = children(kernel.pid)
    kernel.kill()
    kernel.communicate(timeout=30)
    deadline = time.monotonic() + 120
    while alive(training_pid):
        assert time.monotonic() < deadline, "the training outlived its killed kernel"
        time.sleep(0.05)
    assert not (out / "run.lock").exists()
    assert read_training_checkpoint(out / "checkpoint.pt")["global_step"] < STEPS


def test_a_launched_training_shows_its_progress_and_tees_its_output(tmp_path: Path, capsys, monkeypatch) -> None:
    """One process: its settings line is printed, its bar drawn here (logged lines, as under papermill) with loss and
    the last checkpoint, and train.log holds the command, the output and the final progress."""
    monkeypatch.setenv("LOOM_PROGRESS", "log")
    out = tmp_path / "run"
    run = replace_steps(settings(out), 12)
    assert pipeline.launch_training(run) == out / "checkpoint.pt"
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[0])["steps"] == 12  # lib.train's resolved settings
    assert re.search(r"loom: 100%\|#+\| 12/12 \[.*loss [\d.]+, saved step 12\]", captured.err), captured.err
    assert "@loom-progress" not in captured.err + captured.out
    log = (out / pipeline.TRAIN_LOG).read_text().splitlines()
    assert log[0].startswith("=== ") and "-m lib.train --out" in log[0]
    assert log[-1].startswith("loom: step 12/12, loss ") and log[-1].endswith("saved step 12")


def replace_steps(run: TrainSettings, steps: int) -> TrainSettings:
    from dataclasses import replace

    return replace(run, train=replace(run.train, steps=steps))
