"""Fault injection: what a user does to a run (Ctrl-C, kill, a second run into the same folder, a rerun with other
settings, a damaged shard, a crafted checkpoint) never loses work or gives a silently wrong result. CPU, seconds."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import pytest
import torch

from data_prep import imagenet, reflow_pairs
from lib import REPO_ROOT, evaluate, fabricate, sample
from lib.checkpoints import CheckpointError, read_checkpoint, read_training_checkpoint
from lib.datasets import HDF5Images
from lib.files import FolderLock
from lib.shards import ShardCheckFailed
from lib.train import main

TRAIN = [
    "--dataset",
    "digits",
    "--model",
    "mlp",
    "--steps",
    "200",
    "--batch-size",
    "16",
    "--seed",
    "1",
    "--log-every",
    "5",
    "--checkpoint-every",
    "10",
    "--device",
    "cpu",
    "--no-progress",
]
ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The subprocesses run on one thread; so does this process, so their float sums agree bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of nested checkpoint contents (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_run(resumed: Path, straight: Path) -> None:
    a, b = read_training_checkpoint(resumed), read_training_checkpoint(straight)
    for key in ("global_step", "model", "ema", "optimizer", "lr_scheduler", "coupling", "history", "torch_rng"):
        assert same(a[key], b[key]), f"{key} differs between the resumed and the uninterrupted run"


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    """Until ``path`` exists (the run made progress); fail if the process ends first."""
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"lib.train ended before {path} appeared:\n{proc.communicate()[1][-3000:]}")
        threading.Event().wait(0.05)


# ---------------------------------------------------------------------------------------------------------
# Lost work: Ctrl-C, kill, temporary files, a second run into the folder
# ---------------------------------------------------------------------------------------------------------
def test_ctrl_c_saves_and_rerunning_the_command_resumes_bit_identically(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lib.train", *TRAIN, "--out", str(out)],
        cwd=REPO_ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(out / "checkpoint.pt", proc)
    # A second training into the folder while the first runs is refused, naming the first.
    assert main([*TRAIN, "--out", str(out)]) == 2
    assert f"error: {out} is in use by another training run: pid {proc.pid} on " in capsys.readouterr().err
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        r"interrupted by SIGINT after step (\d+) of 200: saved (.+)\. To resume, rerun the same command\.", last
    )
    assert match, stderr[-3000:]
    step = int(match.group(1))
    assert 10 <= step < 200 and read_training_checkpoint(out / "checkpoint.pt")["global_step"] == step
    assert "Traceback" not in stderr and not (out / "run.lock").exists()
    left = out / ".checkpoint.pt.4242.tmp"  # what a kill during a checkpoint write leaves
    left.write_bytes(b"\0" * 1000)
    assert main([*TRAIN, "--out", str(out)]) == 0  # the same command again
    captured = capsys.readouterr()
    assert f"resuming {out / 'checkpoint.pt'} at step {step} of 200" in captured.out
    assert f"removed {left}" in captured.err and not left.exists()
    assert main([*TRAIN, "--out", str(tmp_path / "straight")]) == 0
    assert_same_run(out / "checkpoint.pt", tmp_path / "straight" / "checkpoint.pt")
    assert json.loads((out / "history.json").read_text()) == json.loads(
        (tmp_path / "straight" / "history.json").read_text()
    )


def test_sigterm_stops_at_the_end_of_the_step_with_a_checkpoint(tmp_path: Path, capsys, interrupted_training) -> None:
    """SIGTERM (a scheduler's preemption) works like Ctrl-C: status 143, one line, and the run resumes exactly."""
    out, argv = tmp_path / "run", [*TRAIN, "--steps", "50", "--checkpoint-every", "0", "--checkpoint-minutes", "0"]
    assert interrupted_training([*argv, "--out", str(out)], 7, signal.SIGTERM) == 143
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"interrupted by SIGTERM after step 7 of 50: saved {out / 'checkpoint.pt'}. To resume, rerun the same command."
    )
    assert read_training_checkpoint(out / "checkpoint.pt")["global_step"] == 7  # no timed or periodic checkpoint ran
    assert main([*argv, "--out", str(out)]) == 0
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    assert_same_run(out / "checkpoint.pt", tmp_path / "straight" / "checkpoint.pt")


# ---------------------------------------------------------------------------------------------------------
# Silently wrong: changed settings on resume
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, difference",
    [
        (["--cost", "sqeuclidean", "--no-swaps"], "cost: 'l2' -> 'sqeuclidean'; no_swaps: False -> True"),
        (["--coupling", "minibatch_ot"], "coupling: 'loom' -> 'minibatch_ot'"),
        (["--caches", "2"], "caches: 1 -> 2"),
        (["--model", "digits"], "model: 'mlp' -> 'digits'"),
        (["--flip"], "flip: False -> True"),
        (["--batch-size", "8"], "batch_size: 16 -> 8"),
        (["--warmup-steps", "3", "--lr", "0.01"], "lr: 0.001 -> 0.01; warmup_steps: 0 -> 3"),
        (["--seed", "2"], "seed: 1 -> 2"),
    ],
)
def test_resume_with_other_settings_is_refused_listing_them(tmp_path: Path, capsys, change, difference) -> None:
    out, argv = tmp_path / "run", [*TRAIN, "--steps", "4", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    config, checkpoint = (out / "config.json").read_bytes(), (out / "checkpoint.pt").read_bytes()
    assert main([*argv, *change, "--steps", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / 'checkpoint.pt'} was trained with other settings (") and difference in err
    assert "Traceback" not in err
    assert (out / "config.json").read_bytes() == config  # never rewritten with settings that were not used
    assert (out / "checkpoint.pt").read_bytes() == checkpoint


def test_a_second_training_into_a_held_folder_is_refused_and_writes_nothing(tmp_path: Path, capsys) -> None:
    """Two trainings pointed at one --out: the second is refused in one line naming the holder, and the folder
    keeps no file of it (here the holder is this process, alive: the lock is not stale)."""
    out = tmp_path / "run"
    with FolderLock(out, "training run"):
        assert main([*TRAIN, "--steps", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and len(err.strip().splitlines()) == 1, err
        assert not (out / "config.json").exists() and not (out / "checkpoint.pt").exists()
    assert main([*TRAIN, "--steps", "2", "--out", str(out)]) == 0  # released: the next run trains


def test_steps_below_the_checkpoint_are_refused_and_equal_steps_do_nothing(tmp_path: Path, capsys) -> None:
    argv = [*TRAIN, "--steps", "6", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    assert main([*argv, "--steps", "4"]) == 2
    assert "is already at step 6, past --steps 4: pass --steps 6 or more" in capsys.readouterr().err
    assert main(argv) == 0  # rerunning a finished run: nothing to train, nothing rewritten but config and history
    assert main([*argv, "--steps", "8", "--log-every", "2"]) == 0  # longer, logged more often: allowed
    assert read_training_checkpoint(tmp_path / "run" / "checkpoint.pt")["global_step"] == 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["--batch-size", "-4"], "--batch-size must be a positive integer, got -4"),
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--caches", "0"], "--caches must be a positive integer, got 0"),
        (["--ema-decay", "1.5"], "--ema-decay must be in [0, 1), got 1.5"),
        (["--coupling", "lom"], "--coupling must be one of independent, minibatch_ot, loom, got 'lom'"),
        (["--batch-size", "5000"], "the global batch 5000 (--batch-size x ranks) exceeds the 1437 examples"),
        (["--device", "cuda"], "--device cuda but this machine has no usable CUDA GPU; pass --device cpu"),
    ],
)
def test_bad_numbers_are_one_line_and_status_2(tmp_path: Path, capsys, argv, message) -> None:
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main([*TRAIN, "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ---------------------------------------------------------------------------------------------------------
# Data prep: changed settings on a rerun, damaged shards
# ---------------------------------------------------------------------------------------------------------
def test_a_data_prep_rerun_with_other_settings_is_refused_or_starts_over(
    tmp_path: Path, capsys, teacher_checkpoint: Path
) -> None:
    pairs = tmp_path / "pairs"
    argv = ["--checkpoint", str(teacher_checkpoint), "--num", "12", "--solver", "euler-1"]
    argv += ["--device", "cpu", "--out", str(pairs)]
    assert reflow_pairs.main([*argv, "--shard-size", "5"]) == 0
    before = sorted(p.name for p in pairs.glob("pairs_*.h5"))
    for change, difference in (
        (["--shard-size", "4"], "shard_size: 5 -> 4"),
        (["--shard-size", "5", "--num", "13"], "num: 12 -> 13"),
        (["--shard-size", "5", "--seed", "1"], "seed: 0 -> 1"),
        (["--shard-size", "5", "--solver", "euler-2"], "solver: 'euler-1' -> 'euler-2'"),
    ):
        assert reflow_pairs.main([*argv, *change]) == 2
        err = capsys.readouterr().err
        assert f"{pairs} holds 3 shard(s) made with other settings" in err and difference in err, err
        assert "--overwrite" in err and sorted(p.name for p in pairs.glob("pairs_*.h5")) == before
    assert reflow_pairs.main([*argv, "--shard-size", "4", "--overwrite"]) == 0  # starts over, cleanly
    assert sorted(p.name for p in pairs.glob("pairs_*.h5")) == ["pairs_00000.h5", "pairs_00001.h5", "pairs_00002.h5"]
    manifest = json.loads((pairs / "manifest.json").read_text())
    assert manifest["complete"] and manifest["settings"]["shard_size"] == 4
    assert [manifest["shards"][name]["examples"] for name in sorted(manifest["shards"])] == [4, 4, 4]
    assert len(HDF5Images(pairs, flip=False)) == 12
    assert reflow_pairs.main([*argv, "--shard-size", "0"]) == 2  # never loops on empty shards
    assert "--shard-size: must be a positive integer, got 0" in capsys.readouterr().err
    assert reflow_pairs.main([*argv, "--num", "0", "--shard-size", "4"]) == 2
    assert (
        imagenet.main(
            ["--source", str(tmp_path), "--resolution", "32", "--out", str(tmp_path / "i"), "--shard-size", "0"]
        )
        == 2
    )


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """ImageNet-32 shards made by data_prep/imagenet.py from fabricated npz batches (3 shards of 10, 10, 6)."""
    fabricate.write_fake_imagenet(tmp_path / "src", [7, 9, 10])
    argv = ["--source", str(tmp_path / "src"), "--resolution", "32", "--out", str(tmp_path / "in32")]
    assert imagenet.main([*argv, "--shard-size", "10"]) == 0
    return tmp_path / "in32" / "train"


def overwrite_pixels(shard: Path) -> None:
    """Overwrite 3 KB in the middle of the image data in place: the header (shape, dtype) stays valid."""
    with h5py.File(shard, "r") as f:
        offset, size = f["images"].id.get_offset(), f["images"].id.get_storage_size()
    with open(shard, "r+b") as f:
        f.seek(offset + size // 2)
        f.write(bytes(3072))


def test_overwritten_pixels_are_caught_by_the_full_check_naming_the_shard(shards: Path, tmp_path: Path, capsys) -> None:
    good = HDF5Images(shards, flip=False).get_batch(torch.arange(26))[1]
    overwrite_pixels(shards / "imagenet32_train_00001.h5")
    # The cheap check (sizes, counts, settings) cannot see bytes changed in place: the data loads, wrongly.
    damaged = HDF5Images(shards, flip=False).get_batch(torch.arange(26))[1]
    assert not torch.equal(damaged[10:20], good[10:20]) and torch.equal(damaged[:10], good[:10])
    with pytest.raises(ShardCheckFailed, match=r"imagenet32_train_00001.h5 fails its SHA-256 check"):
        HDF5Images(shards, flip=False, verify="full")
    argv = ["--dataset", "hdf5", "--root", str(shards), "--steps", "2", "--batch-size", "4", "--device", "cpu"]
    assert main([*argv, "--verify-data", "--no-progress", "--out", str(tmp_path / "run")]) == 2
    assert "imagenet32_train_00001.h5 fails its SHA-256 check" in capsys.readouterr().err


def test_the_cheap_check_catches_missing_extra_resized_and_unfinished_shards(shards: Path) -> None:
    HDF5Images(shards, flip=False)  # as written: passes
    third = shards / "imagenet32_train_00002.h5"
    with open(third, "ab") as f:
        f.write(b"\0" * 16)  # grown (still a readable HDF5 file)
    with pytest.raises(ShardCheckFailed, match=r"imagenet32_train_00002.h5 has .* bytes and 6 examples, its manifest"):
        HDF5Images(shards, flip=False)
    third.unlink()
    with pytest.raises(ShardCheckFailed, match=r"shards missing \['imagenet32_train_00002.h5'\]"):
        HDF5Images(shards, flip=False)
    (shards / "other.h5").write_bytes((shards / "imagenet32_train_00000.h5").read_bytes())
    with pytest.raises(ShardCheckFailed, match=r"not in the manifest \['other.h5'\]"):
        HDF5Images(shards, flip=False)
    manifest = json.loads((shards / "manifest.json").read_text())
    (shards / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ShardCheckFailed, match="unfinished data prep .* rerun data_prep/imagenet.py"):
        HDF5Images(shards, flip=False)
    assert len(HDF5Images(shards, flip=False, verify="none")) == 30  # an explicit opt-out reads what is there


# ---------------------------------------------------------------------------------------------------------
# Security: a checkpoint whose unpickling would run code
# ---------------------------------------------------------------------------------------------------------
class RunsCode:
    """Unpickling this calls exec: what a crafted checkpoint does. Here it only creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def malicious_release(path: Path, marker: Path) -> Path:
    state = fabricate.fake_release_state("digits", seed=0)
    torch.save({**state, "extra": RunsCode(marker)}, path)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(tmp_path: Path, monkeypatch, capsys) -> None:
    marker = tmp_path / "code_ran"
    evil = malicious_release(tmp_path / "evil.pt", marker)
    release = fabricate.write_fake_release(tmp_path / "hub", "cifar10")
    malicious_release(release, marker)  # released:cifar10 in the Hugging Face cache is the crafted file
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fabricate.write_reference_folder(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), tmp_path / "ref")
    runs = {
        "lib.sample": lambda ck: sample.main(
            ["--checkpoint", ck, "--num", "2", "--device", "cpu", "--out", str(tmp_path / "s.png")]
        ),
        "lib.evaluate": lambda ck: evaluate.main(
            [
                "--checkpoint",
                ck,
                "--solvers",
                "euler-1",
                "--num-samples",
                "4",
                "--reference",
                str(tmp_path / "ref"),
                "--features",
                "random",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "fid.json"),
            ]
        ),
        "lib.train --init": lambda ck: main([*TRAIN, "--steps", "2", "--init", ck, "--out", str(tmp_path / "t")]),
        "reflow_pairs.py": lambda ck: reflow_pairs.main(
            ["--checkpoint", ck, "--num", "2", "--device", "cpu", "--out", str(tmp_path / "pairs")]
        ),
    }
    for name, run in runs.items():
        for checkpoint in (str(evil), "released:cifar10"):
            assert run(checkpoint) == 2, name
            err = capsys.readouterr().err
            assert "pickles Python objects beyond tensors" in err and "never unpickles" in err, (name, err)
            assert not marker.exists(), f"{name} {checkpoint} ran the file's code"
    with pytest.raises(CheckpointError, match="Unsupported global.*exec"):
        read_checkpoint(evil)
    torch.load(evil, weights_only=False)  # this test wrote the file: unpickled here, it really runs code
    assert marker.exists()


# ---------------------------------------------------------------------------------------------------------
# torchrun: the ranks stop together and each keeps its own randomness
# ---------------------------------------------------------------------------------------------------------
DDP = [*TRAIN, "--model", "digits", "--sigma", "0.1", "--steps", "40", "--batch-size", "8", "--checkpoint-every", "4"]


def torchrun(out: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.Popen(
        [*command, "-m", "lib.train", *DDP, "--out", str(out)],
        cwd=REPO_ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rank_pid(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker of ``rank`` (Linux /proc: a child of the launcher with RANK=<rank>)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"no rank {rank} under torchrun pid {launcher}")


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_at_one_step_and_the_rerun_is_exact(tmp_path: Path) -> None:
    """SIGTERM to rank 1 only: one all-reduce per step makes rank 0 stop at the same step; the checkpoint holds each
    rank's own RNG state (dropout and the path's sigma noise differ per rank), so the rerun of the same torchrun line
    ends bit-identical to an uninterrupted 2-rank run."""
    out = tmp_path / "run"
    proc = torchrun(out)
    wait_for(out / "checkpoint.pt", proc)
    os.kill(rank_pid(proc.pid, 1), signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode != 0
    match = re.search(r"interrupted by a signal on another rank after step (\d+) of 40: saved", stderr)
    assert match, stderr[-4000:]
    state = read_training_checkpoint(out / "checkpoint.pt")
    assert state["global_step"] == int(match.group(1)) < 40
    assert state["torch_rng"].shape[0] == 2 and not torch.equal(state["torch_rng"][0], state["torch_rng"][1])
    for run in (torchrun(out), torchrun(tmp_path / "straight")):  # the same line again, and an uninterrupted run
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-4000:]
    assert_same_run(out / "checkpoint.pt", tmp_path / "straight" / "checkpoint.pt")


# ---------------------------------------------------------------------------------------------------------
# Two nodes: two torchrun launchers on this machine, as on two hosts (c10d rendezvous on 127.0.0.1, gloo)
# ---------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(out: Path) -> list[subprocess.Popen[str]]:
    """The README's two-node line, once per "node" (node ranks 0 and 1, one process each), each rank dumping its
    final seed table."""
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--local-addr", "127.0.0.1"]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
            + ["--node-rank", str(node), *rendezvous, "-m", "lib.train", *DDP, "--dump-seeds", "--out", str(out)],
            cwd=REPO_ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]


def finished(nodes: list[subprocess.Popen[str]]) -> tuple[list[int], str]:
    """Wait for every node -> (exit statuses, their stderr together)."""
    errors = [node.communicate(timeout=600)[1] for node in nodes]
    return [node.returncode for node in nodes], "\n".join(errors)


@pytest.mark.slow
def test_two_nodes_pair_alike_stop_together_when_one_is_preempted_and_resume_exactly(tmp_path: Path) -> None:
    """SIGTERM to one node's torchrun (a scheduler preempting that host): its rank stops after the step, the other
    node's rank stops at the same step through the per-step agreement, the checkpoint holds both ranks' RNG states
    and the lock is released; rerunning both lines resumes, ending bit-identical to an uninterrupted two-node run,
    with the same seed table on both nodes."""
    out, straight = tmp_path / "run", tmp_path / "straight"
    nodes = two_nodes(out)
    wait_for(out / "checkpoint.pt", nodes[0])
    nodes[1].send_signal(signal.SIGTERM)
    codes, stderr = finished(nodes)
    assert all(code != 0 for code in codes), stderr[-4000:]
    # Rendezvous picks which node hosts global rank 0: the signal reached it or the other rank.
    match = re.search(r"interrupted by (?:SIGTERM|a signal on another rank) after step (\d+) of 40: saved", stderr)
    assert match, stderr[-4000:]
    state = read_training_checkpoint(out / "checkpoint.pt")
    assert state["global_step"] == int(match.group(1)) < 40 and state["torch_rng"].shape[0] == 2
    assert not (out / "run.lock").exists()
    for folder in (out, straight):  # the same two lines again, and an uninterrupted two-node run
        codes, stderr = finished(two_nodes(folder))
        assert codes == [0, 0], stderr[-4000:]
    assert_same_run(out / "checkpoint.pt", straight / "checkpoint.pt")
    assert len(list((straight / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 logs, not both nodes
    rank0, rank1 = (torch.load(out / f"seeds_rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1) and torch.equal(rank0, torch.load(straight / "seeds_rank0.pt"))
