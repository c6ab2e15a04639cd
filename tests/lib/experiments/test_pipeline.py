"""The glue of the image notebooks: command lines for lib.train, paper rows, joining ours with the paper's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lib import fabricate
from lib.checkpoints import LoadedModel, load_released
from lib.experiments import pipeline
from lib.paper import COUPLING_ROWS, paper_rows
from lib.train import TrainConfig, TrainSettings, parse_args


def test_every_paper_row_is_a_valid_lib_train_command(tmp_path: Path) -> None:
    for row, spec in COUPLING_ROWS.items():
        settings = pipeline.row_settings(row, TrainSettings(train=TrainConfig(steps=3)), tmp_path)
        args = parse_args(settings.to_argv())
        assert args.coupling == spec.coupling and args.no_swaps == spec.no_swaps
        assert args.converge_first == spec.converge_first and args.out.startswith(
            str(tmp_path / pipeline.run_name(row))
        )
        assert TrainSettings.from_args(args) == settings
    assert pipeline.run_name("w/o saving local reassignments") == "wo_saving_local_reassignments"
    base = TrainSettings(train=TrainConfig(steps=3))
    same, other = (pipeline.row_settings("LOOM-CFM", s, tmp_path) for s in (base, replace(base, caches=2)))
    assert same.out == pipeline.row_settings("LOOM-CFM", base, tmp_path).out != other.out  # keyed by the settings
    with pytest.raises(ValueError, match="unknown row 'OT-CFM'"):
        pipeline.row_settings("OT-CFM", TrainSettings(), tmp_path)


def test_table5_grid_rows_are_lib_train_commands_at_their_caches_and_ot_batch(tmp_path: Path) -> None:
    settings = TrainSettings(caches=4, train=TrainConfig(steps=3, batch_size=32, converge_first=True))
    grid = pipeline.table5_grid([2, 3, 4], [32, 64, 128], settings, nproc=4)
    assert grid == [
        "LOOM-CFM 2 caches bs128",
        "LOOM-CFM 3 caches bs128",
        "LOOM-CFM 4 caches bs32",
        "LOOM-CFM 4 caches bs64",
    ]
    assert {r["method"] for r in paper_rows("5", "cifar10")} >= set(grid)  # they join Table 5's rows
    row = pipeline.row_settings("LOOM-CFM 4 caches bs64", settings, tmp_path, nproc=4)
    args = parse_args(row.to_argv())
    assert (args.coupling, args.caches, args.batch_size, args.converge_first) == ("loom", 4, 16, False)
    assert args.out.startswith(str(tmp_path / "loomcfm_4_caches_bs64") + "-")  # keyed by settings and code
    with pytest.raises(ValueError, match="OT batch 64 does not split over 3 processes"):
        pipeline.row_settings("LOOM-CFM 4 caches bs64", settings, tmp_path, nproc=3)


def test_paper_rows_and_side_by_side_join_on_method_solver_and_nfe() -> None:
    paper = paper_rows("5", "cifar10")
    assert {"w/o saving local reassignments", "fixed source w/o reassignments"} <= {r["method"] for r in paper}
    ours = [
        {"method": "w/o saving local reassignments", "solver": "midpoint-4", "nfe": 8, "fid": 9.0},
        {"method": "w/o saving local reassignments", "solver": "dopri5", "nfe": 77.0, "fid": 5.0},
        {"method": "w/o saving local reassignments", "solver": "euler-8", "nfe": 8, "fid": 9.0},
    ]
    joined = pipeline.side_by_side(ours, paper)
    assert [r["paper_fid"] for r in joined] == [8.69, 4.52, None]
    assert [r["paper_provenance"] for r in joined] == ["secondary+authors_plot", "secondary+authors_plot", None]


def test_a_failed_training_run_reports_the_command_and_its_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.h5"
    settings = TrainSettings(out=str(tmp_path / "run"), dataset="hdf5", root=str(missing), train=TrainConfig(steps=1))
    with pytest.raises(pipeline.TrainingFailed, match=f"exited with 2:\nerror: HDF5 dataset {missing} does not exist"):
        pipeline.launch_training(settings)
    log = (tmp_path / "run" / pipeline.TRAIN_LOG).read_text()  # the whole output stays in the run folder
    assert f"error: HDF5 dataset {missing} does not exist" in log
    with pytest.raises(ValueError, match="--model must be mlp or one of"):  # refused before anything is launched
        TrainSettings(model="resnet")


def test_a_failed_data_prep_script_reports_the_command_and_its_error(tmp_path: Path) -> None:
    with pytest.raises(pipeline.ScriptFailed, match=r"(?s)data_prep/imagenet.py --source .*is not a folder"):
        pipeline.run_script(
            "data_prep/imagenet.py", ["--source", tmp_path / "nowhere", "--resolution", 32, "--out", tmp_path / "out"]
        )
    assert "usage" in pipeline.run_script("data_prep/imagenet.py", ["--help"])


def test_evaluating_a_release_without_its_reference_names_the_dataset(tmp_path: Path) -> None:
    fabricate.write_fake_release(tmp_path, "imagenet64")
    loaded = load_released("imagenet64", cache_dir=tmp_path, offline=True, preset="tiny")
    with pytest.raises(ValueError, match=r"no FID reference for dataset\(s\) \['imagenet64'\]"):
        pipeline.evaluate_releases(
            {"imagenet64": loaded}, 4, {"imagenet32": "imagenet32_train"}, {}, seed=0, device="cpu"
        )


def test_fid_table_checks_the_protocol_before_sampling() -> None:
    class Unsampled(torch.nn.Module):
        def forward(self, x, t):
            raise AssertionError("sampled before the protocol was checked")

    models = {"m": LoadedModel(Unsampled(), (3, 32, 32), {})}
    with pytest.raises(ValueError, match="unknown FID protocol 'torcheval'"):
        pipeline.fid_table(models, ["euler-1"], 4, "cifar10", [], seed=0, device="cpu", protocol="torcheval")


def test_notebook_train_config_takes_the_parameters_a_notebook_has_under_their_names() -> None:
    """Notebooks 05-08 and reproduce --plan build TrainConfig from the same parameters; errors name them."""
    p = {"STEPS": 5, "BATCH_SIZE": 8, "LR": 1e-3, "EMA_DECAY": 0.5, "SEED": 3, "BF16": False, "CHECKPOINT_EVERY": 2}
    p |= {"TEACHER_LR": 2e-4, "CACHES": 4, "RESOLUTION": 64}  # other settings' parameters: not TrainConfig's
    expected = TrainConfig(steps=5, batch_size=8, lr=1e-3, ema_decay=0.5, seed=3, bf16=False, checkpoint_every=2)
    assert pipeline.notebook_train_config(p) == expected
    assert pipeline.notebook_train_config(p, lr="TEACHER_LR") == replace(expected, lr=2e-4)
    with pytest.raises(ValueError, match=r"^STEPS must be at least 1, got 0"):
        pipeline.notebook_train_config({**p, "STEPS": 0})
