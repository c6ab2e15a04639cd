"""The README keeps its promises: every notebook is in its index, every command it shows runs (--help) with
flags that exist, and its generated sections say what results/ says."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from lib import REPO_ROOT
from lib.kit import readme

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
