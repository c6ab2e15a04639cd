"""The glue of the image notebooks: command lines for lib.train, paper rows, joining ours with the paper's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib.checkpoints import LoadedModel
from lib.experiments import pipeline
from lib.kit.figures import fid_vs_nfe_figure
from lib.paper import COUPLING_ROWS, paper_rows
from lib.train import TrainConfig, TrainSettings, parse_args


def test_train_settings_spell_lib_train_options_and_parse_back() -> None:
    settings = TrainSettings(out="out", coupling="loom", no_swaps=True, flip=True,
                             train=TrainConfig(batch_size=32, bf16=False, progress=False))
    argv = settings.to_argv()
    assert argv == ["--out", "out", "--flip", "--no-swaps", "--batch-size", "32", "--no-progress"]
    assert TrainSettings.from_args(parse_args(argv)) == settings


def test_every_paper_row_is_a_valid_lib_train_command(tmp_path: Path) -> None:
    for row, spec in COUPLING_ROWS.items():
        settings = pipeline.row_settings(row, TrainSettings(train=TrainConfig(steps=3)), tmp_path)
        args = parse_args(settings.to_argv())
        assert args.coupling == spec.coupling and args.no_swaps == spec.no_swaps
        assert args.converge_first == spec.converge_first and args.out == str(tmp_path / pipeline.run_name(row))
        assert TrainSettings.from_args(args) == settings
    assert pipeline.run_name("w/o saving local reassignments") == "wo_saving_local_reassignments"
    with pytest.raises(ValueError, match="unknown row 'OT-CFM'"):
        pipeline.row_settings("OT-CFM", TrainSettings(), tmp_path)


def test_paper_rows_and_side_by_side_join_on_method_solver_and_nfe() -> None:
    paper = paper_rows("5", "cifar10")
    assert {"w/o saving local reassignments", "fixed source w/o reassignments"} <= {r["method"] for r in paper}
    ours = [{"method": "w/o saving local reassignments", "solver": "midpoint-4", "nfe": 8, "fid": 9.0},
            {"method": "w/o saving local reassignments", "solver": "dopri5", "nfe": 77.0, "fid": 5.0},
            {"method": "w/o saving local reassignments", "solver": "euler-8", "nfe": 8, "fid": 9.0}]
    joined = pipeline.side_by_side(ours, paper)
    assert [r["paper_fid"] for r in joined] == [8.69, 4.52, None]
    assert [r["paper_provenance"] for r in joined] == ["secondary+authors_plot", "secondary+authors_plot", None]


def test_a_failed_training_run_reports_the_command_and_its_error(tmp_path: Path) -> None:
    with pytest.raises(pipeline.TrainingFailed, match="unknown model 'resnet'"):
        pipeline.launch_training(TrainSettings(out=str(tmp_path / "run"), model="resnet", train=TrainConfig(steps=1)))


def test_a_failed_data_prep_script_reports_the_command_and_its_error(tmp_path: Path) -> None:
    with pytest.raises(pipeline.ScriptFailed, match=r"(?s)data_prep/imagenet.py --source .*is not a folder"):
        pipeline.run_script("data_prep/imagenet.py", ["--source", tmp_path / "nowhere", "--resolution", 32,
                                                      "--out", tmp_path / "out"])
    assert "usage" in pipeline.run_script("data_prep/imagenet.py", ["--help"])


def test_fid_table_checks_the_protocol_before_sampling_and_figures_refuse_mixed_protocols() -> None:
    class Unsampled(torch.nn.Module):
        def forward(self, x, t):
            raise AssertionError("sampled before the protocol was checked")

    models = {"m": LoadedModel(Unsampled(), (3, 32, 32), {})}
    with pytest.raises(ValueError, match="unknown FID protocol 'torcheval'"):
        pipeline.fid_table(models, ["euler-1"], 4, "cifar10", [], seed=0, device="cpu", protocol="torcheval")
    rows = [{"method": "a", "nfe": 4, "fid": 1.0, "fid_protocol": "paper-torcheval"},
            {"method": "a", "nfe": 8, "fid": 2.0, "fid_protocol": "clean-fid-clean"}]
    with pytest.raises(ValueError, match="several protocols"):
        fid_vs_nfe_figure(rows, [], "random")
