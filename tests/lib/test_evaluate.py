"""Sampling and evaluation from checkpoints: per-image seeds, architecture read off the weights, FID rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torchvision.utils import save_image

from lib import evaluate, sample
from lib.couplings import make_coupling
from lib.fabricate import write_fake_cifar10
from lib.fid import PAPER_PROTOCOL, RandomConvFeatures, feature_network
from lib.train import TrainConfig, train_flow
from lib.unet import build_unet

CONFIG = TrainConfig(steps=4, batch_size=8, seed=0, progress=False, ema_decay=0.5)


def trained_checkpoint(tmp_path: Path, model: torch.nn.Module, data: torch.Tensor):
    path = tmp_path / "checkpoint.pt"
    result = train_flow(model, data, make_coupling("loom", len(data)), CONFIG, checkpoint=path)
    return path, result


def checkpoint_and_reference(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny UNet trained 4 steps on 16 random 32 x 32 images, and those images as a reference folder."""
    data = torch.rand(16, 3, 32, 32) * 2 - 1
    path, _ = trained_checkpoint(tmp_path, build_unet("tiny"), data)
    reference = tmp_path / "reference"
    reference.mkdir()
    for i, image in enumerate(data):
        save_image((image + 1) / 2, reference / f"{i}.png")
    return path, reference


def test_fid_rows_record_true_nfe_and_the_protocol(tmp_path: Path) -> None:
    path, reference = checkpoint_and_reference(tmp_path)
    rows = evaluate.fid_rows(
        sample.load_model(path),
        ["euler-2", "midpoint-2"],
        12,
        str(reference),
        batch_size=6,
        feature_extractor=RandomConvFeatures(),
    )
    assert [r["solver"] for r in rows] == ["euler-2", "midpoint-2"] and [r["nfe"] for r in rows] == [2, 4]
    assert all(r["fid"] >= 0 and r["num_generated"] == 12 and "NOT Inception" in r["note"] for r in rows)


def test_paper_protocol_rows_carry_true_nfe_and_solver_steps(tmp_path: Path) -> None:
    path, _ = trained_checkpoint(tmp_path, build_unet("tiny"), torch.rand(16, 3, 32, 32) * 2 - 1)
    write_fake_cifar10(tmp_path / "cifar", num_train=10, num_test=40)
    rows = evaluate.fid_rows(
        sample.load_model(path),
        ["midpoint-2", "dopri5"],
        6,
        str(tmp_path / "cifar"),
        batch_size=3,
        protocol=PAPER_PROTOCOL,
        dataset_res=32,
        feature_extractor=feature_network("random", PAPER_PROTOCOL),
    )
    midpoint, dopri = rows
    assert (midpoint["nfe"], midpoint["solver_steps_accepted"], midpoint["solver_steps_attempted"]) == (4, 2, 2)
    # Per batch of images (here the mean of two batches): torchdiffeq's dopri5 calls the network
    # 6 x attempted steps + 2 times; the steps are not the NFE.
    assert dopri["nfe"] == 6 * dopri["solver_steps_attempted"] + 2
    assert dopri["solver_steps_attempted"] >= dopri["solver_steps_accepted"] > 0
    for row in rows:
        assert row["fid_protocol"] == PAPER_PROTOCOL and row["library"] == "torcheval" and row["fid"] > 0
        assert row["reference_split"] == "test" and row["num_reference"] == 40 and row["num_generated"] == 6


def test_evaluate_cli_checks_the_protocol_first_and_writes_paper_protocol_rows(tmp_path: Path, capsys) -> None:
    out = tmp_path / "fid.json"
    # refused by the parser: no checkpoint is loaded, nothing is sampled
    assert evaluate.main(["--checkpoint", str(tmp_path / "missing.pt"), "--protocol", "paper", "--out", str(out)]) == 2
    assert "invalid choice: 'paper'" in capsys.readouterr().err and not out.exists()
    path, _ = trained_checkpoint(tmp_path, build_unet("tiny"), torch.rand(16, 3, 32, 32) * 2 - 1)
    write_fake_cifar10(tmp_path / "cifar", num_train=10, num_test=30)
    argv = ["--checkpoint", str(path), "--protocol", PAPER_PROTOCOL, "--reference", str(tmp_path / "cifar")]
    argv += ["--num-reference", "50", "--features", "random", "--solvers", "euler-2", "--num-samples", "6"]
    assert evaluate.main([*argv, "--batch-size", "6", "--device", "cpu", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["fid_protocol"] == PAPER_PROTOCOL and row["num_reference"] == 50 and row["nfe"] == 2
    assert "steps 2.0 accepted / 2.0 attempted" in capsys.readouterr().out


def test_the_cli_checks_every_solver_first_writes_each_row_and_resumes(tmp_path: Path, monkeypatch, capsys) -> None:
    """An unknown third solver is refused before any sampling; an interruption keeps the finished rows; a rerun
    computes only the missing ones (rows are keyed by the checkpoint's checksum, the solver and the protocol)."""
    path, reference = checkpoint_and_reference(tmp_path)
    out = tmp_path / "fid.json"
    argv = ["--checkpoint", str(path), "--num-samples", "6", "--batch-size", "6", "--reference", str(reference)]
    argv += ["--features", "random", "--device", "cpu", "--out", str(out)]
    computed, real = [], evaluate.fid_rows

    def counting(loaded, solvers, *args, **kwargs):
        computed.extend(solvers)
        if solvers == ["euler-3"] and "interrupt" in computed:
            raise KeyboardInterrupt  # Ctrl-C during the third row
        return real(loaded, solvers, *args, **kwargs)

    monkeypatch.setattr(evaluate, "fid_rows", counting)
    assert evaluate.main([*argv, "--solvers", "euler-1", "euler-2", "rk45"]) == 2
    assert "unknown solver" in capsys.readouterr().err and computed == [] and not out.exists()
    computed.append("interrupt")
    assert evaluate.main([*argv, "--solvers", "euler-1", "euler-2", "euler-3"]) == 130
    assert [r["solver"] for r in json.loads(out.read_text())] == ["euler-1", "euler-2"]  # written as they came
    computed.clear()
    assert evaluate.main([*argv, "--solvers", "euler-1", "euler-2", "euler-3"]) == 0
    assert computed == ["euler-3"]  # the finished rows are kept, not recomputed
    assert re.search(r"^euler-1 +kept from", capsys.readouterr().out, re.M)
    assert evaluate.main([*argv, "--solvers", "euler-1", "--seed", "1"]) == 0  # another protocol: a new row
    rows = json.loads(out.read_text())
    assert computed == ["euler-3", "euler-1"] and [(r["solver"], r["seed"]) for r in rows][-1] == ("euler-1", 1)
    assert len(rows) == 4 and all(r["key"]["checkpoint_sha256"] == rows[0]["key"]["checkpoint_sha256"] for r in rows)


def test_the_cli_refuses_bad_protocol_arguments_in_one_line(tmp_path: Path, capsys) -> None:
    base = ["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "fid.json")]
    for argv, message in (
        (["--num-samples", "0"], "--num-samples: must be a positive integer, got 0"),
        (["--num-samples", "1"], "FID needs at least 2 samples"),
        (["--batch-size", "-1"], "--batch-size: must be a positive integer, got -1"),
        (["--protocol", "clever"], "argument --protocol: invalid choice: 'clever'"),
        (["--reference", str(tmp_path / "missing") + "/"], "is not a folder or file of reference images"),
        (["--device", "cpu"], "no checkpoint file at"),
    ):
        assert evaluate.main([*base, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
