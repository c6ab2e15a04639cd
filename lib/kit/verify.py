"""Compare a rerun's results with the committed ones, metric by metric, and say what matched and why not.

Every value in a notebook's CSV and JSON files is one of:

- a **timing** (milliseconds, throughput, memory, ratios of timings, and labels chosen by comparing timings, such
  as which part of a step is largest): reported, never judged;
- an **identifier** (a cache key, a run folder's name: a digest that names code and settings) or a value that says
  where or when a run happened: not compared;
- a **metric** of a kind in :data:`TOLERANCES`: identical, within that kind's stated tolerance, or different;
- anything else (counts, NFE, names, settings): identical or different.

:data:`TOLERANCES` is the one place the tolerances are stated (the README's "What a rerun should give" explains
them). They come from measurements: on one machine every rerun is bit-identical; across CPUs with other vector
instructions (AVX-512 vs AVX2 kernels in torch, MKL and oneDNN) float rounding differs, a trained model drifts a
little and the metrics measured on it move by up to 0.7 % (FID, curvature), far less for metrics of fixed data.
A difference is explained by what differs between the two run.json files: CPU capability, package versions or
settings.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.kit.results import read_table


@dataclass(frozen=True)
class Tolerance:
    """How far a rerun's value may move from the committed one: |a - b| <= absolute + relative * |b|."""

    relative: float
    absolute: float = 0.0
    why: str = ""


# Metric kinds, recognised by a word of the column or key name (names split at "_", "." and "[").
TOLERANCES: dict[str, tuple[frozenset[str], Tolerance]] = {
    "fid": (frozenset({"fid", "difference"}), Tolerance(0.03, 1e-6, "FID of a trained model: 0.67 % seen across CPUs")),
    "curvature": (
        frozenset({"curvature", "straightness"}),
        Tolerance(0.03, 1e-6, "path shape of a trained model: 0.76 % seen across CPUs"),
    ),
    "frechet distance": (frozenset({"fd"}), Tolerance(1e-3, 1e-6, "digits classifier features: 1.7e-6 seen")),
    "w2": (frozenset({"w2"}), Tolerance(1e-3, 1e-6, "exact OT distance of samples of a trained model")),
    "loss": (frozenset({"loss"}), Tolerance(0.03, 1e-6, "training loss: moves with the model")),
    "coordinates": (
        frozenset({"x", "y", "t", "displacement", "length"}),
        Tolerance(0.03, 1e-4, "points on sampling paths of a trained model"),
    ),
    "pairing cost": (
        frozenset({"cost", "gap", "optimum", "concordance"}),
        Tolerance(1e-4, 1e-7, "costs of fixed data and seeds: float32 sums"),
    ),
    "study score": (
        frozenset({"score", "v", "visits"}),
        Tolerance(1e-3, 1e-6, "notebook 12's fd / W2 scores and the V where their ratio crosses: 6e-7 seen"),
    ),
    "sample statistics": (
        frozenset({"clamped", "quantisation"}),
        Tolerance(0.03, 1e-6, "what 8-bit storage changes in a trained teacher's samples: 1.3 % seen across CPUs"),
    ),
    "latent scale": (
        frozenset({"scale", "scaled"}),
        Tolerance(1e-5, 1e-7, "statistics of fixed images' latents: float32 sums, 6e-8 seen"),
    ),
}
# Timings and what is computed from them: reported, never judged.
TIMING_WORDS = frozenset(
    {
        "ms",
        "s",
        "mib",
        "share",
        "over",
        "ratio",
        "exponent",
        "constant",
        "wall",
        "peak",
        "target",
        "crossings",
        "extrapolated",
        "text",
        "throughput",
        "seconds",
    }
)
# Labels picked by comparing timings (notebook 09's dominant_parts[*].part: which part of the step is largest; 02's
# coupling_targets[*].met: whether a measured step ratio met its target): they follow the timings, so they are
# timings too. A name is one when it holds every word of one of these sets.
TIMING_LABELS = (frozenset({"dominant", "part"}), frozenset({"targets", "met"}))
# Identifiers: digests that name a run's settings and code (notebook 12's runs.csv cache_key), not a result. The
# settings they digest are compared in their own columns.
IDENTIFIER_WORDS = frozenset({"key", "digest", "sha256"})
# Values that say where or when a run happened, not what it computed.
# A run folder's name (a teacher's, a checkpoint's) carries a digest of lib's code (lib.experiments.pipeline.keyed):
# it names the code, not a result.
IGNORED_WORDS = frozenset(
    {"git_commit", "library_version", "started", "checkpoint", "teacher", "note", "release_weights"}
)
FILES_IGNORED = ("run.json",)  # compared separately: it explains differences


def _words(name: str) -> set[str]:
    return {w for w in re.split(r"[_.\[\]]+", name.lower()) if w}


@dataclass
class Comparison:
    """The verdicts of one notebook folder: counts per verdict and the differences worth showing."""

    notebook: str
    identical: int = 0
    within: int = 0
    different: list[str] = field(default_factory=list)
    timings: int = 0
    missing: list[str] = field(default_factory=list)  # files one side has and the other has not
    causes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No real difference: every metric identical or within its tolerance, the same files."""
        return not self.different and not self.missing

    @property
    def unchanged(self) -> bool:
        """Bit for bit the same numbers (timings aside): nothing to publish."""
        return self.ok and self.within == 0


def kind_of(name: str, context: str = "") -> str:
    """A column or key name -> "timing", "ignored", a TOLERANCES kind, or "exact"; ``context`` (a JSON file's
    name) decides when the name alone says nothing, e.g. ``one_step_w2.json``'s ``8gaussians.loom``."""
    if name.rsplit(".", 1)[-1] in IGNORED_WORDS or _words(name.rsplit(".", 1)[-1]) & IDENTIFIER_WORDS:
        return "ignored"
    for words in (_words(name), _words(context)):
        if words & TIMING_WORDS or any(label <= words for label in TIMING_LABELS):
            return "timing"
        for kind, (names, _) in TOLERANCES.items():
            if words & names:
                return kind
    return "exact"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if not isinstance(value, bool) else None


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None)


def judge(name: str, new: Any, old: Any, context: str = "") -> str:
    """ "identical", "within", "different", "timing" or "ignored" for one value."""
    kind = kind_of(name, context)
    if kind in ("timing", "ignored"):
        return kind
    if new == old or str(new) == str(old):
        return "identical"
    a, b = _number(new), _number(old)
    if a is None or b is None or kind == "exact" or (_is_integer(new) and _is_integer(old)):
        return "different"  # counts, steps, NFE: an integer is either the same or not
    if math.isnan(a) and math.isnan(b):
        return "identical"
    tolerance = TOLERANCES[kind][1]
    return "within" if abs(a - b) <= tolerance.absolute + tolerance.relative * abs(b) else "different"


def _leaves(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of every leaf of a JSON value."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, data


def _values(path: Path) -> dict[str, tuple[str, str, Any]]:
    """Every value of a CSV (row, column) or JSON (key path) file -> {location: (name, context, value)}. A CSV
    column's name says what it holds; a JSON key may need its file's name."""
    if path.suffix == ".csv":
        rows = enumerate(read_table(path))
        return {f"row {i} {col}": (col, "", value) for i, row in rows for col, value in row.items()}
    return {where: (where, path.stem, value) for where, value in _leaves(json.loads(path.read_text()))}


def compare_folders(new: Path, old: Path, notebook: str) -> Comparison:
    """Judge every value of the CSV and JSON files of a rerun folder ``new`` against the committed ``old``."""
    result = Comparison(notebook)
    files = {p.name for folder in (new, old) for p in folder.glob("*") if p.suffix in (".csv", ".json")}
    for file in sorted(files - set(FILES_IGNORED)):
        if not (new / file).is_file() or not (old / file).is_file():
            result.missing.append(file)
            continue
        mine, theirs = _values(new / file), _values(old / file)
        for where in sorted(set(mine) | set(theirs)):
            if where not in mine or where not in theirs:
                result.different.append(f"{file}: {where} only in the {'rerun' if where in mine else 'committed'}")
                continue
            name, context, value = mine[where]
            verdict = judge(name, value, theirs[where][2], context)
            if verdict == "identical":
                result.identical += 1
            elif verdict == "within":
                result.within += 1
            elif verdict == "timing":
                result.timings += 1
            elif verdict == "different":
                result.different.append(f"{file}: {where} {theirs[where][2]} -> {value}")
    if not result.ok:
        result.causes = likely_causes(new / "run.json", old / "run.json")
    return result


def likely_causes(new_run: Path, old_run: Path) -> list[str]:
    """What differs between two run.json files that can change numbers: CPU capability, versions, settings."""
    if not new_run.is_file() or not old_run.is_file():
        return ["no committed run.json to compare with"]
    new, old = json.loads(new_run.read_text()), json.loads(old_run.read_text())
    causes = []
    capability = [run.get("device", {}).get("torch_cpu_capability", "not recorded") for run in (old, new)]
    if capability[0] != capability[1]:
        causes.append(
            f"CPU capability differs: committed {capability[0]}, rerun {capability[1]} "
            "(rerun with --match-cpu to use the committed one)"
        )
    versions = {
        k: (v, new["versions"].get(k))
        for k, v in old.get("versions", {}).items()
        if new.get("versions", {}).get(k) != v
    }
    if versions:
        causes.append("package versions differ: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in versions.items()))
    settings = {
        k: (v, new["parameters"].get(k))
        for k, v in old.get("parameters", {}).items()
        if k != "RESULTS_DIR" and new.get("parameters", {}).get(k) != v
    }
    if settings:
        causes.append("settings differ: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in settings.items()))
    commits = [run.get("git_commit", "unknown").removesuffix("+dirty") for run in (old, new)]
    if commits[0] != commits[1]:
        causes.append(f"the code differs: committed results made at {commits[0][:12]}, rerun at {commits[1][:12]}")
    return causes or ["same code, CPU capability, versions and settings: a source of nondeterminism (report it)"]


def table(comparisons: list[Comparison]) -> str:
    """A short plain-text table: one line per notebook, then the first differences and their likely causes."""
    lines = [f"{'notebook':28s} {'identical':>9s} {'within tol.':>11s} {'different':>9s} {'timings':>8s}  verdict"]
    for c in comparisons:
        verdict = "unchanged" if c.unchanged else "within tolerance" if c.ok else "DIFFERENT"
        lines.append(
            f"{c.notebook:28s} {c.identical:9d} {c.within:11d} {len(c.different) + len(c.missing):9d} "
            f"{c.timings:8d}  {verdict}"
        )
    for c in comparisons:
        if not c.ok:
            lines.append(
                f"\n{c.notebook}: "
                + "; ".join(c.missing and [f"files only on one side: {c.missing}"] or [])
                + "; ".join(c.different[:5])
                + (f" ... and {len(c.different) - 5} more" if len(c.different) > 5 else "")
            )
            lines += [f"  likely cause: {cause}" for cause in c.causes]
    return "\n".join(lines)
