"""data_prep/ffhq_latents.py on a fabricated face folder with a tiny autoencoder saved by save_pretrained, then
lib.train on the latents and lib.sample / lib.evaluate decoding the samples."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from data_prep import ffhq_latents as prep
from lib import evaluate, sample, train
from lib.autoencoder import encode_mean
from lib.checkpoints import load_autoencoder
from lib.datasets import HDF5Images, uint8_to_unit
from lib.fabricate import tiny_autoencoder, write_fake_faces

NUM, RES = 10, 64  # 10 faces of 64 x 64 -> latents (4, 8, 8), the tiny_latent UNet's size


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, save_pretrained autoencoder folder)."""
    root = tmp_path_factory.mktemp("ffhq")
    write_fake_faces(root / "images" / "00000", NUM, RES, seed=0)  # the official release's subfolder layout
    tiny_autoencoder(seed=0).save_pretrained(root / "ae")
    return root / "images", root / "ae"


def run(faces: tuple[Path, Path], out: Path, *extra: str) -> int:
    images, ae = faces
    return prep.main(
        [
            "--source",
            str(images),
            "--out",
            str(out),
            "--autoencoder",
            str(ae),
            "--resolution",
            str(RES),
            "--batch-size",
            "3",
            "--shard-size",
            "4",
            "--device",
            "cpu",
            *extra,
        ]
    )


def read_shards(out: Path) -> dict[str, tuple[np.ndarray, dict]]:
    shards = {}
    for path in sorted(out.glob("*.h5")):
        with h5py.File(path, "r") as f:
            shards[path.name] = (f["latents"][()], dict(f["latents"].attrs))
    return shards


def test_layout_scale_and_encoded_flips(faces: tuple[Path, Path], tmp_path: Path) -> None:
    assert run(faces, tmp_path / "out") == 0
    shards = read_shards(tmp_path / "out")
    assert list(shards) == [f"ffhq_latents_{k:05d}.h5" for k in range(3)]
    assert [len(z) for z, _ in shards.values()] == [8, 8, 4]  # 4 + 4 + 2 images, each with its flip
    ae = load_autoencoder(faces[1])
    files = prep.image_files(faces[0])
    x = uint8_to_unit(torch.stack([prep.read_image(p, RES) for p in files]))
    latents, flipped = encode_mean(ae, x), encode_mean(ae, x.flip(-1))
    z0, attrs = shards["ffhq_latents_00000.h5"]
    assert attrs["scale"] == pytest.approx(float(latents[:3].std()), rel=1e-6)  # std of the first batch (3 images)
    assert attrs["autoencoder"] == str(faces[1].resolve()) and attrs["flipped_copies"]
    assert all(a["scale"] == attrs["scale"] for _, a in shards.values())
    rows = torch.cat([torch.from_numpy(z) for z, _ in shards.values()])
    originals = torch.cat([rows[0:4], rows[8:12], rows[16:18]])
    flips = torch.cat([rows[4:8], rows[12:16], rows[18:20]])
    assert torch.allclose(originals, latents, atol=1e-5) and torch.allclose(flips, flipped, atol=1e-5)
    assert not torch.allclose(flips, latents.flip(-1), atol=1e-2)  # why flips are encoded, not flipped latents
    data = HDF5Images(tmp_path / "out", flip=False)
    assert len(data) == 2 * NUM and data.image_shape == (4, 8, 8) and data.autoencoder == attrs["autoencoder"]
    assert torch.allclose(data[4][1], rows[4] / attrs["scale"])
    with pytest.raises(ValueError, match="already holds the encoded horizontal flips"):
        HDF5Images(tmp_path / "out", flip=True)


def test_resume_after_interruption_gives_identical_shards(
    faces: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(faces, tmp_path / "straight") == 0
    read, calls = prep.read_image, []

    def interrupted(path: Path, resolution: int) -> torch.Tensor:
        calls.append(path)
        if len(calls) == 7:  # inside shard 1
            raise KeyboardInterrupt
        return read(path, resolution)

    monkeypatch.setattr(prep, "read_image", interrupted)
    assert run(faces, tmp_path / "resumed") == 130  # Ctrl-C: one line, the shell's status for SIGINT
    # no partial file, and the lock is released
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["ffhq_latents_00000.h5", "manifest.json"]
    first = (tmp_path / "resumed" / "ffhq_latents_00000.h5").stat().st_mtime_ns
    monkeypatch.setattr(prep, "read_image", read)
    assert run(faces, tmp_path / "resumed") == 0
    assert (tmp_path / "resumed" / "ffhq_latents_00000.h5").stat().st_mtime_ns == first  # kept, not redone
    straight, resumed = read_shards(tmp_path / "straight"), read_shards(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name, (z, attrs) in straight.items():
        assert np.array_equal(z, resumed[name][0]) and attrs == resumed[name][1]


def test_bad_inputs_name_the_problem(faces: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    assert run(faces, tmp_path / "out", "--no-flips") == 0
    assert run(faces, tmp_path / "out") == 2  # the same folder with flips: other settings
    assert "flipped_copies: False -> True" in capsys.readouterr().err
    broken = tmp_path / "broken"
    write_fake_faces(broken, 2, RES)
    (broken / "00001.png").write_bytes((broken / "00001.png").read_bytes()[:100])  # truncated download
    assert run((broken, faces[1]), tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert f"{broken / '00001.png'} is not a readable image" in err
    assert run((tmp_path / "nowhere", faces[1]), tmp_path / "o") == 2
    assert "is not a folder of FFHQ images" in capsys.readouterr().err


def test_train_sample_and_evaluate_decode_the_latents(faces: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    assert run(faces, tmp_path / "latents") == 0
    argv = [
        "--dataset",
        "hdf5",
        "--root",
        str(tmp_path / "latents"),
        "--model",
        "tiny_latent",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--ema-decay",
        "0.5",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
    ]
    assert train.main([*argv, str(tmp_path / "flipped"), "--flip"]) == 2
    assert "load it with flip=False (lib.train: --no-flip)" in capsys.readouterr().err
    assert train.main([*argv, str(tmp_path / "run")]) == 0
    scale = HDF5Images(tmp_path / "latents", flip=False).scale
    latent = {"autoencoder": str(faces[1].resolve()), "scale": scale}
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["latent"] == latent
    assert json.loads((tmp_path / "run" / "config.json").read_text())["latent"] == latent
    loaded = sample.load_model(tmp_path / "run" / "checkpoint.pt")
    assert loaded.shape == (4, 8, 8) and loaded.decoder is not None and loaded.info["latent_scale"] == scale
    x, _ = next(sample.generate(loaded, 2, "euler-2", seed=3))
    with torch.no_grad():  # decoding = decoder(sample * scale), the inverse of training on latents / scale
        want = load_autoencoder(faces[1]).decode(x * scale).sample.clamp(-1, 1)
    assert torch.allclose(sample.to_images(loaded, x), want, atol=1e-5)
    assert (
        sample.main(
            [
                "--checkpoint",
                str(tmp_path / "run" / "checkpoint.pt"),
                "--num",
                "4",
                "--solver",
                "euler-2",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "samples.pt"),
            ]
        )
        == 0
    )
    images = torch.load(tmp_path / "samples.pt")
    assert images.shape == (4, 3, RES, RES) and images.min() >= -1 and images.max() <= 1
    assert (
        evaluate.main(
            [
                "--checkpoint",
                str(tmp_path / "run" / "checkpoint.pt"),
                "--solvers",
                "midpoint-1",
                "--num-samples",
                "8",
                "--batch-size",
                "4",
                "--reference",
                str(faces[0] / "00000"),
                "--features",
                "random",
                "--dataset-res",
                str(RES),
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "fid.json"),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "fid.json").read_text())
    assert rows[0]["nfe"] == 2 and rows[0]["fid"] >= 0 and rows[0]["autoencoder"] == latent["autoencoder"]
