"""Every model the kit builds, saves or loads, and every checkpoint file it reads, under one policy.

Policy: every file is read ONCE, by :func:`read_checkpoint`, with ``torch.load(weights_only=True)``: tensors and
plain containers only, so a crafted file cannot run code on load. A file that pickles anything else is refused with
the types it names, and there is no way past that: the kit never unpickles a file. Kit checkpoints are written so
that they load under the policy. Every entry point (``lib.sample``, ``lib.evaluate``, ``released:<name>``,
``lib.train --init``, ``data_prep/reflow_pairs.py``) goes through :func:`load_model`, so the same friendly errors
(missing file, Git LFS pointer, truncated file, another architecture with the keys that do not fit) reach all of
them.

Formats:
- kit training checkpoints (written by lib.train through :func:`save_checkpoint`): ``format`` = KIT_FORMAT, the
  run's ``config``, ``model`` / ``ema`` weights, optimizer, scheduler, the coupling's seed table, RNG states, history;
- released LOOM-CFM checkpoints: ``{"model": {"backbone.*": UNet, ["ae.*", "ae.scale"]: FFHQ's autoencoder},
  "optimizer", "lr_scheduler", "global_step"}`` (lib/reference/released_checkpoint_keys.json);
- ``released:<name>``: one of the five releases (lib.paper.RELEASED_REPOS), fetched through huggingface_hub;
- autoencoders: a hub id, a ``save_pretrained`` folder, a weights file or an LDM-named state dict.

    loaded = load_model("runs/c10/checkpoint.pt")        # or a released .pt, or "released:cifar10"
    loaded.model, loaded.shape, loaded.info, loaded.decoder
"""

from __future__ import annotations

import math
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lib.autoencoder import (
    AE_PREFIX,
    DEFAULT_AUTOENCODER,
    SCALE_KEY,
    LatentDecoder,
    autoencoder_from_ldm,
    diffusers_to_ldm,
)
from lib.files import atomic_write_stream
from lib.models import MLP, CheckpointError
from lib.paper import RELEASED_PRESETS, RELEASED_REPOS
from lib.unet import PRESETS, UNet, UNetConfig, build_unet, diff_state, resolve_config

KIT_FORMAT = "loom-kit-train-v1"  # the "format" entry of a lib.train checkpoint
RELEASED_PREFIX = "released:"  # --checkpoint released:<name>
CHECKPOINT_PATTERNS = ("*.pt", "*.pth", "*.ckpt")  # the checkpoint file inside a release's snapshot
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
BACKBONE_PREFIX = "backbone."
REDOWNLOAD_HINT = (
    "Re-download it (e.g. huggingface_hub.hf_hub_download from the cvg-unibe/loom-cfm_* "
    "repositories) and check its size against the one listed there."
)


class TrainCheckpointError(CheckpointError):
    """A training checkpoint that cannot be resumed: the message names the file and the fix."""


class UnsafeCheckpoint(CheckpointError):
    """A file that pickles a Python global beyond tensors and containers: refused, never unpickled."""


# ---------------------------------------------------------------------------------------------------------
# Files: the one reader and the one writer
# ---------------------------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """``torch.load`` a checkpoint file onto the CPU under the kit's policy (module docstring).

    Raises FileNotFoundError for a missing path and CheckpointError for a folder, a Git LFS pointer, a truncated or
    non-torch file, or a file that pickles Python objects beyond tensors and containers (never unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    _refuse_lfs_pointer(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_global(err)
        if refused is None:
            raise _corrupt(path, err) from None  # torch's text advises switching its check off
        raise UnsafeCheckpoint(
            f"{path} pickles Python objects beyond tensors: the global {refused}, refused because loading it could "
            "run code; the kit never unpickles such a file. If you wrote the file, save its weights alone, e.g. "
            "torch.save({'model': model.state_dict()}, path), and load that."
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise _corrupt(path, err) from err


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, synced, then renamed.

    A crash leaves either the previous checkpoint or the new one, never a torn file (lib.files.atomic_write; the
    temporary file a kill leaves is removed when lib.train next holds the folder).
    """
    return atomic_write_stream(path, lambda f: torch.save(dict(state), f))


def kept_checkpoint_path(path: str | os.PathLike[str], step: int) -> Path:
    """Where :func:`keep_checkpoint` keeps the copy of ``path`` at ``step``: checkpoint_step00001000.pt beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}_step{step:08d}{path.suffix}")


def keep_checkpoint(path: str | os.PathLike[str], step: int) -> Path:
    """Keep the checkpoint just written at ``path`` as :func:`kept_checkpoint_path` (step), atomically.

    A hard link when the file system has them (no copy: the next save_checkpoint replaces ``path`` by a new file,
    the kept name keeps the old one), else a copy; either way through a temporary name and a rename.
    """
    path, kept = Path(path), kept_checkpoint_path(path, step)
    tmp = kept.with_name(f".{kept.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, kept)
    return kept


def kept_checkpoints(path: str | os.PathLike[str]) -> dict[int, Path]:
    """{step: file} of the copies :func:`keep_checkpoint` kept of ``path``, by step."""
    path = Path(path)
    found = {}
    for kept in path.parent.glob(f"{path.stem}_step*{path.suffix}"):
        step = kept.name[len(path.stem) + len("_step") : -len(path.suffix)]
        if step.isdigit():
            found[int(step)] = kept
    return dict(sorted(found.items()))


def _refuse_lfs_pointer(path: Path) -> None:
    """A `git clone` without git-lfs leaves a ~130-byte text pointer in place of the weights."""
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(
            f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in its "
            f"repository or download the file itself. {REDOWNLOAD_HINT}"
        )


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    size = path.stat().st_size
    return CheckpointError(
        f"{path} ({size:,} bytes) is truncated or not a torch checkpoint: "
        f"{type(err).__name__}: {_reason(err)}. {REDOWNLOAD_HINT}"
    )


def _unpickler_message(err: BaseException) -> str:
    """What torch's weights-only unpickler itself said, without the advice torch wraps it in.

    torch raises a new UnpicklingError whose text starts "Weights only load failed" and suggests re-running with
    the weights-only check off (which would run the file's code); the unpickler's own error is its ``__context__``.
    """
    inner = err.__context__
    if isinstance(inner, pickle.UnpicklingError) and "weights_only" not in str(inner):
        return str(inner)
    paragraphs = [p.strip() for p in str(err).split("\n\n") if p.strip()]
    plain = [p for p in paragraphs if "weights_only" not in p and not p.startswith("Check the documentation")]
    return plain[-1] if plain else ""


def _refused_global(err: BaseException) -> str | None:
    """The global a refused checkpoint pickles, in full (``posix.system``, ``builtins.exec``), or None when torch
    refused the file for another reason (a damaged pickle stream)."""
    found = re.search(r"GLOBAL (\S+)", _unpickler_message(err))
    if found is None:
        return None
    name = found.group(1)
    # torch drops the module of builtins ("GLOBAL exec"); a global always lives in a module, so name it.
    return name if "." in name else f"builtins.{name}"


def _reason(err: BaseException) -> str:
    """The informative part of a load error, one line, at most 200 characters, never torch's weights_only advice."""
    text = _unpickler_message(err) if isinstance(err, pickle.UnpicklingError) else str(err)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    informative = [ln for ln in lines if "error" in ln.lower()]
    return (informative or lines or [""])[0][:200]


# ---------------------------------------------------------------------------------------------------------
# Kit training checkpoints
# ---------------------------------------------------------------------------------------------------------
def read_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A lib.train checkpoint (to resume from) -> its state dict; errors name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise TrainCheckpointError(f"no checkpoint at {path}; check the path (or drop --resume to start fresh)")
    try:
        state = read_checkpoint(path)
    except UnsafeCheckpoint as err:
        raise TrainCheckpointError(str(err)) from None  # not a damaged file: no advice to resume from another
    except CheckpointError as err:
        raise TrainCheckpointError(
            f"{err} If it is a training checkpoint it may be truncated: delete it and resume from an earlier one"
        ) from err
    if not isinstance(state, dict) or state.get("format") != KIT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise TrainCheckpointError(
            f"{path} is not a training checkpoint of this kit (format {found!r}); a released model checkpoint "
            "loads with lib.checkpoints.load_released_unet (or lib.checkpoints.load_model) for evaluation, not for "
            "resuming"
        )
    return state


def ema_weights(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The EMA model's weights from a kit training checkpoint (AveragedModel keys without 'module.')."""
    return {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}


# ---------------------------------------------------------------------------------------------------------
# Released checkpoints: the UNet under backbone.*, FFHQ's autoencoder under ae.*
# ---------------------------------------------------------------------------------------------------------
def strip_wrappers(key: str) -> str:
    """Remove any run of `module.` / `_orig_mod.` (DDP, torch.compile) at the front of a state-dict key."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def load_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """A released-format checkpoint file {model, optimizer, lr_scheduler, global_step} -> its dict.

    Read by :func:`read_checkpoint` (same errors); a torch file without ``model`` raises CheckpointError.
    """
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        found = list(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is a torch file but not a LOOM-CFM training checkpoint: expected a dict with 'model' "
            f"(and 'optimizer', 'lr_scheduler', 'global_step'), found {found}. A bare state dict can be "
            "passed to load_released_unet directly."
        )
    return dict(checkpoint)


def unet_state_from_checkpoint(model_state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Split a checkpoint's `model` state into the bare UNet state and the names of non-UNet keys.

    Wrapper prefixes (`module.` from DDP, `_orig_mod.` from torch.compile) are dropped wherever they lead
    a key, before and after `backbone.`. If any key has `backbone.`, exactly those are the UNet and the
    rest (e.g. FFHQ's `ae.*` autoencoder and `ae.scale`) are returned as extra keys; otherwise the whole
    dict is taken to be a bare UNet state dict.
    """
    clean = {strip_wrappers(k): v for k, v in model_state.items()}
    if not any(k.startswith(BACKBONE_PREFIX) for k in clean):
        return clean, []
    unet, extra = {}, []
    for k, v in clean.items():
        if k.startswith(BACKBONE_PREFIX):
            unet[strip_wrappers(k[len(BACKBONE_PREFIX) :])] = v
        else:
            extra.append(k)
    return unet, extra


def infer_preset(unet_state: Mapping[str, Tensor]) -> str:
    """The lib.unet preset whose names and shapes match the bare UNet state exactly (paper presets first).

    No exact match raises CheckpointError listing, for the closest preset, the missing and unexpected keys and
    the shape mismatches.
    """
    diffs = {name: diff_state(unet_state, name) for name in PRESETS}
    for name, diff in diffs.items():
        if diff.ok:
            return name
    closest = min(diffs, key=lambda name: diffs[name].size)
    raise CheckpointError(
        f"the UNet weights match none of the presets ({', '.join(PRESETS)}).\n"
        f"Closest is {closest!r}:\n{diffs[closest].describe()}"
    )


def load_released_unet(
    path_or_state: str | Path | Mapping[str, Any], preset: str | UNetConfig | None = None
) -> tuple[UNet, dict[str, Any]]:
    """A released (or kit-trained) checkpoint -> (UNet in eval mode, info).

    path_or_state: a checkpoint file, a loaded checkpoint dict with `model`, or a model state dict.
    preset: None infers it from the names and shapes; a name or config is checked against them. Either
    way a mismatch raises CheckpointError (a ValueError) listing missing/unexpected/mismatched keys.
    info: preset (name, or "custom"), config, global_step (None if absent), extra_keys (non-UNet names such
    as FFHQ's `ae.*`), num_params.
    """
    from_file = isinstance(path_or_state, (str, Path))
    checkpoint = load_checkpoint_state(path_or_state) if from_file else path_or_state
    model_state = checkpoint["model"] if isinstance(checkpoint.get("model"), Mapping) else checkpoint
    unet_state, extra_keys = unet_state_from_checkpoint(model_state)
    if not from_file:
        # The weights are assigned, not copied, below: clone so the new model never shares storage with
        # the caller's tensors (e.g. a teacher and a student loaded from the same dict for reflow).
        unet_state = {k: v.detach().clone() for k, v in unet_state.items()}

    if preset is None:
        name = infer_preset(unet_state)
        config = PRESETS[name]
    else:
        config = resolve_config(preset)
        name = preset if isinstance(preset, str) else "custom"
        diff = diff_state(unet_state, config)
        if not diff.ok:
            raise CheckpointError(f"the checkpoint does not fit UNet preset {name!r}:\n{diff.describe()}")

    # Built on the meta device and filled by assignment: no random init, no second copy of the weights.
    with torch.device("meta"):
        model = UNet(config)
    model.load_state_dict(unet_state, strict=True, assign=True)
    model.eval()
    info = {
        "preset": name,
        "config": config,
        "global_step": checkpoint.get("global_step") if model_state is not checkpoint else None,
        "extra_keys": extra_keys,
        "num_params": sum(p.numel() for p in model.parameters()),
    }
    return model, info


# ---------------------------------------------------------------------------------------------------------
# Autoencoders (FFHQ latents)
# ---------------------------------------------------------------------------------------------------------
Source = str | os.PathLike[str] | Mapping[str, Tensor]


def _ldm_state_from_mapping(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """A state dict in either naming, bare or as an LDM ``.ckpt`` ({state_dict: ...}) / a released checkpoint
    ({model: {ae.*}}) -> LDM names without prefixes (training-only ``loss.*`` and ``ae.scale`` dropped)."""
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    clean = {strip_wrappers(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if any(k.startswith(AE_PREFIX) for k in clean):
        clean = {k[len(AE_PREFIX) :]: v for k, v in clean.items() if k.startswith(AE_PREFIX) and k != SCALE_KEY}
    # An LDM training checkpoint also holds its loss (LPIPS, discriminator); it is not part of the autoencoder.
    clean = {k: v for k, v in clean.items() if not k.startswith("loss.")}
    if any(".down_blocks." in k or ".up_blocks." in k for k in clean):
        clean = diffusers_to_ldm(clean)
    return clean


def _read_weights_file(path: Path) -> Mapping[str, Any]:
    """A .safetensors file (no pickle at all) or a torch file under the policy -> its dict."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # a diffusers dependency, needed only for this format

        return load_file(str(path))
    return read_checkpoint(path)


def _from_hub(repo_id: str, offline: bool, cache_dir: str | os.PathLike[str] | None) -> Any:
    """``AutoencoderKL.from_pretrained(repo_id)`` through the Hugging Face cache, with a placement hint offline."""
    from diffusers import AutoencoderKL  # diffusers takes seconds to import: only when an autoencoder is loaded

    try:
        return AutoencoderKL.from_pretrained(
            repo_id, local_files_only=offline, cache_dir=cache_dir, low_cpu_mem_usage=False
        )  # no accelerate needed
    except (OSError, ValueError) as err:  # diffusers reports a missing repo / offline cache miss as OSError
        raise FileNotFoundError(
            f"autoencoder {repo_id!r} is neither a local folder nor in the Hugging Face cache, and could not be "
            f"downloaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). On a machine with "
            f"internet run `hf download {repo_id} --local-dir <folder>` (or "
            f"AutoencoderKL.from_pretrained('{repo_id}').save_pretrained('<folder>')) and pass <folder> instead, "
            f"or copy its cache folder models--{repo_id.replace('/', '--')} into "
            f"{os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')}"
        ) from err


def _looks_like_hub_id(text: str) -> bool:
    """``name`` or ``owner/name`` (letters, digits, - _ .), not a path or a weights file name."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", text) is not None and not text.endswith(
        (".pt", ".pth", ".ckpt", ".safetensors", ".bin")
    )


def load_autoencoder(source: Source, offline: bool = False, cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """A diffusers AutoencoderKL in eval mode, frozen, on the CPU, from one of:

    - a folder written by ``AutoencoderKL.save_pretrained`` (config.json + weights);
    - a weights file (.pt / .ckpt / .safetensors): an LDM state dict, an LDM training checkpoint, or a
      released LOOM-CFM FFHQ checkpoint (its ``ae.*`` keys);
    - a state dict (LDM names; diffusers names are accepted too), architecture read off the weights;
    - a hub id (``stabilityai/sd-vae-ft-mse``) through ``from_pretrained`` and the Hugging Face cache;
      ``offline`` uses the cache only. Not available -> FileNotFoundError saying how to place the weights.
    """
    if isinstance(source, Mapping):
        ae = autoencoder_from_ldm(_ldm_state_from_mapping(source))
    elif Path(source).is_dir():
        if not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(
                f"{source} is a folder without config.json: not written by "
                "AutoencoderKL.save_pretrained (pass that folder, a weights file or a hub id)"
            )
        from diffusers import AutoencoderKL

        ae = AutoencoderKL.from_pretrained(str(source), local_files_only=True, low_cpu_mem_usage=False)
    elif Path(source).is_file():
        return load_autoencoder(_read_weights_file(Path(source)))
    elif not _looks_like_hub_id(str(source)):
        raise FileNotFoundError(
            f"autoencoder {source} does not exist: pass a save_pretrained folder, a weights "
            f"file or a hub id such as {DEFAULT_AUTOENCODER}"
        )
    else:
        ae = _from_hub(str(source), offline, cache_dir)
    return ae.float().eval().requires_grad_(False)


def decoder_from_checkpoint(model_state: Mapping[str, Tensor]) -> LatentDecoder | None:
    """A released checkpoint's ``model`` state -> its LatentDecoder (``ae.*`` + ``ae.scale``), or None if it has no
    autoencoder. ``ae.*`` without ``ae.scale`` (or the reverse) raises CheckpointError."""
    clean = {strip_wrappers(k): v for k, v in model_state.items()}
    ae_keys = [k for k in clean if k.startswith(AE_PREFIX)]
    if not ae_keys:
        return None
    if SCALE_KEY not in clean or len(ae_keys) == 1:
        raise CheckpointError(
            f"the checkpoint's autoencoder is incomplete: it has {len(ae_keys)} ae.* keys "
            f"{'with' if SCALE_KEY in clean else 'but no'} {SCALE_KEY}; a latent checkpoint "
            "needs the ae.encoder/decoder weights and ae.scale (the latent std divisor)"
        )
    return LatentDecoder(load_autoencoder({k: clean[k] for k in ae_keys}), clean[SCALE_KEY])


def recorded_autoencoder(recorded: str, checkpoint: str | os.PathLike[str]) -> str:
    """The autoencoder a kit checkpoint records -> itself, if it may be loaded without the user naming it.

    A checkpoint may only select among sources the kit knows or that are already on this machine: the paper's
    autoencoder (lib.autoencoder.DEFAULT_AUTOENCODER) or a local file or folder (read under the policy; nothing is
    downloaded). Any other hub repository raises CheckpointError before anything is fetched: a checkpoint must not
    choose what code or weights are downloaded.
    """
    if recorded == DEFAULT_AUTOENCODER or Path(recorded).exists():
        return recorded
    raise CheckpointError(
        f"{checkpoint} records the autoencoder {recorded!r}, which is neither the kit's known autoencoder "
        f"({DEFAULT_AUTOENCODER}) nor a file or folder on this machine; a checkpoint cannot choose what is "
        f"downloaded, so nothing was fetched. Fix: if you trust it, name it yourself: --autoencoder {recorded} "
        "(lib.sample, lib.evaluate) or load_model(..., autoencoder=...)"
    )


def kit_decoder(
    latent: Mapping[str, Any] | None,
    autoencoder: Source | None = None,
    checkpoint: str | os.PathLike[str] = "the checkpoint",
) -> LatentDecoder | None:
    """A kit checkpoint's ``latent`` record {autoencoder, scale} (lib.train) -> its LatentDecoder, or None for a
    model trained on pixels. ``autoencoder``: the source the user named, used instead of the recorded one; without
    it the recorded source must pass :func:`recorded_autoencoder`."""
    if not latent:
        return None
    source = autoencoder if autoencoder is not None else recorded_autoencoder(str(latent["autoencoder"]), checkpoint)
    return LatentDecoder(load_autoencoder(source), latent["scale"])


# ---------------------------------------------------------------------------------------------------------
# Models: built by name, or loaded from any checkpoint
# ---------------------------------------------------------------------------------------------------------
def build_model(name: str, example_shape: tuple[int, ...], hidden: int = 256, seed: int | None = None) -> nn.Module:
    """A fresh velocity field: ``mlp`` (flat data of any shape, ``hidden`` wide) or a lib.unet preset name.

    seed: initialise the weights from this seed without touching the caller's global RNG; None draws them from
    the global RNG (lib.train seeds it per run, so every rank starts from the same weights).
    """
    if name != "mlp" and name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; use 'mlp' or a UNet preset: {sorted(PRESETS)}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return MLP(math.prod(example_shape), hidden=hidden) if name == "mlp" else build_unet(name)


def mlp_from_state(weights: Mapping[str, Tensor]) -> MLP:
    """Rebuild lib.models.MLP from its own state dict (dim, hidden, depth, time_dim read off the shapes)."""
    linear = sorted((k for k in weights if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    hidden, first_in = weights[linear[0]].shape
    dim = weights[linear[-1]].shape[0]
    model = MLP(dim, hidden=hidden, depth=len(linear) - 1, time_dim=first_in - dim)
    model.load_state_dict(weights)
    return model.eval()


@dataclass(frozen=True)
class LoadedModel:
    """A velocity field ready to sample, its example shape (C, H, W) or (D,), and where it came from.

    Latent models (FFHQ-256) also carry ``decoder``: scaled latents (B, *shape) -> images (B, 3, H, W) in
    [-1, 1] (the autoencoder with the latent scale applied, see lib.autoencoder); pixel models have None.
    """

    model: nn.Module
    shape: tuple[int, ...]
    info: dict[str, Any]
    decoder: nn.Module | None = None


def load_model(
    path: str | os.PathLike[str], use_ema: bool = True, autoencoder: str | os.PathLike[str] | None = None
) -> LoadedModel:
    """A kit training checkpoint (the EMA weights by default), a released LOOM-CFM checkpoint, or
    ``released:<name>`` (fetched through huggingface_hub) -> :class:`LoadedModel`. The file is read once.

    The architecture is read off the weights: a lib.unet preset (the released layout) or the toy MLP.
    A file of another architecture raises CheckpointError listing what does not fit. Latent models get
    ``decoder``: a released checkpoint from its ``ae.*`` weights and ``ae.scale``, a kit checkpoint trained on
    HDF5 latents from the scale it recorded and ``autoencoder`` (the user's choice: a hub id, folder or weights
    file) or else the autoencoder it recorded, if the kit knows it or it is on this machine
    (:func:`recorded_autoencoder`; a checkpoint never chooses what is downloaded).
    """
    path = checkpoint_file(path)
    state = load_checkpoint_state(path)
    latent_kit = state.get("format") == KIT_FORMAT and bool(state.get("latent"))
    if autoencoder is not None and not latent_kit:
        raise ValueError(
            f"--autoencoder applies to kit checkpoints trained on latents; {path} is not one (a released latent "
            "checkpoint decodes with its own ae.* weights): drop --autoencoder"
        )
    if state.get("format") == KIT_FORMAT:
        weights = _kit_weights(path, state, use_ema)
        info: dict[str, Any] = {
            "checkpoint": str(path),
            "kind": "kit",
            "weights": "ema" if use_ema else "raw",
            "global_step": state["global_step"],
        }
        if any(k.startswith("net.") for k in weights):
            model = _mlp(path, weights)
            return LoadedModel(model, (model.dim,), {**info, "preset": "mlp"})
        unet, unet_info = load_released_unet(weights)
        latent = state.get("latent")
        decoder = kit_decoder(latent, autoencoder, path)
        if autoencoder is not None:
            latent = {**latent, "autoencoder": str(autoencoder)}  # info says which autoencoder decoded
    else:
        refuse_non_finite(path, state["model"])
        unet, unet_info = load_released_unet(state)
        info = {
            "checkpoint": str(path),
            "kind": "released",
            "weights": "model",
            "global_step": unet_info["global_step"],
        }
        decoder = decoder_from_checkpoint(state["model"])
        latent = None if decoder is None else {"autoencoder": f"{path}:ae.*", "scale": float(decoder.scale)}
    config = unet_info["config"]
    if decoder is not None and decoder.latent_channels != config.in_channels:
        raise CheckpointError(
            f"{path}: the autoencoder makes {decoder.latent_channels}-channel latents but the UNet "
            f"({unet_info['preset']}) takes {config.in_channels} channels"
        )
    return LoadedModel(
        unet,
        (config.in_channels, config.image_size, config.image_size),
        {
            **info,
            "preset": unet_info["preset"],
            "num_params": unet_info["num_params"],
            **({"autoencoder": latent["autoencoder"], "latent_scale": latent["scale"]} if latent else {}),
        },
        decoder,
    )


def _kit_weights(path: Path, state: Mapping[str, Any], use_ema: bool) -> dict[str, Tensor]:
    """The EMA (or raw) weights of a kit checkpoint, checked present and finite."""
    if use_ema and not isinstance(state.get("ema"), Mapping):
        raise CheckpointError(
            f"{path} is a kit training checkpoint without its EMA weights ('ema'): it is damaged or was edited; "
            "retrain, or sample its raw weights (lib.sample --raw-weights)"
        )
    weights = ema_weights(state) if use_ema else dict(state["model"])
    refuse_non_finite(path, weights)
    return weights


def refuse_non_finite(path: Path, weights: Mapping[str, Any]) -> None:
    """CheckpointError when any floating-point tensor of ``weights`` holds nan or inf: a diverged run's weights
    sample nan images silently, and training from them (``--init``) trains on nan."""
    bad = [k for k, v in weights.items() if isinstance(v, Tensor) and v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights (nan or inf in {len(bad)} of {len(weights)} tensors, first {bad[0]!r}): "
            "the run that wrote it diverged; use an earlier checkpoint or retrain with a lower --lr"
        )


def _mlp(path: Path, weights: Mapping[str, Tensor]) -> MLP:
    """:func:`mlp_from_state` with a checkpoint's weights that do not fit the toy MLP reported in one line."""
    try:
        return mlp_from_state(weights)
    except (KeyError, IndexError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: its 'net.*' weights do not fit the kit's MLP ({first[:200]}); the file is damaged or was "
            "written by other code: retrain it"
        ) from err


# ---------------------------------------------------------------------------------------------------------
# The five releases through huggingface_hub
# ---------------------------------------------------------------------------------------------------------
def checkpoint_file(checkpoint: str | os.PathLike[str]) -> Path:
    """A checkpoint argument -> its file: a path as it is, ``released:<name>`` fetched (:func:`fetch_released`)."""
    if str(checkpoint).startswith(RELEASED_PREFIX):
        return fetch_released(str(checkpoint)[len(RELEASED_PREFIX) :])
    return Path(checkpoint)


def check_release_name(name: str) -> str:
    """The release's repository id; an unknown name raises ValueError listing the five."""
    if name not in RELEASED_REPOS:
        raise ValueError(f"unknown released checkpoint {name!r}; use one of {sorted(RELEASED_REPOS)}")
    return RELEASED_REPOS[name]


def _placement_hint(name: str, cause: object) -> str:
    repo = RELEASED_REPOS[name]
    return (
        f"released checkpoint {name!r} ({repo}) is not in the Hugging Face cache and could not be downloaded "
        f"({cause}). On a machine with internet run `hf download {repo} --local-dir <folder>` "
        f"(or huggingface_hub.snapshot_download) and pass the .pt file inside as the checkpoint path, or copy "
        f"the cache folder models--{repo.replace('/', '--')} into "
        f"{os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')}"
    )


def fetch_released(name: str, cache_dir: str | os.PathLike[str] | None = None, offline: bool = False) -> Path:
    """Path of release ``name``'s checkpoint file, downloading it into the Hugging Face cache if needed.

    Offline (no network, or HF_HUB_OFFLINE=1) a checkpoint already in the cache is used; otherwise the error says
    how to place the file by hand.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo = check_release_name(name)
    try:
        folder = snapshot_download(
            repo, cache_dir=cache_dir, local_files_only=offline, allow_patterns=list(CHECKPOINT_PATTERNS)
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise FileNotFoundError(_placement_hint(name, err)) from err
    files = sorted(p for pattern in CHECKPOINT_PATTERNS for p in Path(folder).rglob(pattern))
    if len(files) != 1:
        raise FileNotFoundError(
            f"{repo} snapshot {folder} holds {len(files)} checkpoint files "
            f"({[f.name for f in files]}); pass the one you want as a path"
        )
    return files[0]


def load_released(
    name: str, cache_dir: str | os.PathLike[str] | None = None, offline: bool = False, preset: str | None = None
) -> LoadedModel:
    """Fetch and load release ``name`` -> LoadedModel, checked against its expected preset.

    preset: the lib.unet preset the file must load as. None (the default; what every real use wants) is the
    release's own, lib.paper.RELEASED_PRESETS[name]. Another preset is only for fakes in the released layout
    (lib.fabricate.write_fake_release: the tests and the quick profile of notebook 11), never for a published file.
    """
    expected = preset or RELEASED_PRESETS[name]
    loaded = load_model(fetch_released(name, cache_dir, offline))
    if loaded.info["preset"] != expected:
        raise CheckpointError(
            f"the file fetched for {name!r} loads as preset {loaded.info['preset']!r}, expected "
            f"{expected!r}; the download is not the {name} release"
        )
    return loaded
