"""Fault injection: what a user does to a run (Ctrl-C, kill, a second run into the same folder, a rerun with other
settings, a damaged shard, a crafted checkpoint) never loses work or gives a silently wrong result. CPU, seconds."""

from __future__ import annotations

import errno
import json
import os
import pickle
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
import numpy as np
import pytest
import torch

from data_prep import imagenet, reflow_pairs
from lib import REPO_ROOT, evaluate, fabricate, sample
from lib.checkpoints import CheckpointError, read_checkpoint, read_training_checkpoint
from lib.datasets import HDF5Images
from lib.files import FolderLock
from lib.paper import RELEASED_CONFIGS
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
        (["--sigma", "0.5"], "sigma: 0.0 -> 0.5"),  # (--flip on digits is refused outright: no flipped copies)
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
    with pytest.raises(CheckpointError, match=r"the global builtins\.exec, refused because loading it could run code"):
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


# ==================================================================================================


# Issue 25, part A: hostile data files and checkpoints, a shard folder without its manifest, verify across CPUs
# =========================================================================================================
class SystemCall:
    """Unpickling this calls os.system (``posix.system``): what a crafted data file or checkpoint does. Here the
    command only creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def one_line(err: str) -> str:
    """The one line a command line prints for an expected error (lib.cli: ``error: ...``; progress bars aside);
    fails on a traceback or a second error line."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert not any(line.startswith("  ") for line in err.splitlines()), err  # lib.cli indents further lines
    return errors[0]


def test_a_crafted_cifar10_batch_is_refused_everywhere_and_runs_no_code(tmp_path: Path, capsys) -> None:
    from data_prep import cifar10
    from lib.datasets import CIFAR10_FOLDER, DatasetFormatError, read_cifar10

    root, marker = tmp_path / "c10", tmp_path / "code_ran"
    folder = fabricate.write_fake_cifar10(root, num_train=20, num_test=10)
    # The fabricated official format still loads bit-identically: the arrays and lists pickle.load gives (this
    # test wrote the files, so unpickling them here is safe).
    images, labels, classes = read_cifar10(root)
    entries = [pickle.loads((folder / f"data_batch_{b}").read_bytes(), encoding="latin1") for b in range(1, 6)]
    assert torch.equal(images, torch.from_numpy(np.vstack([e["data"] for e in entries]).reshape(-1, 3, 32, 32)))
    assert labels.tolist() == [label for e in entries for label in e["labels"]] and classes[0] == "airplane"
    assert [len(x) for x in read_cifar10(root, train=False)[:2]] == [10, 10]

    crafted = {**entries[0], "filenames": [SystemCall(marker)]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(crafted, protocol=2))
    refusal = rf"{folder / 'data_batch_1'} is not an official CIFAR-10 batch: it pickles the global posix\.system"
    with pytest.raises(DatasetFormatError, match=refusal):
        read_cifar10(root)
    assert not marker.exists()
    train = [sys.executable, "-m", "lib.train", "--dataset", "cifar10", "--root", str(root), "--steps", "1"]
    train += ["--batch-size", "4", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")]
    done = subprocess.run(train, capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **ENV}, timeout=300)
    assert done.returncode == 2 and re.search(refusal, one_line(done.stderr)), done.stderr
    assert "could run code" in done.stderr and f"data_prep/cifar10.py --root {root}" in done.stderr
    assert not marker.exists(), "lib.train ran the batch's code"
    assert cifar10.main(["--root", str(root), "--offline", "--allow-subset"]) == 2
    assert re.search(refusal, one_line(capsys.readouterr().err))
    assert not marker.exists(), "data_prep/cifar10.py ran the batch's code"
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and (root / CIFAR10_FOLDER).is_dir()
    pickle.loads((folder / "data_batch_1").read_bytes())  # this test wrote the file: unpickled, it really runs code
    assert marker.exists()


def test_pickled_objects_in_npz_data_are_refused_not_unpickled(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "code_ran"
    fabricate.write_fake_imagenet(tmp_path / "src", [4])
    batch = tmp_path / "src" / "train_data_batch_1.npz"
    with np.load(batch) as arrays:
        data = arrays["data"]
    labels = np.array([SystemCall(marker)] * len(data), dtype=object)  # an object array: stored as a pickle
    np.savez(batch, data=data, labels=labels)
    argv = ["--source", str(tmp_path / "src"), "--resolution", "32", "--out", str(tmp_path / "out")]
    assert imagenet.main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert f"{batch} is not a downsampled-ImageNet batch" in err and "allow_pickle=False" in err
    assert not marker.exists()


def fake_latent_checkpoint(path: Path, autoencoder: str) -> Path:
    """A lib.train checkpoint of the tiny latent UNet (4 x 8 x 8) whose ``latent`` record names ``autoencoder``."""
    from lib.couplings import make_coupling
    from lib.train import TrainConfig, train_flow
    from lib.unet import build_unet

    torch.manual_seed(0)
    config = TrainConfig(steps=2, batch_size=4, progress=False, ema_decay=0.5)
    train_flow(build_unet("tiny_latent"), torch.randn(8, 4, 8, 8), make_coupling("independent", 8), config, path)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "latent": {"autoencoder": autoencoder, "scale": 0.5}}, path)
    return path


def test_a_checkpoint_cannot_choose_which_autoencoder_is_downloaded(tmp_path: Path, monkeypatch, capsys) -> None:
    import diffusers.configuration_utils
    import diffusers.utils.hub_utils
    import huggingface_hub
    import huggingface_hub.file_download

    from lib.checkpoints import load_model

    fetched: list[tuple[Any, ...]] = []

    def record(*args: Any, **kwargs: Any) -> None:
        fetched.append(args + tuple(kwargs.values()))
        raise OSError("this test records downloads instead of making them")

    # Every binding diffusers and huggingface_hub download through (diffusers imports the functions by name).
    for module in (
        huggingface_hub,
        huggingface_hub.file_download,
        diffusers.utils.hub_utils,
        diffusers.configuration_utils,
    ):
        for name in ("hf_hub_download", "snapshot_download"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, record)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    evil = fake_latent_checkpoint(tmp_path / "evil.pt", "evil-org/evil-vae")
    fabricate.write_reference_folder(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), tmp_path / "ref")
    with pytest.raises(CheckpointError, match=r"records the autoencoder 'evil-org/evil-vae', which is neither"):
        load_model(evil)
    sample_argv = ["--checkpoint", str(evil), "--num", "2", "--device", "cpu", "--out", str(tmp_path / "s.png")]
    evaluate_argv = ["--checkpoint", str(evil), "--solvers", "euler-1", "--num-samples", "4", "--features", "random"]
    evaluate_argv += ["--reference", str(tmp_path / "ref"), "--device", "cpu", "--out", str(tmp_path / "fid.json")]
    for run in (lambda: sample.main(sample_argv), lambda: evaluate.main(evaluate_argv)):
        assert run() == 2
        err = one_line(capsys.readouterr().err)
        assert (
            "'evil-org/evil-vae'" in err and "--autoencoder evil-org/evil-vae" in err and "nothing was fetched" in err
        )
    assert fetched == [], f"a checkpoint made the tools fetch {fetched}"
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "fid.json").exists()

    # The user's choice is what decides: a folder they name decodes, nothing fetched ...
    tiny = tmp_path / "tiny_vae"
    fabricate.tiny_autoencoder().save_pretrained(tiny)
    assert sample.main([*sample_argv, "--autoencoder", str(tiny)]) == 0 and (tmp_path / "s.png").is_file()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["autoencoder"] == str(tiny)
    assert fetched == []
    # ... and a repository they name is fetched (the recorder sees it: it would have seen the checkpoint's too).
    with pytest.raises(FileNotFoundError, match="evil-org/evil-vae"):
        load_model(evil, autoencoder="evil-org/evil-vae")
    assert fetched and "evil-org/evil-vae" in fetched[0]
    # --autoencoder where it does not apply is refused, not ignored.
    digits = tmp_path / "digits.pt"
    fake_latent_checkpoint(digits, str(tiny))
    state = torch.load(digits, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "latent"}, digits)
    assert sample.main([*sample_argv[:1], str(digits), *sample_argv[2:], "--autoencoder", str(tiny)]) == 2
    assert "drop --autoencoder" in one_line(capsys.readouterr().err)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")  # torch on plain.pt, below
def test_a_refused_checkpoint_names_the_global_and_never_suggests_weights_only_false(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "code_ran"
    system = tmp_path / "system.pt"
    torch.save({**fabricate.fake_release_state("digits", seed=0), "extra": SystemCall(marker)}, system)
    malicious_release(tmp_path / "exec.pt", marker)
    for path, name in ((system, "posix.system"), (tmp_path / "exec.pt", "builtins.exec")):
        with pytest.raises(CheckpointError) as refused:
            read_checkpoint(path)
        message = str(refused.value)
        assert (
            f"pickles Python objects beyond tensors: the global {name}, refused because loading it could run code"
            in message
        )
        assert "weights_only" not in message and "truncated" not in message and "\n" not in message
    out = tmp_path / "s.png"
    assert sample.main(["--checkpoint", str(system), "--num", "2", "--device", "cpu", "--out", str(out)]) == 2
    err = one_line(capsys.readouterr().err)
    assert "the global posix.system" in err and "could run code" in err and "weights_only" not in err
    run = tmp_path / "run"  # a crafted checkpoint where lib.train resumes from: refused, not called damaged
    run.mkdir()
    torch.save({"format": "loom-kit-train-v1", "extra": SystemCall(marker)}, run / "checkpoint.pt")
    assert main([*TRAIN, "--out", str(run)]) == 2
    err = one_line(capsys.readouterr().err)
    assert "the global posix.system" in err and "truncated" not in err and "weights_only" not in err
    # A pickle torch's loader cannot parse is "not a torch checkpoint", still without torch's advice.
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"model": {}}, protocol=4))
    with pytest.raises(CheckpointError, match="truncated or not a torch checkpoint") as corrupt:
        read_checkpoint(tmp_path / "plain.pt")
    assert "weights_only" not in str(corrupt.value)
    assert not marker.exists()


def test_a_shard_folder_without_its_manifest_is_refused_and_a_rerun_says_what_it_deletes(
    tmp_path: Path, capsys
) -> None:
    fabricate.write_fake_imagenet(tmp_path / "src", [7, 9, 10])
    prep = ["--source", str(tmp_path / "src"), "--resolution", "32", "--out", str(tmp_path / "in32")]
    prep += ["--shard-size", "6"]
    assert imagenet.main(prep) == 0
    folder = tmp_path / "in32" / "train"
    shards = sorted(folder.glob("*.h5"))
    assert len(shards) == 5 and len(HDF5Images(folder, flip=False)) == 26
    capsys.readouterr()
    (folder / "manifest.json").unlink()
    for shard in shards[1:4]:
        shard.unlink()
    refusal = rf"{folder} has no manifest.json but its 2 shard\(s\) were made by data_prep/imagenet.py"
    with pytest.raises(ShardCheckFailed, match=refusal):
        HDF5Images(folder, flip=False)
    argv = ["--dataset", "hdf5", "--root", str(folder), "--steps", "1", "--batch-size", "4", "--device", "cpu"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "run")]) == 2
    err = one_line(capsys.readouterr().err)
    assert re.search(refusal, err) and "rerun data_prep/imagenet.py with --overwrite" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert len(HDF5Images(folder, flip=False, verify="none")) == 8  # the explicit opt-out reads what is there
    assert imagenet.main(prep) == 2 and "--overwrite" in capsys.readouterr().err  # shards of unknown settings
    assert imagenet.main([*prep, "--overwrite"]) == 0  # rebuilt whole
    assert len(HDF5Images(folder, flip=False, verify="full")) == 26
    capsys.readouterr()
    # A rerun deletes a shard the manifest does not list (to make the folder what it records), and says so.
    extra = folder / "imagenet32_train_00009.h5"
    extra.write_bytes(shards[0].read_bytes())
    assert imagenet.main(prep) == 0
    err = capsys.readouterr().err
    assert f"deleting {extra}: manifest.json does not list it" in err and not extra.exists()
    assert len(HDF5Images(folder, flip=False, verify="full")) == 26
    # Hand-made shards (not marked by data prep) without a manifest still read as they are.
    from lib.datasets import write_hdf5_images

    write_hdf5_images(tmp_path / "mine" / "a.h5", torch.zeros(3, 1, 2, 2, dtype=torch.uint8))
    write_hdf5_images(tmp_path / "mine" / "b.h5", torch.zeros(2, 1, 2, 2, dtype=torch.uint8))
    assert len(HDF5Images(tmp_path / "mine", flip=False)) == 5


def test_verify_compares_neither_timing_labels_nor_identifiers(tmp_path: Path) -> None:
    from lib.kit import verify

    assert verify.kind_of("dominant_parts[3].part", "conclusion") == "timing"  # the largest part: timings decide
    assert verify.kind_of("coupling_targets[0].met", "coupling_cost") == "timing"  # a measured ratio met its target
    assert verify.kind_of("cache_key") == verify.kind_of("run_digest") == "ignored"  # identifiers
    assert verify.kind_of("part") == verify.kind_of("dominant_parts[3].shape") == "exact"  # fixed labels: compared
    old, new = tmp_path / "old", tmp_path / "new"
    for folder, part, key in ((old, "assignment", "37534a0b614249b4"), (new, "cost_matrix", "0f3c9d2e11aa4b70")):
        folder.mkdir()
        (folder / "conclusion.json").write_text(json.dumps({"dominant_parts": [{"shape": "2", "part": part}]}))
        (folder / "runs.csv").write_text(f"label,last_step,cache_key\nOT,800,{key}\n")
    assert verify.compare_folders(new, old, "09_performance").ok
    (new / "runs.csv").write_text("label,last_step,cache_key\nOT,801,0f3c9d2e11aa4b70\n")  # a real difference
    assert verify.compare_folders(new, old, "09_performance").different == ["runs.csv: row 0 last_step 800 -> 801"]


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


# =========================================================================================================
# Issue 25, part B: silent wrong results, lost data, tracebacks and late failures
# =========================================================================================================
@pytest.fixture
def digits_mlp(tmp_path: Path) -> Path:
    """A finished 4-step run of the digits MLP (its checkpoint: EMA weights of shape (64,))."""
    assert main([*TRAIN, "--steps", "4", "--out", str(tmp_path / "mlp")]) == 0
    return tmp_path / "mlp" / "checkpoint.pt"


def one_error_line(err: str, *parts: str) -> None:
    """``err`` is the kit's one-line error (argparse's usage lines aside) holding every one of ``parts``."""
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "error: " in last, err
    for part in parts:
        assert part in last, (part, err)


def sample_argv(checkpoint: Path | str, out: Path) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--num", "4", "--solver", "euler-2", "--device", "cpu", "--out", str(out)]


# ---------------------------------------------------------------------------------------------------------
# Silently wrong: non-finite numbers, divergence, --config, settings that do not apply
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--lr", "--sigma", "--grad-clip", "--ema-decay", "--checkpoint-minutes"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e999"])
def test_non_finite_floats_are_refused_at_the_command_line(tmp_path: Path, capsys, flag: str, value: str) -> None:
    assert main([*TRAIN, "--steps", "2", f"{flag}={value}", "--out", str(tmp_path / "run")]) == 2
    one_error_line(capsys.readouterr().err, f"argument {flag}: must be a finite number, got {value!r}")
    assert not (tmp_path / "run").exists()


def test_non_finite_settings_built_in_python_are_refused_too() -> None:
    """Notebooks build TrainConfig directly: the same rule holds there (inf passes ``lr > 0``)."""
    from lib.train import TrainConfig

    for name in ("lr", "sigma", "grad_clip", "checkpoint_minutes"):
        with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} must be a finite number, got inf"):
            TrainConfig(**{name: float("inf")})
    with pytest.raises(ValueError, match="--ema-decay must be a finite number, got nan"):
        TrainConfig(ema_decay=float("nan"))


def poison_weights_after(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Fault injection: after training step ``step`` the weights turn to nan (what --lr inf or fp16 overflow do)."""
    import lib.train as train

    real = train.train_step

    def train_step(trainer: Any, batch: Any) -> Any:
        loss, stats = real(trainer, batch)
        if trainer.loop.step + 1 >= step:
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr(train, "train_step", train_step)


def test_a_diverged_run_stops_before_a_checkpoint_and_keeps_the_last_good_one(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """Weights turn nan after step 7; checkpoints every 3 steps, losses logged every 5: the checkpoint due at step 9
    is refused (weights checked before every write), the run exits 2 naming the step and the likely cause, and the
    step-6 checkpoint stays as it was, finite and resumable."""
    out = tmp_path / "run"
    argv = [*TRAIN, "--steps", "20", "--checkpoint-every", "3", "--log-every", "10", "--out", str(out)]
    poison_weights_after(monkeypatch, 7)
    assert main(argv) == 2
    one_error_line(
        capsys.readouterr().err,
        "training diverged at step 9: the weights hold nan / inf",
        f"the last good checkpoint {out / 'checkpoint.pt'} (step 6) is kept",
        "Likely causes: a learning rate too high (--lr 0.001",
    )
    state = read_training_checkpoint(out / "checkpoint.pt")
    assert state["global_step"] == 6
    assert all(v.isfinite().all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "run.lock").exists() and not list(out.glob(".*.tmp"))


def test_a_nan_loss_is_caught_at_the_first_logged_step_without_a_checkpoint(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """The loss fetched for the history is checked (no extra device sync per step): with no checkpoint due, the
    divergence after step 3 is reported at the logged step 5, and no nan checkpoint is ever written."""
    out = tmp_path / "run"
    argv = [*TRAIN, "--steps", "50", "--checkpoint-every", "0", "--checkpoint-minutes", "0", "--log-every", "5"]
    poison_weights_after(monkeypatch, 3)
    assert main([*argv, "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "training diverged at step 5: the loss is nan", "no checkpoint had been")
    assert not (out / "checkpoint.pt").exists()


def test_a_huge_learning_rate_ends_in_one_line_and_status_2_not_in_nan_weights(tmp_path: Path, capsys) -> None:
    """The issue's case, unpatched: a finite but absurd --lr used to train to nan and exit 0."""
    argv = [*TRAIN, "--steps", "20", "--lr", "1e30", "--checkpoint-every", "2", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, "training diverged at step 2", "(--lr 1e+30;")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def nan_checkpoint(good: Path, path: Path, key: str = "ema") -> Path:
    """A copy of kit checkpoint ``good`` whose ``key`` weights hold a nan (what a diverged run wrote before)."""
    state = read_training_checkpoint(good)
    first = next(k for k, v in state[key].items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    state[key][first] = state[key][first].clone().fill_(float("nan"))
    torch.save(state, path)
    return path


def test_sampling_evaluating_and_init_refuse_non_finite_weights(tmp_path: Path, capsys, digits_mlp: Path) -> None:
    bad = nan_checkpoint(digits_mlp, tmp_path / "nan.pt")
    reference = tmp_path / "ref"
    fabricate.write_reference_folder(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), reference)
    runs = {
        "lib.sample": lambda: sample.main(sample_argv(bad, tmp_path / "s.pt")),
        "lib.evaluate": lambda: evaluate.main(
            ["--checkpoint", str(bad), "--solvers", "dopri5", "--num-samples", "4", "--reference", str(reference)]
            + ["--features", "random", "--device", "cpu", "--out", str(tmp_path / "fid.json")]
        ),
        "lib.train --init": lambda: main([*TRAIN, "--steps", "2", "--init", str(bad), "--out", str(tmp_path / "t")]),
    }
    for name, run in runs.items():
        assert run() == 2, name
        one_error_line(capsys.readouterr().err, f"{bad} holds non-finite weights", "diverged")
    assert not (tmp_path / "s.pt").exists() and not (tmp_path / "t" / "config.json").exists()
    raw_bad = nan_checkpoint(digits_mlp, tmp_path / "raw_nan.pt", key="model")
    assert sample.main([*sample_argv(raw_bad, tmp_path / "s.pt"), "--raw-weights"]) == 2
    assert sample.main(sample_argv(raw_bad, tmp_path / "s.pt")) == 0  # its EMA is finite: sampled


def test_dopri5_on_a_field_returning_nan_is_a_value_error_not_an_assertion() -> None:
    from lib.models import MLP
    from lib.solvers import integrate

    model = MLP(4)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match="dopri5 could not integrate .* returns non-finite values"):
        integrate(model, torch.randn(3, 4), "dopri5")


CONFIG_KEYS = sorted({key for config in RELEASED_CONFIGS.values() for key in config})
EXPLICIT = {  # an explicit flag for each setting a released config sets, with a value no config has
    "dataset": (["--dataset", "imagefolder"], "imagefolder"),
    "model": (["--model", "tiny"], "tiny"),
    "flip": (["--no-flip"], False),
    "batch_size": (["--batch-size", "7"], 7),
    "lr": (["--lr", "0.125"], 0.125),
    "warmup_steps": (["--warmup-steps", "3"], 3),
    "epochs": (["--epochs", "2"], 2),
    "caches": (["--caches", "3"], 3),
    "ema_decay": (["--ema-decay", "0.5"], 0.5),
    "sigma": (["--sigma", "0.25"], 0.25),
    "reflow": (["--no-reflow"], False),
    "coupling": (["--coupling", "minibatch_ot"], "minibatch_ot"),
}


def test_every_setting_a_config_sets_has_an_explicit_override_below() -> None:
    assert sorted(EXPLICIT) == CONFIG_KEYS


@pytest.mark.parametrize("config", sorted(RELEASED_CONFIGS))
@pytest.mark.parametrize("name", CONFIG_KEYS)
def test_an_explicit_flag_overrides_the_config(config: str, name: str) -> None:
    from lib.train import parse_args

    flags, value = EXPLICIT[name]
    args = parse_args(["--config", config, *flags, "--root", "data", "--out", "x"])
    assert getattr(args, name) == value
    for other in RELEASED_CONFIGS[config]:  # every other setting as the config says (unless it does not apply)
        if other != name and other not in ("caches", "flip"):
            assert getattr(args, other) == RELEASED_CONFIGS[config][other], other


@pytest.mark.parametrize("config", sorted(RELEASED_CONFIGS))
def test_explicit_steps_replace_the_configs_epochs(config: str, capsys) -> None:
    from lib.train import parse_args

    args = parse_args(["--config", config, "--steps", "5", "--out", "x"])
    assert (args.steps, args.epochs) == (5, 0)
    assert parse_args(["--config", config, "--out", "x"]).epochs == RELEASED_CONFIGS[config]["epochs"]
    with pytest.raises(SystemExit):
        parse_args(["--config", config, "--steps", "5", "--epochs", "2", "--out", "x"])
    assert "pass --steps or --epochs, not both" in capsys.readouterr().err


def test_config_cifar10_with_explicit_steps_on_digits_trains_those_steps(tmp_path: Path, capsys) -> None:
    """The issue's run trained 44,000 steps with flips on digits; now --steps wins, the config's flips (which do not
    apply to digits) fall back to off, and its UNet, which cannot take 1x8x8 digits, is refused before any file."""
    out = tmp_path / "run"
    argv = ["--config", "cifar10", "--steps", "5", "--dataset", "digits", "--batch-size", "16", "--device", "cpu"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "--model cifar10 takes (3, 32, 32) examples but the data has (1, 8, 8)")
    assert not out.exists() or not any(out.iterdir())
    assert main([*argv, "--model", "mlp", "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["steps"], config["epochs"], config["flip"], config["caches"], config["lr"]) == (5, 0, False, 4, 2e-4)
    assert read_training_checkpoint(out / "checkpoint.pt")["global_step"] == 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--flip"], "--flip does not apply to --dataset digits"),
        (["--resolution", "999"], "--resolution 999 applies to --dataset imagefolder and hdf5 only"),
        (["--coupling", "independent", "--caches", "7"], "--caches 7 applies to --coupling loom only"),
        (["--coupling", "minibatch_ot", "--no-swaps"], "--no-swaps applies to --coupling loom only"),
        (["--coupling", "independent", "--redraw-every-epochs", "2"], "--redraw-every-epochs 2 applies to"),
        (["--coupling", "minibatch_ot", "--converge-first"], "--converge-first applies to --coupling loom only"),
        (["--verify-data"], "--verify-data applies to --dataset hdf5 only"),
        (["--enumerate-flips"], "--enumerate-flips applies with --flip only"),
        (["--root", "data"], "--root data does not apply to --dataset digits"),
        (["--reflow"], "--reflow reads reflow pair shards: pass --dataset hdf5 --root <pairs folder>"),
        (["--model", "cifar10"], "--model cifar10 takes (3, 32, 32) examples but the data has (1, 8, 8)"),
    ],
)
def test_settings_that_do_not_apply_are_refused_before_anything_is_written(
    tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "2", *argv, "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, message)
    assert not (out / "config.json").exists() and not (out / "checkpoint.pt").exists()


# ---------------------------------------------------------------------------------------------------------
# Data lost: a full disk, a read-only target
# ---------------------------------------------------------------------------------------------------------
def fail_writes(monkeypatch: pytest.MonkeyPatch, code: int, after: int = 100) -> None:
    """Every file lib.files writes fails with ``code`` (ENOSPC: a full disk) once ``after`` bytes are written."""
    import builtins

    import lib.files as files

    class Failing:
        def __init__(self, path: Any, mode: str) -> None:
            self.file, self.written = builtins.open(path, mode), 0

        def write(self, data: Any) -> int:
            self.written += len(data)
            if self.written > after:
                raise OSError(code, os.strerror(code))
            return self.file.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.file, name)

        def __enter__(self) -> Failing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

    def fake_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" not in mode and "+" not in mode:
            return builtins.open(path, mode, *args, **kwargs)
        if after == 0:
            raise OSError(code, os.strerror(code), str(path))
        return Failing(path, mode)

    monkeypatch.setattr(files, "open", fake_open, raising=False)


@pytest.mark.parametrize("name", ["samples.pt", "grid.png"])
def test_sampling_over_a_file_on_a_full_disk_leaves_it_whole(
    tmp_path: Path, capsys, monkeypatch, digits_mlp: Path, name: str
) -> None:
    out = tmp_path / name
    assert sample.main(sample_argv(digits_mlp, out)) == 0
    before = out.read_bytes()
    fail_writes(monkeypatch, errno.ENOSPC)
    assert sample.main([*sample_argv(digits_mlp, out), "--seed", "3"]) == 2
    one_error_line(capsys.readouterr().err, f"cannot write {out}: no space left on device (ENOSPC)")
    assert out.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_training_on_a_full_disk_names_the_checkpoint_and_keeps_the_last_one(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """torch.save buries the disk's ENOSPC in "RuntimeError: [enforce fail at inline_container.cc] unexpected pos":
    the kit reports the OSError, naming the file, and the previous checkpoint stays readable."""
    out, argv = tmp_path / "run", [*TRAIN, "--checkpoint-every", "0", "--out", str(tmp_path / "run")]
    assert main([*argv, "--steps", "4"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    fail_writes(monkeypatch, errno.ENOSPC, after=10_000)
    assert main([*argv, "--steps", "8"]) == 2
    err = capsys.readouterr().err
    one_error_line(err, f"cannot write {out / 'checkpoint.pt'}: no space left on device (ENOSPC)")
    assert "inline_container" not in err and (out / "checkpoint.pt").read_bytes() == before
    assert read_training_checkpoint(out / "checkpoint.pt")["global_step"] == 4


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")])
def test_an_unwritable_out_is_refused_before_sampling(
    tmp_path: Path, capsys, monkeypatch, digits_mlp: Path, code: int, reason: str
) -> None:
    """Tests run as root here, where chmod cannot make a folder read-only: the failing write is injected."""
    fail_writes(monkeypatch, code, after=0)
    monkeypatch.setattr(sample, "generate", lambda *a, **k: pytest.fail("sampled before checking --out"))
    assert sample.main(sample_argv(digits_mlp, tmp_path / "s.pt")) == 2
    one_error_line(capsys.readouterr().err, f"cannot write {tmp_path / 's.pt'}: {reason}")


# ---------------------------------------------------------------------------------------------------------
# Tracebacks and late failures: each one line, status 2, before any work
# ---------------------------------------------------------------------------------------------------------
def test_seeds_beyond_64_bits_are_refused_and_the_largest_one_works(tmp_path: Path, capsys, digits_mlp: Path) -> None:
    too_big = str(2**64)
    assert main([*TRAIN, "--steps", "2", "--seed", too_big, "--out", str(tmp_path / "run")]) == 2
    one_error_line(capsys.readouterr().err, "argument --seed: must be at most 18,446,744,073,709,551,615")
    assert sample.main([*sample_argv(digits_mlp, tmp_path / "s.pt"), "--seed", too_big]) == 2
    one_error_line(capsys.readouterr().err, "argument --seed: must be at most")
    assert sample.main([*sample_argv(digits_mlp, tmp_path / "s.pt"), "--seed", str(2**64 - 1)]) == 0
    assert main([*TRAIN, "--steps", "2", "--seed", str(2**64 - 1), "--out", str(tmp_path / "big")]) == 0
    assert sample.image_seeds(2**64 - 1, 0, 3).tolist() == [
        ((2**64 - 1) * sample.RUN_STRIDE + i) % 2**32 for i in range(3)
    ]


def test_sample_checks_solver_and_out_before_any_work(tmp_path: Path, capsys, monkeypatch, digits_mlp: Path) -> None:
    monkeypatch.setattr(sample, "load_model", lambda *a, **k: pytest.fail("loaded before checking the arguments"))
    argv = sample_argv(digits_mlp, tmp_path / "s.pt")
    assert sample.main([*argv, "--solver", "euler-99999999999999"]) == 2  # would allocate 400 TB
    one_error_line(capsys.readouterr().err, "solver 'euler-99999999999999': at most 10,000 steps")
    assert sample.main(sample_argv(digits_mlp, tmp_path / "s.txt")) == 2
    one_error_line(capsys.readouterr().err, "give a .pt file (the images as a tensor) or an image such as .png")
    (tmp_path / "file").write_text("")
    assert sample.main(sample_argv(digits_mlp, tmp_path / "file" / "s.pt")) == 2  # --out below a file (Errno 17/20)
    one_error_line(capsys.readouterr().err, f"{tmp_path / 'file'} is a file, not a folder")
    assert sample.main(sample_argv(digits_mlp, tmp_path)) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_out_suffixes_in_any_case_are_written_as_their_format(tmp_path: Path, digits_mlp: Path) -> None:
    assert sample.main(sample_argv(digits_mlp, tmp_path / "x.PT")) == 0
    assert torch.load(tmp_path / "x.PT", weights_only=True).shape == (4, 64)
    assert sample.main(sample_argv(digits_mlp, tmp_path / "x.PNG")) == 0
    assert (tmp_path / "x.PNG").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_out_pointing_at_a_file_is_refused_for_folders(tmp_path: Path, capsys, digits_mlp: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    assert main([*TRAIN, "--steps", "2", "--out", str(tmp_path / "taken")]) == 2
    one_error_line(capsys.readouterr().err, f"--out {tmp_path / 'taken'}: {tmp_path / 'taken'} is a file, not a folder")
    argv = ["--checkpoint", str(digits_mlp), "--num", "2", "--device", "cpu", "--out", str(tmp_path / "taken")]
    assert reflow_pairs.main(argv) == 2
    one_error_line(capsys.readouterr().err, "is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "a file"


def test_broken_kit_checkpoints_are_one_line(tmp_path: Path, capsys, digits_mlp: Path) -> None:
    state = read_training_checkpoint(digits_mlp)
    torch.save({k: v for k, v in state.items() if k != "ema"}, tmp_path / "no_ema.pt")
    assert sample.main(sample_argv(tmp_path / "no_ema.pt", tmp_path / "s.pt")) == 2
    one_error_line(capsys.readouterr().err, "without its EMA weights ('ema')", "--raw-weights")
    assert sample.main([*sample_argv(tmp_path / "no_ema.pt", tmp_path / "s.pt"), "--raw-weights"]) == 0
    ema = {k.replace("net.", "net.x", 1): v for k, v in state["ema"].items()}  # 'net.x0.weight': not the MLP's
    torch.save({**state, "ema": ema}, tmp_path / "wrong_keys.pt")
    assert sample.main(sample_argv(tmp_path / "wrong_keys.pt", tmp_path / "s.pt")) == 2
    one_error_line(capsys.readouterr().err, "its 'net.*' weights do not fit the kit's MLP")
    missing = {k: v for k, v in state["ema"].items() if not k.endswith("net.0.bias")}
    torch.save({**state, "ema": missing}, tmp_path / "missing.pt")
    assert sample.main(sample_argv(tmp_path / "missing.pt", tmp_path / "s.pt")) == 2
    one_error_line(capsys.readouterr().err, "its 'net.*' weights do not fit the kit's MLP")


def test_init_from_a_digits_mlp_run_is_accepted(tmp_path: Path, digits_mlp: Path) -> None:
    """The MLP takes digits flattened: its (64,) examples are the data's (1, 8, 8); a wrong refusal before."""
    out = tmp_path / "finetune"
    assert main([*TRAIN, "--steps", "2", "--init", str(digits_mlp), "--out", str(out)]) == 0
    assert read_training_checkpoint(out / "checkpoint.pt")["global_step"] == 2


@pytest.mark.parametrize("images", [0, 1])
def test_evaluate_with_fewer_than_two_reference_images_is_one_line(
    tmp_path: Path, capsys, digits_mlp: Path, images: int
) -> None:
    reference = tmp_path / "ref"
    reference.mkdir()
    if images:
        fabricate.write_reference_folder(torch.zeros(images, 3, 8, 8, dtype=torch.uint8), reference)
    for protocol in ("clean-fid-clean", "paper-torcheval"):
        argv = ["--checkpoint", str(digits_mlp), "--solvers", "euler-1", "--num-samples", "4", "--device", "cpu"]
        argv += ["--protocol", protocol, "--reference", str(reference), "--features", "random"]
        assert evaluate.main([*argv, "--out", str(tmp_path / "fid.json")]) == 2
        if images == 0 and protocol == "paper-torcheval":  # lib.datasets.ImageFiles refuses an empty folder itself
            one_error_line(capsys.readouterr().err, f"no .png/.jpg/.jpeg/.webp/.bmp files under {reference}")
        else:
            one_error_line(capsys.readouterr().err, f"holds {images} image(s); FID needs at least 2")


def test_reflow_pairs_refuses_more_pairs_than_noise_seeds_before_any_work(tmp_path: Path, capsys) -> None:
    argv = ["--checkpoint", str(tmp_path / "absent.pt"), "--device", "cpu", "--out", str(tmp_path / "pairs")]
    assert reflow_pairs.main([*argv, "--num", str(10**20)]) == 2
    one_error_line(capsys.readouterr().err, "argument --num: must be at most 4,294,967,296")
    assert reflow_pairs.main([*argv, "--num", "1e20"]) == 2
    one_error_line(capsys.readouterr().err, "argument --num: must be an integer, got '1e20'")
    assert not (tmp_path / "pairs").exists()


def test_a_notebook_parameter_error_names_the_notebook_parameter() -> None:
    """Notebooks 05-08 build lib.train's settings from their parameters: an error names STEPS, not --steps."""
    from lib.experiments import pipeline
    from lib.train import TrainConfig, TrainSettings

    with pytest.raises(ValueError, match=r"^STEPS must be at least 1, got 0; BATCH_SIZE must be a positive integer"):
        with pipeline.notebook_parameters():
            TrainSettings(train=TrainConfig(steps=0, batch_size=0))
    with pytest.raises(ValueError, match=r"^TEACHER_LR must be a finite number, got inf$"):
        with pipeline.notebook_parameters(lr="TEACHER_LR"):
            TrainSettings(train=TrainConfig(lr=float("inf")))
    with pytest.raises(ValueError, match=r"^CACHES = 7 applies to --coupling loom only"):
        with pipeline.notebook_parameters():
            TrainSettings(coupling="independent", caches=7)
    with pytest.raises(ValueError, match=r"^--steps must be at least 1, got 0$"):  # outside: the command line's flag
        TrainConfig(steps=0)


def test_notebooks_05_to_08_build_their_settings_under_their_parameter_names() -> None:
    for notebook in sorted((REPO_ROOT / "notebooks").glob("0[5-8]_*.ipynb")):
        cells = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
        built = [line for cell in cells for line in cell.splitlines() if re.search(r"\w+ = TrainSettings\(", line)]
        assert built, notebook.name
        for cell in cells:
            lines = cell.splitlines()
            for k, line in enumerate(lines):
                if line in built:
                    assert lines[k - 1].strip().startswith("with pipeline.notebook_parameters("), (notebook.name, line)


def test_a_coupling_rows_settings_drop_the_loom_tables_caches() -> None:
    """Notebooks 05-07 give CACHES to every row; the I-CFM and minibatch OT rows have no table to apply it to."""
    from lib.experiments import pipeline
    from lib.train import TrainSettings

    settings = TrainSettings(dataset="cifar10", root="data", flip=True, model="tiny", caches=4, out="x")
    for row, caches in (("I-CFM", 1), ("w/o saving local reassignments", 1), ("LOOM-CFM", 4)):
        assert pipeline.row_settings(row, settings, Path("runs")).caches == caches


# Writers outside lib.files that are allowed, and why: each fills a folder that is made whole or not at all.
DIRECT_WRITERS = {
    "lib/kit/results.py": "a notebook's results go into a staging folder, swapped in whole (replace_folder)",
    "lib/kit/figures.py": "sample grids go into the same staging folder (ResultsRun.path)",
    "lib/kit/reproduce.py": "the executed notebook goes into the runner's scratch copy of results/",
    "lib/fabricate.py": "stand-in data for tests and the quick profile, in folders recorded complete only at the end",
}
WRITE_CALLS = re.compile(
    r"torch\.save\(|save_image\(|np\.save|\.savefig\(|\.write_text\(|\.write_bytes\(|open\([^)]*[\"'][wa]|\.save\("
)


def test_every_file_the_kit_writes_goes_through_the_atomic_writer() -> None:
    """A direct torch.save / save_image / np.save / savefig / write_text in lib/ or data_prep/ tears its file on a
    full disk or a kill; they go through lib.files (atomic_write, atomic_write_stream, write_text, write_json)."""
    found = []
    for source in sorted([*REPO_ROOT.glob("lib/**/*.py"), *REPO_ROOT.glob("data_prep/*.py")]):
        name = source.relative_to(REPO_ROOT).as_posix()
        if name == "lib/files.py" or name in DIRECT_WRITERS:
            continue
        for number, line in enumerate(source.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if WRITE_CALLS.search(code) and "atomic_write" not in code and not code.strip().startswith(('"', 'f"')):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.slow
def test_a_diverging_torchrun_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    """Under torchrun the ranks agree on divergence (one small all-reduce where it is checked): both stop at the
    same step, each with the one-line error, and no checkpoint of nan weights is written."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lib.train"]
    out = tmp_path / "run"
    done = subprocess.run(
        [*command, *DDP, "--lr", "1e30", "--out", str(out)],
        cwd=REPO_ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0
    stops = re.findall(r"error: training diverged at step (\d+): the weights hold nan / inf", done.stderr)
    assert stops == ["4", "4"], done.stderr[-4000:]
    assert not (out / "checkpoint.pt").exists() and not (out / "run.lock").exists()
