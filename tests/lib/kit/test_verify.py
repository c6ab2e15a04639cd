"""lib.kit.verify: every value judged by its kind, timings never judged, differences explained by run.json."""

from __future__ import annotations

import json
from pathlib import Path

from lib.kit import verify


def test_kinds_follow_the_names_and_json_keys_fall_back_to_their_file() -> None:
    assert verify.kind_of("fid") == "fid" and verify.kind_of("kit_fid") == "fid"
    assert verify.kind_of("ms_per_step") == verify.kind_of("loom_over_independent") == "timing"
    assert verify.kind_of("nfe") == verify.kind_of("swaps") == "exact"
    assert verify.kind_of("8gaussians.loom", "one_step_w2") == "w2"
    assert verify.kind_of("git_commit") == "ignored"
    # Seen differing across CPU capabilities (AVX-512 vs AVX2) on the quick profile: each has its kind.
    assert verify.kind_of("per_run.boundary_v", "boundary") == verify.kind_of("reference_score") == "study score"
    assert verify.kind_of("latent_scale") == verify.kind_of("scaled_std", "latents") == "latent scale"
    assert verify.kind_of("quantisation_rms", "pairs") == "sample statistics"
    assert verify.kind_of("train_seconds") == "timing" and verify.kind_of("teacher", "pairs") == "ignored"


def test_judging_applies_the_kinds_tolerance_and_integers_stay_exact() -> None:
    assert verify.judge("fid", "10.2", "10.0") == "within"  # 2 % < 3 %
    assert verify.judge("fid", "11.0", "10.0") == "different"  # 10 %
    assert verify.judge("fd", 1.0005, 1.0) == "within" and verify.judge("fd", 1.01, 1.0) == "different"
    assert verify.judge("nfe", "12", "13") == "different" and verify.judge("nfe", "12", "12") == "identical"
    assert verify.judge("num_examples", "50001", "50000", "coupling_cost") == "different"  # a count, not a cost
    assert verify.judge("ms_per_step", "100", "1") == "timing"


def _folder(root: Path, fid: float, ms: float, capability: str = "AVX2", commit: str = "a" * 40) -> Path:
    root.mkdir(parents=True)
    (root / "fid.csv").write_text(f"method,nfe,fid,ms_per_step\nLOOM-CFM,8,{fid},{ms}\n")
    (root / "summary.json").write_text(json.dumps({"w2": 1.5, "steps": 10}))
    run = {
        "device": {"torch_cpu_capability": capability},
        "versions": {"torch": "2.14.1"},
        "parameters": {"SEED": 0},
        "git_commit": commit,
    }
    (root / "run.json").write_text(json.dumps(run))
    return root


def test_a_rerun_within_tolerance_is_ok_and_timings_are_only_counted(tmp_path: Path) -> None:
    old = _folder(tmp_path / "old", fid=10.0, ms=5.0)
    new = _folder(tmp_path / "new", fid=10.1, ms=50.0)
    result = verify.compare_folders(new, old, "05_cifar10")
    assert result.ok and not result.unchanged and result.within == 1 and result.timings == 1
    assert result.identical == 4  # method, nfe, w2, steps
    same = verify.compare_folders(old, old, "05_cifar10")
    assert same.unchanged


def test_a_real_difference_names_its_likely_cause(tmp_path: Path) -> None:
    old = _folder(tmp_path / "old", fid=10.0, ms=5.0)
    new = _folder(tmp_path / "new", fid=12.0, ms=5.0, capability="AVX512", commit="b" * 40)
    result = verify.compare_folders(new, old, "05_cifar10")
    assert not result.ok and result.different == ["fid.csv: row 0 fid 10.0 -> 12.0"]
    assert any("CPU capability differs: committed AVX2, rerun AVX512" in c for c in result.causes)
    assert any("the code differs" in c for c in result.causes)
    assert "DIFFERENT" in verify.table([result]) and "likely cause" in verify.table([result])
    (new / "summary.json").unlink()
    assert verify.compare_folders(new, old, "05_cifar10").missing == ["summary.json"]
