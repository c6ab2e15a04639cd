"""The closing "what this run shows" cells say what the rows they are given measured, nothing typed in."""

from __future__ import annotations

from lib.kit import summaries


def test_image_summaries_label_quick_numbers_and_rank_methods() -> None:
    fid = [
        {
            "method": "loom",
            "solver": "euler-1",
            "nfe": 1,
            "fid": 0.2,
            "fid_protocol": "clean-fid-clean",
            "feature_extractor": "random",
        },
        {
            "method": "I-CFM",
            "solver": "euler-1",
            "nfe": 1,
            "fid": 0.3,
            "fid_protocol": "clean-fid-clean",
            "feature_extractor": "random",
        },
    ]
    text = summaries.fid_pipeline(fid, [], "quick")
    assert "not the paper's experiment" in text and "LOOM-CFM (0.2) < I-CFM (0.3)" in text
    assert "not the paper's experiment" not in summaries.fid_pipeline(fid, [], "paper")
