"""The README keeps its promises: every notebook is in its index, every command it shows runs (--help) with
flags that exist, every training line resumes by rerunning it, and its generated sections say what results/ says."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from lib import REPO_ROOT
from lib.kit import readme
from lib.train import main

ROOT = REPO_ROOT


TEXT = (ROOT / "README.md").read_text()


def shell_commands(text: str) -> list[list[str]]:
    """Commands of the README's ```bash blocks: continuation lines joined, comments dropped, split into words."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def python_entry(words: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """(how to start it with this Python, its arguments) for a `python -m M`, `python script.py` or torchrun line."""
    if words[0] == "torchrun":
        at = words.index("-m")
        return ("-m", words[at + 1]), words[at + 2 :]
    if words[0].endswith("python"):
        if words[1] == "-m":
            return ("-m", words[2]), words[3:]
        return (words[1],), words[2:]
    return None


def help_text(entry: tuple[str, ...]) -> str:
    done = subprocess.run([sys.executable, *entry, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"`python {' '.join(entry)} --help` failed:\n{done.stderr[-2000:]}"
    return done.stdout


def test_every_notebook_is_in_the_index() -> None:
    index = TEXT.split("<!-- notebook-index:start -->")[1].split("<!-- notebook-index:end -->")[0]
    for name in readme.notebooks_on_disk():
        assert f"| `{name}` |" in index, f"{name} is missing from the README's notebook index"


def test_generated_sections_match_the_committed_results() -> None:
    assert readme.render(TEXT, ROOT / "results") == TEXT, "run `python -m lib.kit.readme` and commit README.md"


def test_choosing_caches_states_the_measured_boundary_and_the_rule(tmp_path: Path) -> None:
    """The advice comes from the study's rule.json: the boundary, its range, the rule, a row per released config."""
    assert "has not run yet" in readme.choosing_caches(tmp_path)
    folder = tmp_path / "paper" / readme.STUDY
    folder.mkdir(parents=True)
    rule = {"threshold": 1.25, "solver": "midpoint-6", "boundary_v": 130.6, "low_v": 95.0, "high_v": 180.2}
    rule |= {"measured_below_v": 55.7, "measured_above_v": 222.7}
    rule |= {"curves": 3, "crossed": 3, "paper_boundary": [{"solver": "dopri5", "boundary_v": 161.0}]}
    rule["predictions"] = [
        {"config": "cifar10", "epochs": 1000, "v_at_paper_caches": 125.0, "paper_caches": 4, "caches_needed": 4}
        | {"caches_needed_low": 3, "caches_needed_high": 6}
    ]
    (folder / "rule.json").write_text(json.dumps(rule))
    text = readme.choosing_caches(tmp_path)
    assert "V = 131 times per stored noise (range 95-180 over 3 curves of 3, interpolated between runs measured" in text
    assert "at V = 56 and 223)" in text
    assert "caches >= E / (2 x 131)" in text and "| cifar10 | 1000 | 125 | 4 | 4 (3-6) |" in text
    assert "crosses the same 1.25x at dopri5 V = 161" in text
    assert "Notebook 14" not in text  # no capacity model yet: V alone
    model = tmp_path / "paper" / readme.CAPACITY
    model.mkdir(parents=True)
    scores = {"leave_one_run_out_log_loss": 0.2, "leave_one_run_out_accuracy": 0.9}
    held = {"held_out_log_loss": 0.3, "held_out_accuracy": 0.8}
    prospective = [
        {"model": m, "kind": k, **held} for m in ("capacity", "visits alone") for k in ("all", "digits", "mixtures")
    ]
    (model / "capacity_model.json").write_text(
        json.dumps(
            {
                "runs": 31,
                "study_runs": 24,
                "holds_for": ["digits"],
                "domain": {"visits": [1.7, 1781.0], "dim": [64, 64]},
                "cross_validation": [{"model": "capacity", **scores}, {"model": "visits alone", **scores}],
                "prospective": prospective,
            }
        )
    )
    text = readme.choosing_caches(tmp_path)
    assert "to notebook 12's 24 runs" in text and "capacity 0.20 (90% right)" in text
    assert "(digits: capacity 0.30 (80% right), V alone 0.30 (80% right); mixtures:" in text
    assert "it held for digits only" in text and "refit on all 31 runs there (visits 1.7-1.78e+03, dim 64-64)" in text
    (folder / "rule.json").write_text(json.dumps(rule | {"boundary_v": None}))
    assert "found no boundary" in readme.choosing_caches(tmp_path)


def test_every_command_shown_runs_and_its_flags_exist() -> None:
    commands = shell_commands(TEXT)
    assert any(c[:2] == ["make", "test"] for c in commands) and any(c[0] == "torchrun" for c in commands)
    entries = {}
    for words in commands:
        if words[0] == "make":
            target = words[1]
            assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.M), f"no make target {target}"
            continue
        parsed = python_entry(words)
        assert parsed is not None, f"the test does not know how to check `{' '.join(words)}`"
        entry, args = parsed
        entries.setdefault(entry, []).extend(a.split("=")[0] for a in args if a.startswith("--"))
        if words[0] == "torchrun":
            entries.setdefault(("-m", "torch.distributed.run"), []).extend(
                a.split("=")[0] for a in words[1 : words.index("-m")] if a.startswith("--")
            )
    with ThreadPoolExecutor(max_workers=4) as pool:
        helps = dict(zip(entries, pool.map(help_text, entries)))
    for entry, flags in entries.items():
        unknown = sorted({f for f in flags if f not in helps[entry]})
        assert not unknown, f"`{' '.join(entry)}` has no option(s) {unknown}, but the README uses them"


# The README's paths, where the resume test puts its fabricated stand-ins.
PATH_FLAGS = ("--root", "--out", "--init", "--checkpoint")
# --config -> a tiny preset
TINY = {"cifar10": "tiny", "cifar10_reflow": "tiny", "imagenet32": "tiny", "ffhq256_latent": "tiny_latent"}


def fabricate_readme_data(root: Path) -> None:
    """What the README's training lines read, at toy size and in the real formats: CIFAR-10 pickles under data/,
    ImageNet-32 shards made by data_prep/imagenet.py, FFHQ latents with encoded flips."""
    from data_prep import imagenet
    from lib.datasets import write_hdf5_latents
    from lib.fabricate import write_fake_cifar10, write_fake_imagenet

    write_fake_cifar10(root / "data", num_train=8, num_test=2)
    write_fake_imagenet(root / "npz", [6])
    argv = ["--source", str(root / "npz"), "--resolution", "32", "--out", str(root / "data" / "imagenet32")]
    assert imagenet.main(argv) == 0
    latents = torch.randn(8, 4, 8, 8)
    write_hdf5_latents(root / "data" / "ffhq256_latents" / "l.h5", latents, 1.0, attrs={"flipped_copies": True})


def tiny(words: list[str], root: Path) -> list[str]:
    """A README command's arguments with its paths under ``root`` and a toy scale appended (later flags win)."""
    args = python_entry(words)[1]
    args = [str(root / a) if i and args[i - 1] in PATH_FLAGS else a for i, a in enumerate(args)]
    if words[1:2] == ["data_prep/reflow_pairs.py"]:
        return [*args, "--num", "4", "--shard-size", "2", "--solver", "euler-1", "--device", "cpu"]
    scale = ["--steps", "4", "--epochs", "0", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    if "--config" in args:
        scale += ["--model", TINY[args[args.index("--config") + 1]]]
    return [*args, *scale]


def test_every_training_command_resumes_by_rerunning_it(tmp_path: Path, interrupted_training, capsys) -> None:
    """Each README training line, interrupted by Ctrl-C after step 2 of 4 and rerun unchanged, resumes from its
    checkpoint and finishes (torchrun lines run as one process; the reflow line on pairs its data-prep line made)."""
    from data_prep import reflow_pairs
    from lib.checkpoints import read_training_checkpoint

    fabricate_readme_data(tmp_path)
    commands = [w for w in shell_commands(TEXT) if "lib.train" in w or w[1:2] == ["data_prep/reflow_pairs.py"]]
    trained = 0
    for words in commands:
        argv = tiny(words, tmp_path)
        if "lib.train" not in words:
            assert reflow_pairs.main(argv) == 0, capsys.readouterr().err
            continue
        out = Path(argv[argv.index("--out") + 1])
        shutil.rmtree(out, ignore_errors=True)  # two lines share runs/cifar10_loom
        assert interrupted_training(argv, 2) == 130, (words, capsys.readouterr().err[-2000:])
        assert "To resume, rerun the same command." in capsys.readouterr().err
        assert read_training_checkpoint(out / "checkpoint.pt")["global_step"] == 2
        assert main(argv) == 0, (words, capsys.readouterr().err[-2000:])
        assert f"resuming {out / 'checkpoint.pt'} at step 2 of 4" in capsys.readouterr().out
        assert read_training_checkpoint(out / "checkpoint.pt")["global_step"] == 4
        trained += 1
    assert trained == 5  # CIFAR-10 on one GPU and four, ImageNet-32 on two nodes, FFHQ latents, reflow
