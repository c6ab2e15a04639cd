"""lib.shards: a data-prep folder's manifest keeps reruns from mixing settings and resumes only from shards as
recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lib.datasets import HDF5Images, write_hdf5_images
from lib.shards import MANIFEST_NAME, ShardCheckFailed, ShardFolder

SETTINGS = {"source": "/data/x", "shard_size": 4}


def write(folder: ShardFolder, k: int, n: int = 4) -> Path:
    path = write_hdf5_images(folder.out / f"s_{k:05d}.h5", torch.full((n, 1, 2, 2), k, dtype=torch.uint8))
    folder.record(path, n)
    return path


def test_resume_keeps_recorded_shards_and_remakes_the_rest(tmp_path: Path) -> None:
    folder = ShardFolder(tmp_path, "test", SETTINGS, "s_*.h5")
    first = write(folder, 0)
    # killed after shard 1 was renamed into place but before the manifest listed it:
    write_hdf5_images(tmp_path / "s_00001.h5", torch.zeros(4, 1, 2, 2, dtype=torch.uint8))
    again = ShardFolder(tmp_path, "test", SETTINGS, "s_*.h5")
    assert again.done(first) and not again.done(tmp_path / "s_00001.h5")
    assert not (tmp_path / "s_00001.h5").exists()  # unlisted: removed, to be made again
    paths = [first, write(again, 1), write(again, 2, n=3)]
    with pytest.raises(ShardCheckFailed, match="finished with shards"):
        again.finish(paths[:2])
    again.finish(paths)
    assert len(HDF5Images(tmp_path, flip=False, verify="full")) == 11


def test_shards_without_a_manifest_are_refused_until_overwrite(tmp_path: Path) -> None:
    write_hdf5_images(tmp_path / "s_00000.h5", torch.zeros(4, 1, 2, 2, dtype=torch.uint8))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ShardCheckFailed, match=r"holds 1 shard\(s\) \(s_00000.h5 ...\) but no manifest.json"):
        ShardFolder(tmp_path, "test", SETTINGS, "s_*.h5")
    ShardFolder(tmp_path, "test", SETTINGS, "s_*.h5", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME, "notes.txt"]  # only its own files went
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["settings"] == SETTINGS and manifest["shards"] == {} and manifest["complete"] is False


def test_a_folder_without_a_manifest_reads_as_is_but_full_verification_refuses(tmp_path: Path) -> None:
    write_hdf5_images(tmp_path / "a.h5", torch.zeros(4, 1, 2, 2, dtype=torch.uint8))
    assert len(HDF5Images(tmp_path, flip=False)) == 4
    with pytest.raises(ShardCheckFailed, match="no manifest.json: there are no checksums"):
        HDF5Images(tmp_path, flip=False, verify="full")
    with pytest.raises(ValueError, match="verify must be one of"):
        HDF5Images(tmp_path, flip=False, verify="sometimes")
