"""The SLURM example (data_prep/slurm_train.sbatch): valid bash, torchrun and lib.train flags that exist, and the
signal handling that makes it preemption-safe, run with stand-ins for srun and scontrol (no cluster needed)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import REPO_ROOT
from lib.train import TrainSettings, parse_args

SCRIPT = REPO_ROOT / "data_prep" / "slurm_train.sbatch"


def training_line() -> list[str]:
    """The srun line's words (continuation lines joined; ${...} left as written)."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("srun ")]
    return shlex.split(line.rstrip("&"))


def test_the_script_is_bash_and_asks_slurm_for_signals_and_requeue() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    options = dict(re.findall(r"^#SBATCH (--[a-z-]+)(?:=(\S+))?", SCRIPT.read_text(), re.M))
    assert options["--requeue"] == "" and options["--signal"] == "B:USR1@600"
    assert options["--ntasks-per-node"] == "1"  # one torchrun per node: it starts the workers


def test_its_torchrun_and_lib_train_flags_exist() -> None:
    words = training_line()
    at, module = words.index("torchrun"), words.index("-m")
    torchrun_help = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags = [w.split("=")[0] for w in words[at + 1 : module]]
    assert flags and all(f.startswith("--") and f in torchrun_help for f in flags), flags
    assert words[module + 1] == "lib.train"
    settings = TrainSettings.from_args(parse_args(words[module + 2 :]))  # every flag known, values valid
    assert (settings.config, settings.out, settings.train.checkpoint_every) == ("cifar10", "runs/cifar10_loom", 5000)


@pytest.mark.parametrize(
    ("sig", "after_stop"),
    [(signal.SIGUSR1, ["scontrol requeue 42"]), (signal.SIGTERM, [])],
    ids=["time limit near (USR1): requeues itself", "preempted (TERM): SLURM requeues"],
)
def test_on_a_signal_it_stops_the_training_and_outlives_its_checkpoint(
    tmp_path: Path, sig: signal.Signals, after_stop: list[str]
) -> None:
    """SIGTERM reaches the training (srun's stand-in) and the script waits for it to end (its checkpoint) instead of
    ending the job's steps by exiting; near the time limit it then asks SLURM to requeue the job."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        f"#!/bin/bash\ntrap 'sleep 0.3; echo \"srun stopped on TERM\" >> {log}; exit 143' TERM\n"
        f'echo "srun $*" >> {log}\nwhile true; do sleep 0.05; done\n'
    )
    (bin_dir / "scontrol").write_text(
        f'#!/bin/bash\nif [ "$1" = show ]; then echo node1; else echo "scontrol $*" >> {log}; fi\n'
    )
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "42",
    }
    job = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (log.exists() and "srun " in log.read_text()):
        assert time.monotonic() < deadline and job.poll() is None
        time.sleep(0.05)
    os.kill(job.pid, sig)
    stdout, _ = job.communicate(timeout=30)
    calls = log.read_text().splitlines()
    assert calls[0].startswith("srun --kill-on-bad-exit=0 torchrun --nnodes=2 ") and "node1:29500" in calls[0]
    assert calls[1:] == ["srun stopped on TERM", *after_stop]  # the checkpoint first, then any requeue
    assert ("time limit near: checkpointing, then requeueing job 42" in stdout) == bool(after_stop)
