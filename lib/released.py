"""The five released LOOM-CFM checkpoints: fetched through huggingface_hub (or taken from a local file).

    from lib.released import load_released
    loaded = load_released("cifar10")            # downloads once into the Hugging Face cache
    python -m lib.sample --checkpoint released:cifar10 --solver midpoint-4 --num 64 --out grid.png

Offline (no network, or HF_HUB_OFFLINE=1) a checkpoint already in the cache is used; otherwise the error
says how to place the file by hand.

:data:`PAPER_EVALUATION` says how the paper evaluates each release (its table, row, solvers at the paper's NFE);
:func:`write_fake_release` fabricates a Hugging Face cache of tiny random-weight files in the released layout, so
the whole fetch -> load -> evaluate path runs offline (tests, and the quick profile of notebook 11).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lib.fid import DEFAULT_PROTOCOL

if TYPE_CHECKING:  # lib.sample pulls in the UNet stack; load it only when a model is loaded
    from lib.sample import LoadedModel

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


@dataclass(frozen=True)
class PaperEvaluation:
    """How the paper evaluates one release: the table and the (dataset, method) names of its rows in
    lib/reference/paper_results.csv, the solvers at the paper's NFE, and the resolution of the images its FID
    compares (FFHQ: decoded 256 x 256 images, not the 32 x 32 latents)."""

    table: str
    dataset: str
    method: str
    solvers: tuple[str, ...]
    resolution: int

    @property
    def grid_solver(self) -> str:
        """The most accurate fixed-grid solver of the evaluation (for sample grids)."""
        return [s for s in self.solvers if s != "dopri5"][-1]


NFE_4_8_12 = ("midpoint-2", "midpoint-4", "midpoint-6", "dopri5")  # midpoint-k costs 2k network calls
PAPER_EVALUATION: dict[str, PaperEvaluation] = {
    "cifar10": PaperEvaluation("1", "cifar10", "LOOM-CFM", NFE_4_8_12, 32),
    # The paper reports the reflow model at 1 and 2 NFE without naming the 2-NFE solver: both 2-NFE grids.
    "cifar10_reflow": PaperEvaluation("1", "cifar10", "LOOM-CFM + 1 Reflow", ("euler-1", "euler-2", "midpoint-1"), 32),
    "imagenet32": PaperEvaluation("2", "imagenet32", "LOOM-CFM", NFE_4_8_12, 32),
    "imagenet64": PaperEvaluation("2", "imagenet64", "LOOM-CFM", NFE_4_8_12, 64),
    "ffhq256": PaperEvaluation("3", "ffhq256_latent", "LOOM-CFM", ("midpoint-1", "midpoint-2", "midpoint-4", "dopri5"),
                               256),
}

# Fakes: tiny presets in the released layout (lib.unet), latent for the latent release.
FAKE_PRESETS: dict[str, str] = {name: "tiny_latent" if preset.endswith("_latent") else "tiny"
                                for name, preset in RELEASED_PRESETS.items()}
FAKE_NOTE = "fake releases: random tiny weights, tests the fetch/load/evaluate path only"
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


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


def load_released(name: str, cache_dir: str | os.PathLike[str] | None = None, offline: bool = False,
                  preset: str | None = None) -> LoadedModel:
    """Fetch and load release ``name`` -> lib.sample.LoadedModel, checked against its expected preset.

    preset: the lib.unet preset the file must load as. None (the default; what every real use wants) is the
    release's own, RELEASED_PRESETS[name]. Another preset is only for fakes in the released layout
    (:func:`write_fake_release`: the tests and the quick profile of notebook 11), never for a published file.
    """
    from lib.sample import load_model
    from lib.unet import CheckpointError

    expected = preset or RELEASED_PRESETS[name]
    loaded = load_model(fetch_released(name, cache_dir, offline))
    if loaded.info["preset"] != expected:
        raise CheckpointError(f"the file fetched for {name!r} loads as preset {loaded.info['preset']!r}, expected "
                              f"{expected!r}; the download is not the {name} release")
    return loaded


# ---------------------------------------------------------------------------------------------------------
# Fake releases: the released layout with tiny random weights, in a Hugging Face cache folder
# ---------------------------------------------------------------------------------------------------------
def fake_release_state(preset: str, seed: int = 0) -> dict[str, Any]:
    """A checkpoint dict in the released layout with random weights of ``preset`` -> {"model", "optimizer",
    "lr_scheduler", "global_step"}.

    model: the UNet under ``backbone.*``, every weight moved by N(0, 0.05^2) so the velocity is not the zero of
    a fresh UNet's zero-initialised output conv; a latent preset (4 input channels) also gets a tiny random
    kl-f8-shaped autoencoder (lib.autoencoder.tiny_autoencoder, 8 x 8 latents -> 64 x 64 images) under ``ae.*``
    in LDM names, with ``ae.scale``, as the FFHQ release stores them. The global RNG is left untouched.
    """
    from lib.unet import PRESETS, build_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet(preset)
        with torch.no_grad():
            for weight in unet.parameters():
                weight.add_(0.05 * torch.randn_like(weight))
    model = {f"backbone.{k}": v for k, v in unet.state_dict().items()}
    if PRESETS[preset].in_channels == 4:
        from lib.autoencoder import diffusers_to_ldm, tiny_autoencoder

        model.update({f"ae.{k}": v for k, v in diffusers_to_ldm(tiny_autoencoder(seed=seed).state_dict()).items()})
        model["ae.scale"] = torch.tensor([1.0])
    return {"model": model, "optimizer": {}, "lr_scheduler": {}, "global_step": 11}


def write_fake_release(cache: str | os.PathLike[str], name: str, preset: str | None = None, seed: int = 0) -> Path:
    """Put a fake of release ``name`` into the Hugging Face cache folder ``cache`` -> its checkpoint file.

    The layout huggingface_hub reads offline: ``models--<org>--<repo>/refs/main`` holding a commit and
    ``snapshots/<commit>/last.pt``, a :func:`fake_release_state` of ``preset`` (default FAKE_PRESETS[name]).
    Load it with ``load_released(name, cache_dir=cache, offline=True, preset=...)``. Rewriting is idempotent.
    """
    folder = Path(cache) / f"models--{check_name(name).replace('/', '--')}"
    snapshot = folder / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(FAKE_COMMIT)
    torch.save(fake_release_state(preset or FAKE_PRESETS[name], seed), snapshot / "last.pt")
    return snapshot / "last.pt"


# ---------------------------------------------------------------------------------------------------------
# Evaluating releases as the paper does
# ---------------------------------------------------------------------------------------------------------
def evaluate_releases(models: Mapping[str, LoadedModel], num_samples: int, references: Mapping[str, str],
                      splits: Mapping[str, str], *, seed: int, device: str, features: str = "inception",
                      fake: bool = False, protocol: str = DEFAULT_PROTOCOL) -> list[dict[str, Any]]:
    """FID of each release in ``models`` (name -> loaded) at its paper solvers (PAPER_EVALUATION), through
    lib.pipeline.fid_table as our own runs are, joined with its paper rows.

    references / splits: by paper dataset (cifar10, imagenet32, imagenet64, ffhq256_latent), the FID reference
    (clean-fid dataset name, custom stats name or image folder; for protocol paper-torcheval the split's images:
    CIFAR-10 root, HDF5 validation shards or image folder) and a named dataset's split (default "train").
    fake: files of :func:`write_fake_release`: images of any size, every row labelled FAKE_NOTE.
    Returns rows {dataset, release, method, solver, nfe, fid, protocol..., paper_fid, paper_nfe, paper_provenance,
    release_weights}, the method named as the paper's row ("LOOM-CFM", "LOOM-CFM + 1 Reflow").
    """
    from lib import pipeline

    missing = sorted({PAPER_EVALUATION[name].dataset for name in models} - set(references))
    if missing:
        raise ValueError(f"no FID reference for dataset(s) {missing}: add them to the references (a clean-fid "
                         "dataset name such as cifar10, custom stats such as imagenet32_train, or an image folder)")
    rows: list[dict[str, Any]] = []
    for name, loaded in models.items():
        spec = PAPER_EVALUATION[name]
        _, joined = pipeline.fid_table({spec.method: loaded}, spec.solvers, num_samples, references[spec.dataset],
                                       pipeline.paper_rows(spec.table, spec.dataset), seed=seed, device=device,
                                       features=features, dataset_res=None if fake else spec.resolution,
                                       dataset_split=splits.get(spec.dataset, "train"), protocol=protocol)
        rows += [{"dataset": spec.dataset, "release": name, **row,
                  "release_weights": FAKE_NOTE if fake else "published weights"} for row in joined]
    return rows
