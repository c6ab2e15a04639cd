"""The five released LOOM-CFM checkpoints: fetched through huggingface_hub (or taken from a local file).

    from lib.released import load_released
    loaded = load_released("cifar10")            # downloads once into the Hugging Face cache
    python -m lib.sample --checkpoint released:cifar10 --solver midpoint-4 --num 64 --out grid.png

Offline (no network, or HF_HUB_OFFLINE=1) a checkpoint already in the cache is used; otherwise the error
says how to place the file by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

RELEASED_REPOS: dict[str, str] = {
    "cifar10": "cvg-unibe/loom-cfm_cifar10",
    "cifar10_reflow": "cvg-unibe/loom-cfm_cifar10_reflow",
    "imagenet32": "cvg-unibe/loom-cfm_imagenet32",
    "imagenet64": "cvg-unibe/loom-cfm_imagenet64",
    "ffhq256": "cvg-unibe/loom-cfm_ffhq256",
}
# The lib.unet preset each release must load into (the reflow model keeps the CIFAR-10 architecture).
RELEASED_PRESETS: dict[str, str] = {"cifar10": "cifar10", "cifar10_reflow": "cifar10", "imagenet32": "imagenet32",
                                    "imagenet64": "imagenet64", "ffhq256": "ffhq256_latent"}
CHECKPOINT_PATTERNS = ("*.pt", "*.pth", "*.ckpt")
PREFIX = "released:"  # lib.sample / lib.evaluate accept --checkpoint released:<name>


def check_name(name: str) -> str:
    """The release's repository id; an unknown name raises ValueError listing the five."""
    if name not in RELEASED_REPOS:
        raise ValueError(f"unknown released checkpoint {name!r}; use one of {sorted(RELEASED_REPOS)}")
    return RELEASED_REPOS[name]


def _placement_hint(name: str, cause: object) -> str:
    repo = RELEASED_REPOS[name]
    return (f"released checkpoint {name!r} ({repo}) is not in the Hugging Face cache and could not be downloaded "
            f"({cause}). On a machine with internet run `huggingface-cli download {repo} --local-dir <folder>` "
            f"(or huggingface_hub.snapshot_download) and pass the .pt file inside as the checkpoint path, or copy "
            f"the cache folder models--{repo.replace('/', '--')} into {os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')}")


def fetch_released(name: str, cache_dir: str | os.PathLike[str] | None = None, offline: bool = False) -> Path:
    """Path of release ``name``'s checkpoint file, downloading it into the Hugging Face cache if needed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo = check_name(name)
    try:
        folder = snapshot_download(repo, cache_dir=cache_dir, local_files_only=offline,
                                   allow_patterns=list(CHECKPOINT_PATTERNS))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise FileNotFoundError(_placement_hint(name, err)) from err
    files = sorted(p for pattern in CHECKPOINT_PATTERNS for p in Path(folder).rglob(pattern))
    if len(files) != 1:
        raise FileNotFoundError(f"{repo} snapshot {folder} holds {len(files)} checkpoint files "
                                f"({[f.name for f in files]}); pass the one you want as a path")
    return files[0]


def load_released(name: str, cache_dir: str | os.PathLike[str] | None = None, offline: bool = False):
    """Fetch and load release ``name`` -> lib.sample.LoadedModel, checked against its expected preset."""
    from lib.sample import load_model
    from lib.unet import CheckpointError

    loaded = load_model(fetch_released(name, cache_dir, offline))
    if loaded.info["preset"] != RELEASED_PRESETS[name]:
        raise CheckpointError(f"the file fetched for {name!r} loads as preset {loaded.info['preset']!r}, expected "
                              f"{RELEASED_PRESETS[name]!r}; the download is not the {name} release")
    return loaded
