"""papermill smoke runs: each notebook with tiny parameters, then assertions on the metrics it wrote.

nbval (``pytest notebooks --nbval-lax``) separately runs the committed quick defaults.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lib.kit import reproduce

pytestmark = pytest.mark.slow


def run_tiny(name: str, tmp_path: Path, **parameters: object) -> Path:
    """Execute notebook ``name`` with ``parameters`` into tmp_path; return its results folder."""
    reproduce.run_notebook(name, parameters, results_dir=tmp_path)
    folder = tmp_path / "quick" / name
    run = json.loads((folder / "run.json").read_text())
    assert run["parameters"]["RESULTS_DIR"] == str(tmp_path) and run["wall_time_s"] > 0
    assert all(run["parameters"][k] == v for k, v in parameters.items()), "injected parameters not recorded"
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_01_toy_couplings(tmp_path: Path) -> None:
    folder = run_tiny("01_toy_couplings", tmp_path, NUM_PATHS=16, DATASET_SIZE=256, TRAIN_STEPS=300,
                      BATCH_SIZE=64, POLYGON_N=6, POLYGON_EPOCHS=5)
    straight = {r["paths"]: float(r["straightness"]) for r in read_csv(folder / "fig1_straightness.csv")}
    assert straight["trained, loom coupling"] < straight["trained, independent coupling"]
    fig2 = json.loads((folder / "fig2_local_reassignment.json").read_text())
    assert fig2["pairs_changed_outside_batch"] == 0
    polygon = read_csv(folder / "fig5_polygon.csv")
    assert [int(r["batch_size"]) for r in polygon] == list(range(2, 7))
    assert abs(float(polygon[-1]["final_cost"]) - float(polygon[-1]["global_optimum"])) < 1e-6
    assert {"fig1_gaussian_paths.png", "fig1_gaussian_paths.pdf"} <= {p.name for p in folder.iterdir()}


def test_02_assignment_convergence(tmp_path: Path) -> None:
    folder = run_tiny("02_assignment_convergence", tmp_path, EPOCHS=6, BATCH_SIZES=[64, 256], MAIN_BATCH=64,
                      CACHES=[1, 2], CACHE_STUDY_SIZE=128, TOY_SIZES=[128], BENCH_EXAMPLES=1000,
                      BENCH_BATCH=32, BENCH_STEPS=3)
    headline = json.loads((folder / "headline_digits.json").read_text())
    assert headline["epochs"] == 6 and headline["examples"] == 1797
    assert 0 <= headline["loom_gap"] < headline["minibatch_ot_gap"] < headline["independent_gap"]
    epochs = read_csv(folder / "headline_digits_epochs.csv")
    costs = [float(r["cost"]) for r in epochs]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(costs, costs[1:]))
    bench = json.loads((folder / "coupling_cost.json").read_text())
    assert bench["num_examples"] == 1000 and bench["ms_loom"] > 0


def test_03_toy_generation(tmp_path: Path) -> None:
    folder = run_tiny("03_toy_generation", tmp_path, TOYS=["moons"], DATASET_SIZE=512, STEPS=60,
                      BATCH_SIZE=64, EVAL_SAMPLES=128, SOLVERS=["euler-2", "midpoint-2", "dopri5"],
                      CHECK_CLAIMS=False)
    rows = read_csv(folder / "w2_by_nfe.csv")
    assert {r["coupling"] for r in rows} == {"independent", "minibatch_ot", "loom"}
    nfe = {r["solver"]: int(r["nfe"]) for r in rows}
    assert nfe["euler-2"] == 2 and nfe["midpoint-2"] == 4 and nfe["dopri5"] >= 6
    assert all(float(r["w2"]) > 0 for r in rows)


def test_a_failing_notebook_names_itself_and_the_cell(tmp_path: Path) -> None:
    with pytest.raises(reproduce.NotebookFailed, match=r"03_toy_generation failed in cell \d+.*unknown toy"):
        reproduce.run_notebook("03_toy_generation", {"TOYS": ["donut"], "STEPS": 1}, results_dir=tmp_path)


TINY_05 = {"FAKE_TRAIN": 32, "FAKE_TEST": 16, "STEPS": 4, "BATCH_SIZE": 8, "SOLVERS": ["euler-1", "midpoint-1"],
           "NUM_FID_SAMPLES": 16, "CURVATURE_PATHS": 8, "GRID_IMAGES": 4, "STEP_BENCH_BATCH": 16, "STEP_BENCH_STEPS": 2}


def test_05_cifar10_trains_every_row_through_torchrun(tmp_path: Path) -> None:
    folder = run_tiny("05_cifar10", tmp_path, RUNS_DIR=str(tmp_path / "runs"),
                      ROWS=["I-CFM", "LOOM-CFM"], **TINY_05)
    rows = read_csv(folder / "fid_vs_paper.csv")
    assert [(r["method"], r["solver"], float(r["nfe"])) for r in rows] == [
        ("I-CFM", "euler-1", 1.0), ("I-CFM", "midpoint-1", 2.0), ("LOOM-CFM", "euler-1", 1.0), ("LOOM-CFM", "midpoint-1", 2.0)]
    assert all(float(r["fid"]) >= 0 and r["feature_extractor"].endswith("not_inception") for r in rows)
    history = read_csv(folder / "training_history.csv")
    assert {r["method"] for r in history} == {"I-CFM", "LOOM-CFM"}
    assert all(int(r["swaps"]) == 0 for r in history if r["method"] == "I-CFM")
    assert (tmp_path / "runs" / "loomcfm" / "checkpoint.pt").is_file()
    assert len(read_csv(folder / "curvature_per_step.csv")) == 2 * 19
    steps = read_csv(folder / "training_step_cost.csv")
    assert [r["part"] for r in steps][::2] == ["independent: training step", "minibatch_ot: training step",
                                               "loom: training step"]


def test_05_cifar10_evaluates_a_released_format_checkpoint(tmp_path: Path) -> None:
    from lib.unet import build_unet

    released = tmp_path / "loom-cfm_cifar10.pt"
    torch.manual_seed(0)
    state = {f"backbone.{k}": v for k, v in build_unet("tiny").state_dict().items()}
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "global_step": 123}, released)
    folder = run_tiny("05_cifar10", tmp_path, RUNS_DIR=str(tmp_path / "runs"), EVAL_CHECKPOINT=str(released),
                      FID_PROTOCOL="paper-torcheval", **TINY_05)
    rows = read_csv(folder / "fid_vs_paper.csv")
    assert {r["method"] for r in rows} == {"loom-cfm_cifar10"}
    assert all(r["kind"] == "released" and r["global_step"] == "123" for r in rows)
    # The paper's protocol against the 16 fabricated test images, drawn 16 times with replacement.
    assert all(r["fid_protocol"] == "paper-torcheval" and r["library"] == "torcheval" and r["num_reference"] == "16"
               for r in rows)
    assert [(r["solver_steps_accepted"], r["solver_steps_attempted"]) for r in rows] == [("1.0", "1.0")] * 2
    assert not (folder / "training_history.csv").exists()


def test_10_paper_tables_rebuilds_tables_and_figures_from_results(tmp_path: Path) -> None:
    """Run on a copy of the committed results: every paper number appears, quick rows are labelled and never
    compared, and the figures whose numbers exist are redrawn."""
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[1] / "results", tmp_path, dirs_exist_ok=True)
    folder = run_tiny("10_paper_tables", tmp_path)
    rows = read_csv(tmp_path / "tables.csv")
    assert read_csv(folder / "tables.csv") == rows
    with open(Path(__file__).resolve().parents[1] / "lib" / "reference" / "paper_results.csv") as f:
        assert sum(r["paper_fid"] != "" for r in rows) >= sum(1 for _ in f) - 1
    assert all(r["difference"] == "" for r in rows if r["profile"] == "quick")
    assert "## Table 3: FFHQ-256 (latent)" in (tmp_path / "tables.md").read_text()
    drawn = json.loads((folder / "figures.json").read_text())["drawn"]
    assert {"fig1_gaussian_paths", "fig3_fid_vs_nfe", "fig6_assignment_convergence"} <= set(drawn)
    assert all((folder / f"{name}.png").is_file() for name in drawn)
