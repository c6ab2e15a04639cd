"""Stand-ins the kit fabricates for CPU runs and tests, in the real on-disk formats.

Nothing here is real data or a real model: CIFAR-10 pickles, downsampled-ImageNet ``.npz`` batches and FFHQ-like
PNGs of smooth random images, a tiny random kl-f8-shaped autoencoder, and fake releases (tiny random weights in the
released checkpoint layout, in a Hugging Face cache folder). They let every loader, data-prep script and notebook
run end to end offline; numbers made from them test the pipeline and are never compared with the paper.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import save_image

from lib.autoencoder import LDMLayout, build_autoencoder, diffusers_config, diffusers_to_ldm
from lib.checkpoints import check_release_name
from lib.datasets import CIFAR10_CLASSES, CIFAR10_FOLDER, CIFAR10_META_FILE, CIFAR10_TEST_FILES, CIFAR10_TRAIN_FILES
from lib.paper import RELEASED_PRESETS
from lib.unet import PRESETS, build_unet

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------------------------------------
# Datasets in their official formats
# ---------------------------------------------------------------------------------------------------------
def fabricate_cifar10(root: Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """A small CIFAR-10 in the official on-disk format under ``root`` -> root. A copy made earlier with the same
    sizes and seed (recorded in ``root/fabricated.json``) is kept; one made with others is written anew."""
    made = {"num_train": num_train, "num_test": num_test, "seed": seed}
    record = root / "fabricated.json"
    if not (record.is_file() and json.loads(record.read_text()) == made):
        write_fake_cifar10(root, num_train=num_train, num_test=num_test, seed=seed)
        record.write_text(json.dumps(made) + "\n")
    return root


def write_reference_folder(images: Tensor, folder: Path) -> Path:
    """uint8 images (N, 3, H, W) -> PNG files in ``folder`` (a clean-fid folder reference) -> folder. Images an
    earlier call left there are removed first, so the folder holds exactly these."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        save_image(image.float() / 255, folder / f"{i:06d}.png")
    return folder


def write_fake_cifar10(root: PathLike, num_train: int = 500, num_test: int = 100, seed: int = 0) -> Path:
    """Fabricate a tiny CIFAR-10 in the official on-disk format -> the ``root/cifar-10-batches-py`` folder.

    Writes data_batch_1..5 (``num_train`` images split as evenly as possible), test_batch and batches.meta:
    pickled dicts with the official keys ('batch_label', 'labels', 'data' uint8 (n, 3072) as R, G, B planes,
    'filenames'; meta: 'num_cases_per_batch', 'label_names', 'num_vis'), so torchvision's reader parses
    them; only its MD5 check tells them from the real files. Images are smooth random colour blobs (not
    white noise) so resizing and flips behave as on photographs; labels cycle through the 10 classes.
    """
    if num_train < 1 or num_test < 1:
        raise ValueError(f"need num_train >= 1 and num_test >= 1, got {num_train} and {num_test}")
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR10_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    batches = [
        (f"training batch {b + 1} of 5", name, part)
        for b, (name, part) in enumerate(zip(CIFAR10_TRAIN_FILES, np.array_split(np.arange(num_train), 5)))
    ]
    batches.append(("testing batch 1 of 1", CIFAR10_TEST_FILES[0], np.arange(num_test)))
    for batch_label, name, ids in batches:
        entry = {
            "batch_label": batch_label,
            "labels": [int(i % 10) for i in ids],
            "data": _smooth_images(rng, len(ids)).reshape(len(ids), 3072),
            "filenames": [f"fake_{name}_{int(i):05d}.png" for i in ids],
        }
        _write_pickle(folder / name, entry)
    _write_pickle(
        folder / CIFAR10_META_FILE,
        {"num_cases_per_batch": 10000, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072},
    )
    return folder


def _smooth_images(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """n random low-frequency colour images -> uint8 (n, 3, size, size) (a 4x4 grid upsampled bilinearly)."""
    coarse = torch.from_numpy(rng.uniform(0, 255, size=(n, 3, 4, 4)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    return fine.round().clamp(0, 255).to(torch.uint8).numpy()


def write_fake_imagenet(
    folder: PathLike, train_sizes: Sequence[int], num_val: int = 0, resolution: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Fabricate downsampled ImageNet in the official .npz format under ``folder`` -> (every training image
    uint8 (N, 3, res, res) in file order, their labels int64 (N,) 0-based).

    The format of image-net.org's "Imagenet32_train_npz" / "Imagenet64_train_part*_npz" releases, which
    data_prep/imagenet.py reads: ``train_data_batch_<k>.npz`` (k = 1, 2, ...; ``train_sizes[k - 1]`` images each)
    with ``data`` uint8 (n, 3 * res * res) as R, G, B planes, ``labels`` a list of 1..1000 and ``mean`` the
    batch's mean row; ``val_data.npz`` (``data``, ``labels``) when ``num_val`` > 0. Images are smooth random
    colour blobs, so resizing and flips behave as on photographs.
    """
    if not train_sizes or min(train_sizes) < 1 or num_val < 0:
        raise ValueError(
            f"need at least one training batch of >= 1 image and num_val >= 0, got {list(train_sizes)} and {num_val}"
        )
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for k, n in enumerate(train_sizes, start=1):
        x, y = _smooth_images(rng, n, resolution), rng.integers(1, 1001, n)
        data = x.reshape(n, -1)
        np.savez(folder / f"train_data_batch_{k}.npz", data=data, labels=y.tolist(), mean=data.mean(0))
        images.append(x)
        labels.append(y - 1)
    if num_val:
        x = _smooth_images(rng, num_val, resolution)
        np.savez(folder / "val_data.npz", data=x.reshape(num_val, -1), labels=rng.integers(1, 1001, num_val).tolist())
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _write_pickle(path: Path, obj: object) -> None:
    """Pickle with protocol 2, the protocol of the original Python 2 files."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_fake_faces(folder: PathLike, num: int, resolution: int = 64, seed: int = 0) -> Path:
    """Fabricate ``num`` face-like PNGs (resolution x resolution) in ``folder``, named like FFHQ's 00000.png.

    Each is a skin-toned ellipse on a plain background with two eyes and a mouth, all with random size, colour
    and position, and left/right asymmetric, so a flipped image differs from the original. Stands in for FFHQ
    on CPU runs of data_prep/ffhq_latents.py; existing files are kept.
    """
    from PIL import Image, ImageDraw

    if num < 1 or resolution < 8:
        raise ValueError(f"need num >= 1 and resolution >= 8, got {num} and {resolution}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    r = resolution
    for i in range(num):
        path = folder / f"{i:05d}.png"
        background, skin, eyes = (
            tuple(int(c) for c in rng.integers(lo, hi, 3)) for lo, hi in ((0, 256), (150, 250), (0, 90))
        )
        cx, cy = r * rng.uniform(0.4, 0.6, 2)
        w, h = r * rng.uniform(0.25, 0.35), r * rng.uniform(0.33, 0.45)
        image = Image.new("RGB", (r, r), background)
        draw = ImageDraw.Draw(image)
        draw.ellipse([cx - w, cy - h, cx + w, cy + h], fill=skin)
        for side, size in ((-1, rng.uniform(0.05, 0.09)), (1, rng.uniform(0.03, 0.07))):  # unequal eyes
            ex, ey, s = cx + side * 0.45 * w, cy - 0.25 * h, size * r
            draw.ellipse([ex - s, ey - s, ex + s, ey + s], fill=eyes)
        mouth = cx + rng.uniform(-0.2, 0.2) * w
        draw.line(
            [mouth - 0.4 * w, cy + 0.5 * h, mouth + 0.4 * w, cy + 0.45 * h], fill=(120, 30, 40), width=max(1, r // 32)
        )
        if not path.exists():
            image.save(path)
    return folder


# ---------------------------------------------------------------------------------------------------------
# Models: a tiny autoencoder and fake releases
# ---------------------------------------------------------------------------------------------------------
def tiny_autoencoder(seed: int = 0, levels: int = 4, width: int = 32, post_quant_conv: bool = True) -> Any:
    """A small randomly initialised autoencoder shaped like the released one, for CPU runs and tests.

    ``levels`` levels of ``width`` channels (images shrink by 2 ** (levels - 1): 64 x 64 -> 8 x 8 for 4 levels),
    one ResBlock per level, attention in the lowest-resolution level of encoder and decoder and in the middle,
    4 latent channels, quant_conv, and post_quant_conv as asked. The global RNG is left untouched.
    """
    layout = LDMLayout(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(width,) * levels,
        layers_per_block=1,
        encoder_attention=(False,) * (levels - 1) + (True,),
        decoder_attention=(False,) * (levels - 1) + (True,),
        mid_attention=True,
        quant_conv=True,
        post_quant_conv=post_quant_conv,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_autoencoder(diffusers_config(layout)).eval()


# Fakes: tiny presets in the released layout (lib.unet), latent for the latent release.
FAKE_PRESETS: dict[str, str] = {
    name: "tiny_latent" if preset.endswith("_latent") else "tiny" for name, preset in RELEASED_PRESETS.items()
}
FAKE_NOTE = "fake releases: random tiny weights, tests the fetch/load/evaluate path only"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_release_state(preset: str, seed: int = 0) -> dict[str, Any]:
    """A checkpoint dict in the released layout with random weights of ``preset`` -> {"model", "optimizer",
    "lr_scheduler", "global_step"}.

    model: the UNet under ``backbone.*``, every weight moved by N(0, 0.05^2) so the velocity is not the zero of
    a fresh UNet's zero-initialised output conv; a latent preset (4 input channels) also gets a tiny random
    kl-f8-shaped autoencoder (:func:`tiny_autoencoder`, 8 x 8 latents -> 64 x 64 images) under ``ae.*``
    in LDM names, with ``ae.scale``, as the FFHQ release stores them. The global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet(preset)
        with torch.no_grad():
            for weight in unet.parameters():
                weight.add_(0.05 * torch.randn_like(weight))
    model = {f"backbone.{k}": v for k, v in unet.state_dict().items()}
    if PRESETS[preset].in_channels == 4:
        model.update({f"ae.{k}": v for k, v in diffusers_to_ldm(tiny_autoencoder(seed=seed).state_dict()).items()})
        model["ae.scale"] = torch.tensor([1.0])
    return {"model": model, "optimizer": {}, "lr_scheduler": {}, "global_step": 11}


def write_fake_release(cache: str | os.PathLike[str], name: str, preset: str | None = None, seed: int = 0) -> Path:
    """Put a fake of release ``name`` into the Hugging Face cache folder ``cache`` -> its checkpoint file.

    The layout huggingface_hub reads offline: ``models--<org>--<repo>/refs/main`` holding a commit and
    ``snapshots/<commit>/last.pt``, a :func:`fake_release_state` of ``preset`` (default FAKE_PRESETS[name]).
    Load it with ``load_released(name, cache_dir=cache, offline=True, preset=...)``. Rewriting is idempotent.
    """
    folder = Path(cache) / f"models--{check_release_name(name).replace('/', '--')}"
    snapshot = folder / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(FAKE_COMMIT)
    torch.save(fake_release_state(preset or FAKE_PRESETS[name], seed), snapshot / "last.pt")
    return snapshot / "last.pt"
