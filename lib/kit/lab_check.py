"""Check notebooks as a reader does: JupyterLab in headless Chromium, Run All, look at what is shown (make lab-check).

    python -m lib.kit.lab_check 01 03          # names or number prefixes (default: 01 03)

For each notebook: start JupyterLab on a free localhost port (token, no browser, this checkout's ``lib`` first on
the kernels' path, no $LOOM_RESULTS: the notebook writes where a reader's run would), open the notebook in Debian's
Chromium driven by Playwright's Python package (``pip install -e '.[lab]'``; no ``playwright install``), run all
cells from the Run menu, wait until no cell is running and the kernel is idle, then count what the page shows:
figures (rendered images), widgets (ipywidgets views), error and stderr outputs (warnings among them). Screenshots
(the top of the notebook and one per scrolled screen) go to ``results/quick/lab_check/<notebook>/`` with
``counts.json`` (run.json beside them). The notebook is saved from Lab (as its autosave would; the server strips it
on save as ``make lab``'s does, lib.kit.notebooks.strip_on_save) and the kernel shut down; git status must then show
no change outside that folder. The notebook file is put back byte for byte afterwards whatever happened.

Fails (exit status 1, one line per problem) on: a cell not executed, an error output, warning text on stderr, an
image that did not load, a widget that did not render, or a change git sees.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib import REPO_ROOT, cli, files
from lib.kit import results
from lib.kit.notebooks import SAVE_HOOK
from lib.kit.profiles import load_profile
from lib.kit.reproduce import select

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT_FOLDER = "lab_check"  # under <results>/quick/
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
STDERR_MIME = "application/vnd.jupyter.stderr"  # Lab renders stderr streams and error tracebacks with it
WARNING = re.compile(r"\b\w*Warning\b|\bwarning:", re.IGNORECASE)
# JupyterLab settings for a quiet, countable page: no news or update toasts over the notebook, the notebook's kernel
# started without asking, every cell kept in the DOM (windowing off) so that figures and widgets below the fold count.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
        "autoStartDefaultKernel": True,
    },
}
VIEWPORT = {"width": 1400, "height": 1000}
MAX_SCREENS = 40  # scrolled screenshots per notebook at most


@dataclass
class Counts:
    """What the page showed after Run All, and what the notebook open in it holds (Lab's model of it)."""

    notebook: str
    seconds: float  # from Run All to idle
    code_cells: int
    executed_cells: int  # with an execution count
    figures: int  # rendered <img> in output areas
    figures_saved: int  # image/png outputs in the notebook
    images_not_loaded: int
    widget_outputs: int  # outputs rendered as an ipywidgets view
    widget_elements: int  # .jupyter-widgets / .widget-* elements (controls, boxes, progress bars)
    widget_errors: list[str]
    errors: list[str]  # error outputs (ename: evalue)
    warnings: list[str]  # stderr text that names a warning
    stderr: list[str]  # other stderr text (first line each)
    screenshots: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """One line per thing a reader would call broken."""
        found = [f"{self.notebook}: error output {e}" for e in self.errors]
        found += [f"{self.notebook}: warning on stderr: {w}" for w in self.warnings]
        found += [f"{self.notebook}: widget did not render: {w}" for w in self.widget_errors]
        if self.executed_cells < self.code_cells:
            found.append(f"{self.notebook}: {self.code_cells - self.executed_cells} of {self.code_cells} cells not run")
        if self.images_not_loaded:
            found.append(f"{self.notebook}: {self.images_not_loaded} image(s) did not load")
        if self.figures < self.figures_saved:
            found.append(f"{self.notebook}: {self.figures_saved} figures in the notebook, {self.figures} shown")
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(settings_dir: Path) -> Any:
    """A JupyterLab server on a free localhost port serving the repository -> (base url, token); stopped on exit."""
    for name, values in LAB_SETTINGS.items():
        files.write_json(settings_dir / "settings" / name, values)
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "LOOM_RESULTS"}  # write where a reader's run would
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env["JUPYTER_CONFIG_DIR"] = str(settings_dir / "config")  # none of the user's own Jupyter settings
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={REPO_ROOT}",
        f"--LabApp.user_settings_dir={settings_dir / 'settings'}",
        f"--LabApp.workspaces_dir={settings_dir / 'workspaces'}",
        "--LabApp.extension_manager=readonly",  # no package index queried
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the open notebook's outputs, as Lab holds them
        f"--ContentsManager.pre_save_hook={SAVE_HOOK}",  # as make lab: notebooks saved as committed
        *(["--allow-root"] if os.geteuid() == 0 else []),  # containers, CI
    ]
    log = files.open_log(settings_dir / "server.log")  # closed below, after the server
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, token, server, settings_dir / "server.log")
        yield url, token
    finally:
        shut_down_kernels(url, token)
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def api(url: str, token: str, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(f"{url}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def wait_for_server(url: str, token: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            api(url, token, "/api/status")
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def shut_down_kernels(url: str, token: str) -> None:
    """Shut every kernel down through the server (a shutdown request: the kernel exits and runs its exit hooks)."""
    try:
        for kernel in api(url, token, "/api/kernels"):
            api(url, token, f"/api/kernels/{kernel['id']}", method="DELETE")
    except OSError:
        pass  # the server is gone already; it took its kernels with it


def git_state() -> dict[str, str]:
    """{path: what git would store for it (filters applied), or '' for a deleted one} of every changed path."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    paths = [entry[3:] for entry in status.split("\0") if entry]
    state = {}
    for path in paths:
        if (REPO_ROOT / path).is_file():
            state[path] = subprocess.run(
                ["git", "hash-object", "--path", path, path], cwd=REPO_ROOT, capture_output=True, text=True
            ).stdout.strip()
        else:
            state[path] = ""
    return state


def changes(before: dict[str, str], after: dict[str, str], ignored: tuple[str, ...]) -> list[str]:
    """Paths whose state in git's eyes differs between two :func:`git_state` calls, outside ``ignored`` folders."""
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p) and not p.startswith(ignored))


def git_diff(paths: list[str], lines: int = 80) -> str:
    """The start of what git sees changed in ``paths`` (the filter applied), to say why a check failed."""
    if not paths:
        return ""
    text = subprocess.run(["git", "diff", "--", *paths], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    return "\n".join(text.splitlines()[:lines])


PAGE_COUNTS = r"""(widgetMime) => {
  const outputs = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')];
  const imgs = outputs.flatMap(o => [...o.querySelectorAll('img')]);
  const widgets = outputs.filter(o => o.dataset.mimeType === widgetMime || o.querySelector('.jupyter-widgets'));
  return {
    figures: imgs.length,
    images_not_loaded: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
    widget_outputs: widgets.length,
    widget_elements: widgets.reduce((n, o) => n + o.querySelectorAll('.jupyter-widgets, [class*="widget-"]').length, 0),
    widget_errors: widgets.filter(o => /Error displaying widget|Loading widget/.test(o.textContent))
                          .map(o => o.textContent.slice(0, 120)),
    running: [...document.querySelectorAll('.jp-InputPrompt')].filter(p => p.textContent.includes('[*]')).length,
    executed: [...document.querySelectorAll('.jp-InputPrompt')].filter(p => /\[\d+\]/.test(p.textContent)).length,
    kernel: (document.querySelector('.jp-Notebook-ExecutionIndicator') || {dataset: {}}).dataset.status || '',
  };
}"""


def kernel_ready(url: str, token: str, name: str) -> bool:
    """True once the server has a session for the notebook whose kernel is idle with the page connected to it.
    (Lab's own indicator reads idle before the kernel has started; Run All then runs nothing.)"""
    sessions = api(url, token, "/api/sessions")
    return any(
        s["path"].endswith(f"{name}.ipynb")
        and s["kernel"]["execution_state"] == "idle"
        and s["kernel"].get("connections", 0) > 0
        for s in sessions
    )


def run_all_and_wait(page: Any, url: str, token: str, name: str, timeout: float) -> float:
    """Run All Cells from the Run menu once the kernel is up; wait until no cell shows [*] and the kernel is idle
    -> seconds it took."""
    select_kernel = page.locator(".jp-Dialog .jp-mod-accept", has_text="Select")
    for _ in range(240):  # the kernel starts (up to two minutes on a loaded machine)
        if select_kernel.count():  # Lab asks which kernel: accept the one the notebook names, as a reader would
            select_kernel.click()
        if kernel_ready(url, token, name):
            break
        page.wait_for_timeout(500)
    else:
        raise TimeoutError("the notebook's kernel did not start within two minutes")
    started = time.time()
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    idle_polls = 0
    while time.time() - started < timeout:
        page.wait_for_timeout(1000)
        state = page.evaluate(PAGE_COUNTS, WIDGET_MIME)
        if state["running"] + state["executed"] == 0 and time.time() - started > 30:
            raise RuntimeError("Run All Cells ran nothing within 30 s")
        idle_polls = idle_polls + 1 if state["executed"] and not state["running"] and state["kernel"] == "idle" else 0
        if idle_polls >= 3:  # idle for three seconds in a row: not a gap between two cells
            return time.time() - started
    raise TimeoutError(f"cells still running after {timeout:.0f} s")


def screenshots(page: Any, folder: Path) -> list[str]:
    """``screen_NN.png``: the notebook from the top, one screen at a time (its panel scrolls, not the page); then
    ``whole.png``: the whole notebook in one picture (the window made as tall as the notebook) -> the file names."""
    scroller = page.evaluate_handle(
        """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) *')]
                 .find(e => e.scrollHeight > e.clientHeight + 10 && getComputedStyle(e).overflowY !== 'visible')"""
    )
    page.evaluate("(e) => { if (e) e.scrollTop = 0; }", scroller)
    written = []
    for screen in range(MAX_SCREENS):
        written.append(f"screen_{screen:02d}.png")
        page.wait_for_timeout(300)
        page.screenshot(path=str(folder / written[-1]))
        moved = page.evaluate(
            "(e) => { if (!e) return false; const top = e.scrollTop; e.scrollTop = top + e.clientHeight * 0.9;"
            " return e.scrollTop > top; }",
            scroller,
        )
        if not moved:
            break
    height = page.evaluate("(e) => e ? e.scrollHeight : 0", scroller)
    page.evaluate("(e) => { if (e) e.scrollTop = 0; }", scroller)
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(max(height + 200, VIEWPORT["height"]), 30_000)})
    page.wait_for_timeout(1000)
    page.screenshot(path=str(folder / "whole.png"))
    page.set_viewport_size(VIEWPORT)
    return [*written, "whole.png"]


def notebook_counts(nb: dict[str, Any]) -> dict[str, Any]:
    """What a notebook (JSON) holds after Run All: executed cells, figures, errors, stderr text (warnings apart)."""
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    outputs = [o for c in code for o in c.get("outputs", [])]
    stderr = ["".join(o["text"]).strip() for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr"]
    return {
        "code_cells": len(code),
        "executed_cells": sum(c.get("execution_count") is not None for c in code),
        "figures_saved": sum("image/png" in o.get("data", {}) for o in outputs),
        "errors": [f"{o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"],
        "warnings": [line for text in stderr for line in text.splitlines() if WARNING.search(line)],
        "stderr": [text.splitlines()[0][:160] for text in stderr if text and not WARNING.search(text)],
    }


def check_notebook(browser: Any, url: str, token: str, name: str, folder: Path, timeout: float) -> Counts:
    """Open ``name`` in a fresh page, Run All, count, screenshot into ``folder``, save from Lab, close."""
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{url}/lab/tree/notebooks/{name}.ipynb?token={token}")
        page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=120_000)
        seconds = run_all_and_wait(page, url, token, name, timeout)
        page.wait_for_timeout(1000)  # images decode
        shown = page.evaluate(PAGE_COUNTS, WIDGET_MIME)
        held = notebook_counts(page.evaluate("() => window.jupyterapp.shell.currentWidget.context.model.toJSON()"))
        folder.mkdir(parents=True, exist_ok=True)
        shots = screenshots(page, folder)
        page.keyboard.press("Control+s")  # as Lab's autosave would: outputs and kernel metadata into the file
        page.wait_for_function(
            "() => !document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-mod-dirty')", timeout=60_000
        )
        page.wait_for_timeout(1000)
    finally:
        page.close()
    return Counts(
        notebook=name,
        seconds=round(seconds, 1),
        figures=shown["figures"],
        images_not_loaded=shown["images_not_loaded"],
        widget_outputs=shown["widget_outputs"],
        widget_elements=shown["widget_elements"],
        widget_errors=shown["widget_errors"],
        screenshots=shots,
        **held,
    )


def lab_check(names: list[str], timeout: float) -> int:
    """Check every notebook of ``names`` in one JupyterLab -> exit status (0: nothing wrong)."""
    from playwright.sync_api import sync_playwright  # the optional `lab` extra: only this command needs it

    run = results.start_run(
        OUTPUT_FOLDER,
        {"NOTEBOOKS": names, "RESULTS_DIR": str(results.published_root()), "TIMEOUT_S": timeout},
        profile="quick",
    )
    ignored = tuple(f"{results.portable(str(p), run.base)}/" for p in (run.directory, run.staging))  # its output
    notebooks = {name: REPO_ROOT / "notebooks" / f"{name}.ipynb" for name in names}
    originals = {name: path.read_bytes() for name, path in notebooks.items()}
    before = git_state()
    checked: list[Counts] = []
    started = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="loom-lab-") as scratch, jupyterlab(Path(scratch)) as (url, token):
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
                try:
                    for name in names:
                        print(f"{name}: Run All in JupyterLab ...", flush=True)
                        checked.append(check_notebook(browser, url, token, name, run.staging / name, timeout))
                finally:
                    browser.close()
        # The kernels are shut down: what they wrote and what Lab saved is on disk. Git must see no change.
        changed = changes(before, git_state(), ignored)
        diff = git_diff(changed)
        rewritten = [
            str(path.relative_to(REPO_ROOT)) for name, path in notebooks.items() if path.read_bytes() != originals[name]
        ]
    finally:
        for name, path in notebooks.items():
            if path.read_bytes() != originals[name]:
                files.atomic_write(path, lambda tmp, name=name: tmp.write_bytes(originals[name]))  # as it was
    for counts in checked:
        run.files += [f"{counts.notebook}/{shot}" for shot in counts.screenshots]
        run.write_json(f"{counts.notebook}/counts", asdict(counts))
    wall = round(time.time() - started, 1)
    run.write_json(
        "summary",
        {
            "wall_time_s": wall,
            "notebooks": names,
            "rewritten_on_save": rewritten,
            "git_changes": changed,
            "git_diff": diff,
        },
    )
    run.finish()
    problems = [p for c in checked for p in c.problems()] + [f"git sees a change: {path}" for path in changed]
    problems += [f"saving from Lab rewrote {path} (make lab's pre-save hook keeps its bytes)" for path in rewritten]
    for c in checked:
        print(
            f"{c.notebook}: {c.seconds:.0f} s, {c.executed_cells}/{c.code_cells} cells, {c.figures} figures shown "
            f"({c.figures_saved} in the notebook), {c.widget_outputs} widget outputs ({c.widget_elements} elements), "
            f"{len(c.errors)} errors, {len(c.warnings)} warnings, {len(c.stderr)} other stderr outputs, "
            f"{len(c.screenshots)} screenshots"
        )
    print(f"{len(names)} notebook(s) in {wall:.0f} s; screenshots in {results.portable(str(run.directory))}/")
    if diff:
        print(diff)
    print("\n".join(problems) if problems else f"lab-check passed: git status unchanged outside {ignored[0]}")
    return 1 if problems else 0


def lab_check_command(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # killed: still restore the notebooks, stop the server
    parser = cli.parser("python -m lib.kit.lab_check", __doc__)
    parser.add_argument("notebooks", nargs="*", default=["01", "03"], help="names or number prefixes (default 01 03)")
    parser.add_argument("--timeout", type=cli.finite_float, default=1200.0, help="seconds per notebook's Run All")
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        raise FileNotFoundError(f"no Chromium at {CHROMIUM}: install it with `sudo apt-get install chromium`")
    if shutil.which("git") is None:
        raise FileNotFoundError("lab-check compares git status before and after: git is not on PATH")
    names = list(select(load_profile("quick"), args.notebooks))
    return lab_check(names, args.timeout)


def main(argv: list[str] | None = None) -> int:
    return cli.run(lab_check_command, argv)


if __name__ == "__main__":
    sys.exit(main())
