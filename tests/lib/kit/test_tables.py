"""Notebook 10's machinery: paper rows joined with the kit's, honest labels, and figures redrawn from tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lib.kit import tables


def write_run(root: Path, profile: str, notebook: str, name: str, rows: list[dict[str, object]]) -> None:
    """A results folder as lib.results writes it: a table and its run.json."""
    folder = root / profile / notebook
    folder.mkdir(parents=True)
    with open(folder / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "run.json").write_text(json.dumps({"git_commit": "abc", "wall_time_s": 1.0}))


def fid_row(
    method: str,
    solver: str,
    nfe: float,
    fid: float,
    features: str,
    protocol: str = "paper-torcheval",
    steps: tuple[float, float] = (0, 0),
) -> dict[str, object]:
    return {
        "method": method,
        "solver": solver,
        "nfe": nfe,
        "solver_steps_accepted": steps[0],
        "solver_steps_attempted": steps[1],
        "fid": fid,
        "kind": "kit",
        "fid_protocol": protocol,
        "library": "torcheval" if protocol == "paper-torcheval" else "clean-fid",
        "mode": "clean",
        "feature_extractor": features,
        "reference": "cifar10 test",
        "num_generated": 50000,
    }


def test_comparison_labels_quick_rows_and_compares_only_paper_profile_inception_rows(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        "quick",
        "05_cifar10",
        "fid_vs_paper.csv",
        [
            fid_row("LOOM-CFM", "midpoint-2", 4.0, 0.08, "random_conv_not_inception"),
            fid_row("I-CFM", "midpoint-2", 4.0, 0.09, "random_conv_not_inception"),
        ],
    )
    write_run(
        tmp_path,
        "paper",
        "05_cifar10",
        "fid_vs_paper.csv",
        [
            fid_row("LOOM-CFM", "midpoint-2", 4.0, 12.6, "torchvision_inception_v3_IMAGENET1K_V1", steps=(2, 2)),
            fid_row("LOOM-CFM", "dopri5", 131.0, 4.5, "torchvision_inception_v3_IMAGENET1K_V1", steps=(18, 21.5)),
        ],
    )
    rows = tables.comparison(tmp_path)
    paper = tables.paper_results()
    assert tables.unshown_paper_rows(rows) == [] and len(rows) > len(paper)  # every paper number is shown
    loom4 = [r for r in rows if r["table"] == "1" and r["method"] == "LOOM-CFM" and r["paper_nfe"] == "4"]
    assert {r["profile"] for r in loom4} == {"quick", "paper"}
    by_profile = {r["profile"]: r for r in loom4}
    assert by_profile["paper"]["difference"] == 12.6 - 11.60 and by_profile["paper"]["status"] == "paper profile"
    assert by_profile["quick"]["difference"] == "" and by_profile["quick"]["status"].startswith("quick profile")
    dopri = [r for r in rows if r["table"] == "1" and r["method"] == "LOOM-CFM" and r["solver"] == "dopri5"]
    assert dopri[0]["kit_nfe"] == 131.0 and dopri[0]["paper_nfe"] == "134"  # adaptive: joined on the method
    assert (dopri[0]["kit_steps_accepted"], dopri[0]["kit_steps_attempted"]) == (18, 21.5)
    assert [r["status"] for r in rows if r["method"] == "OT-CFM"] == ["not run yet"]
    kit_only = [r for r in rows if r["method"] == "I-CFM" and r["paper_fid"] == ""]
    assert len(kit_only) == 1 and kit_only[0]["table"] == "1"  # I-CFM is a Table 1 method, no midpoint number
    text = tables.markdown(rows)
    assert "## Table 2: ImageNet-64" in text and "not run yet" in text and "(quick)" in text
    assert "| 131 | 18 / 22 | " in text and "| 4 | 2 / 2 | " in text  # true calls, then accepted / attempted steps


def test_a_clean_fid_number_is_labelled_and_never_set_against_the_papers(tmp_path: Path) -> None:
    """The paper's numbers are paper-torcheval FIDs: a clean-fid FID of the same model gets no difference."""
    write_run(
        tmp_path,
        "paper",
        "05_cifar10",
        "fid_vs_paper.csv",
        [
            fid_row("LOOM-CFM", "midpoint-2", 4.0, 12.6, "inception_v3", protocol="clean-fid-legacy-tf"),
            {**fid_row("LOOM-CFM", "midpoint-4", 8.0, 7.0, "inception_v3"), "fid_protocol": ""},
        ],
    )
    rows = [r for r in tables.comparison(tmp_path) if r.get("profile") == "paper"]
    assert [r["difference"] for r in rows] == ["", ""]
    assert rows[0]["status"] == "paper profile, clean-fid-legacy-tf FID: not the paper's protocol, not comparable"
    assert rows[1]["status"].startswith("paper profile, unrecorded FID")  # a row without a protocol name
    assert rows[0]["protocol"].startswith("clean-fid-legacy-tf: clean-fid")
    text = tables.markdown(rows)
    assert "12.6 (other protocol)" in text and "| - | paper |" in text  # no kit - paper difference


def test_a_table_without_run_json_has_no_provenance_and_is_left_out(tmp_path: Path) -> None:
    write_run(
        tmp_path, "quick", "05_cifar10", "fid_vs_paper.csv", [fid_row("LOOM-CFM", "midpoint-2", 4.0, 0.08, "random")]
    )
    (tmp_path / "quick" / "05_cifar10" / "run.json").unlink()
    assert tables.kit_rows(tmp_path) == []


def test_released_rows_name_their_dataset_and_reflow_joins_on_nfe_alone(tmp_path: Path) -> None:
    write_run(
        tmp_path,
        "paper",
        "11_released_checkpoints",
        "released_vs_paper.csv",
        [
            {**fid_row("LOOM-CFM + 1 Reflow", "euler-2", 2.0, 4.7, "inception_v3"), "dataset": "cifar10_reflow"},
            {**fid_row("LOOM-CFM", "midpoint-1", 2.0, 15.0, "inception_v3"), "dataset": "ffhq256"},
        ],
    )
    rows = [r for r in tables.comparison(tmp_path) if r.get("profile") == "paper"]
    assert {(r["table"], r["dataset"], r["paper_fid"]) for r in rows} == {
        ("1", "cifar10", "4.49"),
        ("3", "ffhq256_latent", "14.89"),
    }
