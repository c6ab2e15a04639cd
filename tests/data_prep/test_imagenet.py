"""data_prep/imagenet.py on fabricated inputs in the official formats: npz batches and an ImageFolder tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_prep import imagenet as prep
from lib.datasets import HDF5Images
from lib.fabricate import write_fake_imagenet


def test_npz_batches_become_shards_in_order_and_resume(tmp_path: Path) -> None:
    images, labels = write_fake_imagenet(tmp_path / "src", [7, 5, 9, 3, 2, 2, 2, 2, 2, 4])  # batch_10 sorts last
    argv = [
        "--source",
        str(tmp_path / "src"),
        "--resolution",
        "32",
        "--out",
        str(tmp_path / "out"),
        "--shard-size",
        "10",
    ]
    assert prep.main(argv) == 0
    shards = sorted((tmp_path / "out" / "train").glob("*.h5"))
    assert [p.name for p in shards] == [f"imagenet32_train_{k:05d}.h5" for k in range(4)]
    data = HDF5Images(tmp_path / "out" / "train", flip=False)
    index, x = data.get_batch(torch.arange(len(data)))
    assert len(data) == 38 and torch.equal(((x + 1) * 127.5).round().to(torch.uint8), torch.from_numpy(images))
    assert torch.equal(data.example_labels(index), torch.from_numpy(labels))
    shards[1].unlink()  # an interrupted run: the missing shard is written again, the others are kept
    before = shards[0].stat().st_mtime_ns
    assert prep.main(argv) == 0
    assert shards[1].exists() and shards[0].stat().st_mtime_ns == before


def test_fabricated_batches_have_the_official_keys_and_a_val_split(tmp_path: Path) -> None:
    images, labels = write_fake_imagenet(tmp_path / "src", [4, 3], num_val=5, resolution=64, seed=1)
    assert images.shape == (7, 3, 64, 64) and images.dtype == np.uint8 and labels.min() >= 0 and labels.max() < 1000
    with np.load(tmp_path / "src" / "train_data_batch_2.npz") as batch:
        assert set(batch.files) == {"data", "labels", "mean"} and batch["data"].shape == (3, 3 * 64 * 64)
        assert np.array_equal(batch["labels"] - 1, labels[4:])
    assert images.std() > 10  # colour blobs, not a constant
    argv = ["--source", str(tmp_path / "src"), "--resolution", "64", "--out", str(tmp_path / "out")]
    assert prep.main([*argv, "--split", "val"]) == 0
    assert len(HDF5Images(tmp_path / "out" / "val", flip=False)) == 5
    with np.load(tmp_path / "src" / "val_data.npz") as val:
        assert set(val.files) == {"data", "labels"}


def test_image_folder_source(tmp_path: Path) -> None:
    for label in ("n01", "n02"):
        (tmp_path / "src" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (80, 70), (30 * i, 50, 90)).save(tmp_path / "src" / label / f"{i}.JPEG")
    assert prep.main(["--source", str(tmp_path / "src"), "--resolution", "64", "--out", str(tmp_path / "out")]) == 0
    data = HDF5Images(tmp_path / "out" / "train", flip=False)
    assert len(data) == 6 and data.image_shape == (3, 64, 64)


def test_bad_inputs_name_the_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train_data_batch_1.npz").write_bytes(b"not a zip")
    assert prep.main(["--source", str(tmp_path / "src"), "--resolution", "32", "--out", str(tmp_path / "o")]) == 2
    assert "train_data_batch_1.npz is not a downsampled-ImageNet batch" in capsys.readouterr().err
    write_fake_imagenet(tmp_path / "src64", [3], resolution=64)
    assert prep.main(["--source", str(tmp_path / "src64"), "--resolution", "32", "--out", str(tmp_path / "o")]) == 2
    assert "is it the 32x32 release" in capsys.readouterr().err
    assert prep.main(["--source", str(tmp_path / "nowhere"), "--resolution", "32", "--out", str(tmp_path / "o")]) == 2
