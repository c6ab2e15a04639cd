"""The training loop: exact resume from atomic checkpoints, clear errors, and torchrun DDP on CPU (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lib import REPO_ROOT, toy
from lib.checkpoints import TrainCheckpointError, read_training_checkpoint, save_checkpoint
from lib.couplings import LoomCoupling, make_coupling
from lib.models import MLP
from lib.train import TrainConfig, TrainSettings, parse_args, train_flow

CONFIG = TrainConfig(steps=24, batch_size=16, lr=1e-3, warmup_steps=5, seed=3, log_every=4, progress=False)


def run(steps: int, checkpoint: Path | None = None, coupling_name: str = "loom"):
    """Train a fresh MLP for ``steps`` on 100 moons points; returns (result, coupling)."""
    data = toy.sample_toy("moons", 100, seed=1)
    torch.manual_seed(0)
    model = MLP(2, hidden=32, depth=2)
    coupling = make_coupling(coupling_name, len(data), num_caches=2, seed=5)
    return train_flow(model, data, coupling, replace(CONFIG, steps=steps), checkpoint=checkpoint), coupling


@pytest.mark.parametrize("coupling_name", ["loom", "minibatch_ot"])
def test_resume_is_exact(tmp_path: Path, coupling_name: str) -> None:
    """12 steps + resume + 12 steps gives bit-identical weights, EMA, seed table and history to 24 steps."""
    straight, straight_coupling = run(24, coupling_name=coupling_name)
    path = tmp_path / "checkpoint.pt"
    run(12, path, coupling_name)  # steps 1..12 (crosses an epoch boundary: 100 // 16 = 6 batches per epoch)
    assert read_training_checkpoint(path)["global_step"] == 12
    resumed, resumed_coupling = run(24, path, coupling_name)  # a fresh process would do exactly this
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert straight.history == resumed.history
    if coupling_name == "loom":
        assert torch.equal(straight_coupling.seeds, resumed_coupling.seeds)
    assert read_training_checkpoint(path)["global_step"] == 24


def test_checkpoint_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": "x", "payload": torch.arange(10)})
    save_checkpoint(path, {"format": "x", "payload": torch.arange(20)})
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left behind
    assert torch.equal(torch.load(path)["payload"], torch.arange(20))


def test_bad_checkpoints_name_the_problem_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    run(4, path)
    with pytest.raises(TrainCheckpointError, match="other settings.*lr: 0.001 -> 0.01"):
        data = toy.sample_toy("moons", 100, seed=1)
        train_flow(
            MLP(2, hidden=32, depth=2),
            data,
            make_coupling("loom", 100, num_caches=2),
            replace(CONFIG, lr=1e-2),
            checkpoint=path,
        )
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(TrainCheckpointError, match="truncated"):
        read_training_checkpoint(truncated)
    released = tmp_path / "released.pt"
    torch.save({"model": {}, "optimizer": {}, "lr_scheduler": {}, "global_step": 1}, released)
    with pytest.raises(TrainCheckpointError, match="load_released_unet"):
        read_training_checkpoint(released)
    with pytest.raises(TrainCheckpointError, match="no checkpoint at"):
        read_training_checkpoint(tmp_path / "missing.pt")


def test_a_loom_checkpoint_does_not_resume_another_coupling(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    run(4, path, "loom")
    with pytest.raises(TrainCheckpointError, match="other settings.*coupling: 'loom' -> 'minibatch_ot'"):
        run(8, path, "minibatch_ot")


def _train_cli(out: Path, nproc: int, batch_size: int, *flags: str) -> None:
    # Flipped epochs need images with mirror copies: 3x8x8 HDF5 images (flips on digits are refused).
    images = out.parent / "images.h5"
    if not images.exists():
        from lib.datasets import write_hdf5_images

        generator = torch.Generator().manual_seed(0)
        write_hdf5_images(images, torch.randint(0, 256, (160, 3, 8, 8), dtype=torch.uint8, generator=generator))
    cli = [
        "-m",
        "lib.train",
        "--dataset",
        "hdf5",
        "--root",
        str(images),
        "--model",
        "mlp",
        "--coupling",
        "loom",
        "--steps",
        "8",
        "--batch-size",
        str(batch_size),
        "--seed",
        "2",
        "--out",
        str(out),
        "--dump-seeds",
        "--flip",  # the released epochs: each image once, flipped at random from the loop generator
        "--device",
        "cpu",
        "--no-progress",
        *flags,
    ]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    done = subprocess.run(
        [sys.executable, *launcher, *cli],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [("--pairing", "pipelined"), ("--pairing", "synchronous", "--rank-data", "gather")],
    ids=["pipelined, every rank fetches the global batch", "synchronous, all-gathered data"],
)
def test_torchrun_two_ranks_share_one_assignment(tmp_path: Path, flags: tuple[str, ...]) -> None:
    """torchrun --nproc_per_node=2 (gloo): both ranks end with the same seed table, the seed multiset is
    unchanged, and it equals one process with the same global batch (one assignment on the whole batch), whether
    each rank fetches the whole batch and pairs it in a thread or the slices are all-gathered inside the step; the
    checkpoint holds each rank's own RNG state; every rank draws the same random flips."""
    _train_cli(tmp_path / "ddp", 2, 16, *flags)
    _train_cli(tmp_path / "single", 1, 32, "--pairing", "synchronous")
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"seeds_rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single" / "seeds_rank0.pt")
    initial = LoomCoupling(len(single), 1, seed=2).seeds
    assert torch.equal(rank0, rank1)
    assert torch.equal(rank0.flatten().sort().values, initial.flatten().sort().values)
    assert not torch.equal(rank0, initial)  # the assignment really re-paired
    assert torch.equal(rank0, single)
    state = read_training_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert state["world_size"] == 2 and state["settings"]["world_size"] == 2
    # Each rank's own RNG state is saved (its dropout and path noise differ from the other's); the seed tables
    # above still match one process, the weights need not (other masks, gradients summed in another order).
    assert state["torch_rng"].shape[0] == 2 and not torch.equal(state["torch_rng"][0], state["torch_rng"][1])


def test_cli_trains_on_an_hdf5_file_and_an_image_folder(tmp_path: Path, capsys) -> None:
    """lib.train reads the kit's on-disk formats: HDF5 images and an ImageFolder tree."""
    from PIL import Image

    from lib.datasets import write_hdf5_images
    from lib.train import main

    write_hdf5_images(tmp_path / "images.h5", torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8))
    assert (
        main(
            [
                "--dataset",
                "hdf5",
                "--root",
                str(tmp_path / "images.h5"),
                "--flip",
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--out",
                str(tmp_path / "h5run"),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    for label in ("a", "b"):
        (tmp_path / "folder" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (12, 10), (40 * i, 10, 200)).save(tmp_path / "folder" / label / f"{i}.png")
    assert (
        main(
            [
                "--dataset",
                "imagefolder",
                "--root",
                str(tmp_path / "folder"),
                "--resolution",
                "8",
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--out",
                str(tmp_path / "folderrun"),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert read_training_checkpoint(tmp_path / "folderrun" / "checkpoint.pt")["global_step"] == 2
    assert main(["--dataset", "imagefolder", "--root", str(tmp_path / "folder"), "--out", str(tmp_path / "x")]) == 2
    assert "error: --dataset imagefolder needs --resolution" in capsys.readouterr().err


def test_released_config_fills_defaults_and_flags_override_it(tmp_path: Path) -> None:
    from lib.paper import RELEASED_CONFIGS
    from lib.train import parse_args, steps_for_epochs

    args = parse_args(["--config", "cifar10", "--out", str(tmp_path), "--lr", "1e-3"])
    assert (args.model, args.batch_size, args.caches, args.warmup_steps, args.flip) == ("cifar10", 32, 4, 5000, True)
    assert args.lr == 1e-3 and args.ema_decay == 0.9999
    assert set(RELEASED_CONFIGS) == {"cifar10", "imagenet32", "imagenet64", "ffhq256_latent", "cifar10_reflow"}
    assert steps_for_epochs(1000, 50_000, 128) == 390_000  # 390 full batches per epoch of 50k images
    args = parse_args(["--config", "cifar10_reflow", "--out", str(tmp_path), "--root", "pairs", "--init", "t.pt"])
    assert (args.dataset, args.reflow, args.coupling, args.flip, args.lr, args.epochs) == (
        "hdf5",
        True,
        "independent",
        False,
        2e-5,
        200,
    )


def test_released_step_counts_follow_the_released_epochs() -> None:
    """epochs x (images // global batch), the last partial batch dropped: CIFAR-10 1000 x (50,000 // 128) =
    390,000 (391,000 if the partial batch were kept; the kit's epochs drop it). Written out by hand from
    paper_setup.md, not computed by the code under test."""
    from lib.paper import PAPER_GPUS, RELEASED_CONFIGS
    from lib.train import released_steps

    assert PAPER_GPUS * RELEASED_CONFIGS["cifar10_reflow"]["batch_size"] == 256  # reflow's global batch
    assert {name: released_steps(name) for name in RELEASED_CONFIGS} == {
        "cifar10": 390_000,  # 1000 x 390 (50,000 images, batch 32 x 4)
        "imagenet32": 500_400,  # 200 x 2502 (1,281,167 images, batch 128 x 4)
        "imagenet64": 7_673_375,  # 575 x 13345 (batch 24 x 4)
        "ffhq256_latent": 273_000,  # 500 x 546 (70,000 images, batch 32 x 4)
        "cifar10_reflow": 781_200,  # 200 x 3906 (10^6 pairs, batch 64 x 4)
    }


def test_epochs_visit_images_not_copies_unless_asked(tmp_path: Path) -> None:
    """--epochs counts images (each visited once, flipped or not); --enumerate-flips counts all 2N copies."""
    from lib.datasets import write_hdf5_images
    from lib.train import main

    write_hdf5_images(tmp_path / "images.h5", torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8))
    common = ["--dataset", "hdf5", "--root", str(tmp_path / "images.h5"), "--flip", "--epochs", "2"]
    common += ["--batch-size", "6", "--device", "cpu", "--no-progress", "--log-every", "1"]
    assert main([*common, "--out", str(tmp_path / "released")]) == 0
    assert main([*common, "--enumerate-flips", "--out", str(tmp_path / "enumerated")]) == 0
    released = json.loads((tmp_path / "released" / "config.json").read_text())
    enumerated = json.loads((tmp_path / "enumerated" / "config.json").read_text())
    assert (released["steps"], enumerated["steps"]) == (2 * (20 // 6), 2 * (40 // 6))
    epochs = [r["epoch"] for r in json.loads((tmp_path / "released" / "history.json").read_text())]
    assert epochs == [1, 1, 1, 2, 2, 2]


def test_resume_is_exact_with_random_flips(tmp_path: Path) -> None:
    """The flips of an epoch come from the loop generator saved in the checkpoint: resuming mid-epoch replays them."""
    from lib.datasets import TensorImages

    images = TensorImages(torch.rand(30, 1, 2, 2) * 2 - 1, flip=True)

    def flipped_run(steps: int, checkpoint: Path | None = None):
        torch.manual_seed(0)
        coupling = make_coupling("loom", len(images), seed=5)
        config = replace(CONFIG, steps=steps, batch_size=8, log_every=1)  # 3 steps per epoch of 30 images
        return train_flow(MLP(4, hidden=16, depth=1), images, coupling, config, checkpoint=checkpoint), coupling

    straight, straight_coupling = flipped_run(10)
    path = tmp_path / "checkpoint.pt"
    flipped_run(4, path)  # stops one step into the second epoch
    resumed, resumed_coupling = flipped_run(10, path)
    assert straight.history == resumed.history and [r["epoch"] for r in straight.history][-1] == 4
    assert torch.equal(straight_coupling.seeds, resumed_coupling.seeds)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_kept_checkpoints_are_step_numbered_copies(tmp_path: Path) -> None:
    """keep_checkpoints_every keeps checkpoint_step<k>.pt beside checkpoint.pt, each the state at step k."""
    from lib.checkpoints import kept_checkpoints

    data = toy.sample_toy("moons", 100, seed=1)
    config = replace(CONFIG, steps=10, keep_checkpoints_every=4)
    train_flow(
        MLP(2, hidden=8, depth=1), data, make_coupling("loom", 100), config, checkpoint=tmp_path / "checkpoint.pt"
    )
    kept = kept_checkpoints(tmp_path / "checkpoint.pt")
    assert list(kept) == [4, 8] and [p.name for p in kept.values()] == [
        "checkpoint_step00000004.pt",
        "checkpoint_step00000008.pt",
    ]
    assert [read_training_checkpoint(p)["global_step"] for p in kept.values()] == [4, 8]
    assert read_training_checkpoint(tmp_path / "checkpoint.pt")["global_step"] == 10
    kept_names = [p.name for p in kept.values()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", *kept_names, "tensorboard"]


def test_train_after_convergence_runs_on_a_dataset_as_on_a_tensor() -> None:
    from lib.couplings import converge_pairing
    from lib.datasets import TensorImages

    images = torch.rand(40, 1, 4, 4) * 2 - 1
    dataset = TensorImages(images)
    on_tensor, on_dataset = LoomCoupling(40, seed=1), LoomCoupling(40, seed=1)
    history = converge_pairing(on_tensor, images, 8, seed=0)
    assert history == converge_pairing(on_dataset, dataset, 8, seed=0, fetch=lambda i: dataset.get_batch(i)[1])
    assert torch.equal(on_tensor.seeds, on_dataset.seeds) and history[-1]["swaps"] == 0
    coupling = LoomCoupling(40, seed=1)
    train_flow(
        MLP(16, hidden=8, depth=1), dataset, coupling, replace(CONFIG, steps=2, batch_size=8, converge_first=True)
    )
    assert torch.equal(coupling.seeds.flatten().sort().values, on_tensor.seeds.flatten().sort().values)


def test_train_settings_spell_lib_train_options_and_parse_back() -> None:
    settings = TrainSettings(
        out="out",
        dataset="cifar10",  # flips apply to images, not to digits
        root="data",
        coupling="loom",
        no_swaps=True,
        flip=True,
        train=TrainConfig(batch_size=32, bf16=False, progress=False),
    )
    argv = settings.to_argv()
    assert argv == [
        "--out",
        "out",
        "--dataset",
        "cifar10",
        "--root",
        "data",
        "--flip",
        "--no-swaps",
        "--batch-size",
        "32",
        "--no-progress",
    ]
    assert TrainSettings.from_args(parse_args(argv)) == settings


def test_each_rank_draws_its_own_dropout_and_rank_0_keeps_the_seed() -> None:
    """Per-rank seeds (lib.train.rank_seed): rank 0 draws exactly what --seed gives one process; the others draw
    other numbers (torch's CPU generator keeps only 32 bits of a seed, so the ranks must differ in those)."""
    from lib.train import rank_seed

    streams = []
    for rank in range(4):
        generator = torch.Generator().manual_seed(rank_seed(7, rank))
        streams.append(torch.rand(4, generator=generator))
    assert torch.equal(streams[0], torch.rand(4, generator=torch.Generator().manual_seed(7)))
    assert all(not torch.equal(streams[a], streams[b]) for a in range(4) for b in range(a))


def test_a_checkpoint_of_an_earlier_kit_still_resumes_and_still_refuses_changes(tmp_path: Path) -> None:
    """Checkpoints written before every setting was recorded (one RNG state, no "settings") resume exactly; what
    they did record (the optimisation settings) is still compared."""
    straight, _ = run(24)
    path = tmp_path / "checkpoint.pt"
    run(12, path)
    state = read_training_checkpoint(path)
    del state["settings"]
    state["torch_rng"], state["cuda_rng"] = state["torch_rng"][0].clone(), []
    save_checkpoint(path, state)
    resumed, _ = run(24, path)
    assert all(torch.equal(a, b) for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()))
    state = read_training_checkpoint(path)
    del state["settings"]
    save_checkpoint(path, state)
    with pytest.raises(TrainCheckpointError, match="lr: 0.001 -> 0.01"):
        train_flow(
            MLP(2, hidden=32, depth=2),
            toy.sample_toy("moons", 100, seed=1),
            make_coupling("loom", 100, num_caches=2, seed=5),
            replace(CONFIG, lr=1e-2, steps=30),
            checkpoint=path,
        )


def test_the_cli_warns_when_the_planned_v_passes_the_boundary(tmp_path: Path, monkeypatch, capsys) -> None:
    """20 images with flips = 40 examples, 2 epochs of batch 6 = 6 steps: V = 36 / 40 = 0.9 with one cache."""
    import lib.boundary
    import lib.train
    from lib.datasets import write_hdf5_images

    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"boundary_v": 0.5, "low_v": 0.4, "high_v": 0.7, "threshold": 1.25, "solver": "x"}))
    monkeypatch.setattr(lib.boundary, "NOISE_TABLE_RULE", rule)
    monkeypatch.setattr(lib.boundary, "CAPACITY_MODEL", tmp_path / "no_capacity_model.json")  # visits alone
    write_hdf5_images(tmp_path / "images.h5", torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8))
    common = ["--dataset", "hdf5", "--root", str(tmp_path / "images.h5"), "--flip", "--epochs", "2"]
    common += ["--batch-size", "6", "--device", "cpu", "--no-progress", "--log-every", "1", "--coupling"]
    assert lib.train.main([*common, "loom", "--out", str(tmp_path / "one")]) == 0
    err = capsys.readouterr().err
    assert "V = 6 x 6 / (40 x 1) = 0.9 times, above the boundary V* = 0.5 from the visits alone" in err
    assert "(notebook 12, digits: range 0.4-0.7)" in err
    assert "--caches 2 or more" in err
    assert lib.train.main([*common, "loom", "--caches", "2", "--out", str(tmp_path / "two")]) == 0  # V = 0.45
    assert "warning" not in capsys.readouterr().err
    assert lib.train.main([*common, "minibatch_ot", "--out", str(tmp_path / "ot")]) == 0
    assert "warning" not in capsys.readouterr().err  # no table, no V
