"""The closing "what this run shows" cells say what the rows they are given measured, nothing typed in."""

from __future__ import annotations

from lib.kit import summaries


def test_toy_couplings_states_the_measured_numbers() -> None:
    polygon = [
        {
            "batch_size": m,
            "start_cost": 0.311,
            "final_cost": 0.311 if m < 5 else 0.2114,
            "global_optimum": 0.2114,
            "escaped": m >= 5,
        }
        for m in range(2, 7)
    ]
    text = summaries.toy_couplings(
        [{"paths": "trained, loom coupling", "straightness": 1.25e-5}],
        {
            "batch_cost_before": 2.41,
            "batch_cost_after": 1.46,
            "pairs_changed_in_batch": 7,
            "pairs_changed_outside_batch": 0,
        },
        polygon,
    )
    assert text.startswith(summaries.HEADING)
    for fact in ("1.25e-05", "from 2.41 to 1.46", "changed 7 of its pairs and 0 pairs outside", "below 5", "0.211"):
        assert fact in text, fact


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
