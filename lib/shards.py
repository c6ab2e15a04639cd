"""The manifest of a folder of HDF5 shards: what made them, with which settings, and each shard's size and checksum.

Data prep (data_prep/imagenet.py, ffhq_latents.py, reflow_pairs.py) writes ``<folder>/manifest.json`` through a
:class:`ShardFolder`; lib.datasets.HDF5Images checks it on every load (:func:`verify_folder`)::

    {"format": "loom-kit-shards-v1", "made_by": "data_prep/imagenet.py", "settings": {...}, "complete": true,
     "shards": {"imagenet32_train_00000.h5": {"bytes": 307200800, "examples": 100000, "sha256": "..."}}}

- A rerun with the same settings resumes: shards the manifest lists (with their size) are kept, the rest are made.
  A rerun with other settings is refused with the differences, unless ``--overwrite``, which deletes the folder's
  shards and manifest and starts over. Shards without a manifest (an older kit, another tool) are refused the same
  way, so two runs never mix.
- The cheap check (the default for readers, milliseconds): the run finished, exactly the listed shards are there,
  each with its recorded byte size and example count. It catches missing, extra, truncated or grown shards, an
  unfinished run and a shard from another run; it cannot see bytes overwritten in place (same size, header intact).
- The full check (``verify="full"``, ``lib.train --verify-data``): the SHA-256 of every shard, which catches that too.
  Either check names the shard that fails.
- Every shard a :class:`ShardFolder` records carries the HDF5 file attribute ``made_by`` (the script). A folder whose
  shards say they were made by data prep but whose manifest is gone is refused by both checks: without the manifest
  nothing can tell whether shards are missing. The fix is to rerun the script (``--overwrite`` rebuilds the folder);
  ``verify="none"`` reads the shards as they are. Hand-made shards (no ``made_by``) without a manifest read as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from lib.files import remove_stale_temps, sha256_file, write_json

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "loom-kit-shards-v1"
MADE_BY_ATTR = "made_by"  # HDF5 file attribute of every shard a ShardFolder records: the data-prep script
Verify = Literal["none", "cheap", "full"]
VERIFY_LEVELS = ("none", "cheap", "full")


class ShardCheckFailed(ValueError):
    """A shard folder does not match its manifest (or a rerun's settings); the message names the shard and the fix."""


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``<folder>/manifest.json`` -> its dict, or None if there is none; an unreadable one raises ShardCheckFailed."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ShardCheckFailed(f"{path} is not readable JSON ({err}); rerun the data prep with --overwrite") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ShardCheckFailed(f"{path} is not a shard manifest of this kit; rerun the data prep with --overwrite")
    return manifest


def source_fingerprint(files: Iterable[Path], root: Path) -> str:
    """SHA-256 over the sorted relative paths and byte sizes of a data prep's source files: a source that gained,
    lost, renamed or resized a file is another source (cheap: one stat per file, no reading)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``name: saved -> now`` for every setting that differs."""
    return [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if json.dumps(saved.get(k)) != json.dumps(now.get(k))  # tuples and lists alike, as stored
    ]


class ShardFolder:
    """A data-prep output folder and its manifest, for one run of one script (hold the folder's lib.files.FolderLock).

    ``ShardFolder(out, made_by, settings, pattern, overwrite)`` refuses a folder made with other settings (or shards
    without a manifest) unless ``overwrite``, which deletes them first. Then, per shard: :meth:`done` (kept from an
    earlier run?), write it atomically, :meth:`record` it; :meth:`finish` marks the run complete.
    """

    def __init__(
        self, out: Path, made_by: str, settings: Mapping[str, Any], pattern: str, overwrite: bool = False
    ) -> None:
        self.out, self.pattern = Path(out), pattern
        self.settings = json.loads(json.dumps(dict(settings)))  # as it will read back: lists, plain types
        self.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.out)
        if overwrite:
            self._clear()
        manifest = read_manifest(self.out)
        if manifest is None:
            self._refuse_unlisted()
        if manifest is None or not manifest["shards"]:  # nothing finished yet: nothing to mix with
            manifest = {"format": MANIFEST_FORMAT, "made_by": made_by, "settings": self.settings, "shards": {}}
        changed = differences(manifest["settings"], self.settings)
        if changed:
            raise ShardCheckFailed(
                f"{self.out} holds {len(manifest['shards'])} shard(s) made with other settings ({'; '.join(changed)}). "
                "Rerun with the same settings to resume, pass --overwrite to delete them and start over, or use "
                "another --out"
            )
        self.manifest = {**manifest, "complete": False}
        self._drop_unverifiable()
        self._save()

    def done(self, path: Path) -> bool:
        """True if ``path`` was finished by an earlier run with these settings (listed, size as recorded)."""
        return path.name in self.manifest["shards"]

    def record(self, path: Path, examples: int) -> None:
        """Mark a shard just written (atomically) as this script's (:data:`MADE_BY_ATTR`), then list it with its
        size, example count and checksum. A kill while marking leaves an unlisted shard, which a rerun remakes."""
        import h5py  # only data prep records shards

        with h5py.File(path, "r+") as f:
            f.attrs[MADE_BY_ATTR] = self.manifest["made_by"]
        self.manifest["shards"][path.name] = {
            "bytes": path.stat().st_size,
            "examples": int(examples),
            "sha256": sha256_file(path),
        }
        self._save()

    def finish(self, paths: Iterable[Path]) -> None:
        """Mark the run complete; ``paths`` must be exactly the listed shards."""
        names = sorted(p.name for p in paths)
        if names != sorted(self.manifest["shards"]):
            raise ShardCheckFailed(
                f"{self.out}: finished with shards {names}, manifest lists {self.manifest['shards']}"
            )
        self.manifest["complete"] = True
        self._save()

    def _save(self) -> None:
        write_json(self.out / MANIFEST_NAME, self.manifest)

    def _clear(self) -> None:
        """--overwrite: the shards of this script and the manifest go; other files in the folder stay."""
        for shard in self.out.glob(self.pattern):
            shard.unlink()
        (self.out / MANIFEST_NAME).unlink(missing_ok=True)

    def _refuse_unlisted(self) -> None:
        found = sorted(p.name for p in self.out.glob(self.pattern))
        if found:
            raise ShardCheckFailed(
                f"{self.out} holds {len(found)} shard(s) ({found[0]} ...) but no {MANIFEST_NAME}, so their settings "
                "are unknown: pass --overwrite to delete them and start over, or use another --out"
            )

    def _drop_unverifiable(self) -> None:
        """Resume only from shards as recorded: a listed shard that is missing or of another size is made again, and a
        shard on disk but not listed (written, then killed before the manifest was) is deleted and made again."""
        shards = self.manifest["shards"]
        for name in list(shards):
            path = self.out / name
            if not path.is_file() or path.stat().st_size != shards[name]["bytes"]:
                if path.is_file():
                    _say_deleted(path, f"it is not the {shards[name]['bytes']:,} bytes {MANIFEST_NAME} records")
                del shards[name]
                path.unlink(missing_ok=True)
        for path in self.out.glob(self.pattern):
            if path.name not in shards:
                _say_deleted(path, f"{MANIFEST_NAME} does not list it (a run killed before listing it, or a copy)")
                path.unlink()


def _say_deleted(path: Path, why: str) -> None:
    """A rerun deletes a shard it cannot vouch for (to make it again): never silently."""
    print(f"deleting {path}: {why}; it will be made again", file=sys.stderr, flush=True)


def _made_by(shards: list[Path]) -> str | None:
    """The data-prep script the shards' :data:`MADE_BY_ATTR` names (None for shards made by hand)."""
    import h5py

    for path in shards:
        with h5py.File(path, "r") as f:
            made_by = f.attrs.get(MADE_BY_ATTR)
        if made_by is not None:
            return str(made_by)
    return None


def verify_folder(folder: Path, shards: list[Path], examples: Mapping[Path, int], level: Verify = "cheap") -> bool:
    """Check the shards an HDF5 reader is about to use against ``folder``'s manifest -> whether there was one.

    shards: the ``*.h5`` files found; examples: each one's example count as read from its header. ``cheap``: finished
    run, same set of shards, byte sizes and counts as recorded; ``full``: also every SHA-256. Raises ShardCheckFailed
    naming the shard. No manifest: nothing to check (hand-made files), except that ``full`` refuses.
    """
    if level not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {level!r}")
    if level == "none":
        return False
    manifest = read_manifest(folder)
    if manifest is None:
        made_by = _made_by(shards)
        if made_by is not None:
            raise ShardCheckFailed(
                f"{folder} has no {MANIFEST_NAME} but its {len(shards)} shard(s) were made by {made_by}, which writes "
                f"one: without it missing shards cannot be detected. Fix: rerun {made_by} with --overwrite to rebuild "
                "the folder (in Python, HDF5Images(..., verify='none') reads the shards as they are)"
            )
        if level == "full":
            raise ShardCheckFailed(f"{folder} has no {MANIFEST_NAME}: there are no checksums to verify its shards by")
        return False
    fix = f"rerun {manifest.get('made_by', 'the data prep')} with the same settings (it remakes what is missing)"
    if not manifest.get("complete"):
        raise ShardCheckFailed(
            f"{folder} is an unfinished data prep ({len(manifest['shards'])} shard(s) so far): {fix}"
        )
    listed, found = set(manifest["shards"]), {p.name for p in shards}
    if listed != found:
        raise ShardCheckFailed(
            f"{folder}: shards missing {sorted(listed - found)}, not in the manifest {sorted(found - listed)}; {fix}"
        )
    for path in shards:
        entry = manifest["shards"][path.name]
        size = path.stat().st_size
        if size != entry["bytes"] or examples[path] != entry["examples"]:
            raise ShardCheckFailed(
                f"{path} has {size:,} bytes and {examples[path]} examples, its manifest says {entry['bytes']:,} and "
                f"{entry['examples']}: the shard was changed or damaged; delete it and {fix}"
            )
        if level == "full" and sha256_file(path) != entry["sha256"]:
            raise ShardCheckFailed(
                f"{path} fails its SHA-256 check (its bytes changed since it was written): delete it and {fix}"
            )
    return True
