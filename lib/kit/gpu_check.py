"""``python -m lib.kit.gpu_check`` (``make gpu-check``): what the kit does on one CUDA GPU, in under 8 minutes.

Writes ``results/gpu/gpu_check/`` (run.json beside it):

- ``gpu.json``: the GPU model, its memory and capability, torch and CUDA versions, the summary with issue 13's GPU
  targets (the coupling's share of a CIFAR-10 step pipelined < 2 %; bf16 autocast >= 1.8x fp32) and the wall time;
- ``training_throughput.csv``: the CIFAR-10 preset's training step (independent coupling) in fp32, bf16 autocast,
  channels_last and torch.compile (inductor): ms per step, images/s, peak CUDA memory;
- ``coupling_share.csv``: independent and LOOM training steps, paired synchronously and pipelined, with the LOOM
  coupling step alone and its share of the step;
- ``sampling.csv``: midpoint-12 sampling throughput (fp32 and bf16), true NFE, ms per network call;
- ``architectures.csv``: the training step of every released architecture at its released per-GPU batch, in fp32
  and bf16 autocast: images/s and peak memory, which ``python -m lib.kit.reproduce --plan`` (lib.kit.plan) turns
  into GPU-hours (``summary.architecture_images_per_s`` in gpu.json).

Every figure is measured by lib.experiments.benchmarks on the real code paths (lib.train, lib.pairing, lib.solvers).
``--tiny`` runs the same code on the CPU at toy size (the ``tiny`` UNet preset, batch 4, torch.compile with the
"eager" backend, bf16 rows marked as not run) into ``results/gpu-tiny/``: the tests use it; its numbers say nothing
about a GPU.

    python -m lib.kit.gpu_check                  # on a CUDA machine
    python -m lib.kit.gpu_check --tiny           # anywhere: checks the plumbing in seconds
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lib.checkpoints import build_model
from lib.experiments.benchmarks import preset_data, time_sampling, time_training_steps
from lib.kit import results
from lib.paper import RELEASED_CONFIGS
from lib.unet import PRESETS

SHARE_TARGET = 0.02  # issue 13: the coupling's visible share of a CIFAR-10 step, pipelined, below 2 %
BF16_TARGET = 1.8  # issue 13: bf16 autocast at least 1.8x fp32's training throughput


@dataclass(frozen=True)
class CheckSize:
    """How big the check runs: the paper's CIFAR-10 preset on a GPU, or a toy size on the CPU (--tiny)."""

    preset: str
    batch_size: int
    steps: int  # timed turns per contender
    warmup: int  # untimed turns first (torch.compile compiles in the first)
    block: int  # training steps per turn
    sample_batch: int
    sample_steps: int  # timed sampling calls (one untimed first)
    compile_backend: str
    architectures: tuple[tuple[str, int], ...]  # (preset, per-GPU batch) timed in fp32 and bf16 for the plan


# The released configs' architectures at their per-GPU batch (lib.paper.RELEASED_CONFIGS; reflow shares cifar10's).
RELEASED_ARCHITECTURES = tuple(
    dict.fromkeys((c["model"], c["batch_size"]) for name, c in RELEASED_CONFIGS.items() if not c.get("reflow"))
)
GPU_SIZE = CheckSize("cifar10", 128, 8, 3, 5, 256, 3, "inductor", RELEASED_ARCHITECTURES)
TINY_SIZE = CheckSize("tiny", 2, 1, 1, 1, 2, 1, "eager", (("tiny", 2),))
ARCHITECTURE_TURNS = (3, 1, 3)  # (timed turns, untimed turns, steps per turn): ~10 steps of each, for the plan


def gpu_description(device: torch.device) -> dict[str, Any]:
    """The device the check ran on: GPU model, memory, capability and the CUDA/torch versions (or the CPU)."""
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "machine": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_model=props.name,
            gpu_memory_gib=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        info.update(gpu_model=None, note="CPU run at toy size (--tiny): these numbers are not a GPU's")
    return info


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def training_variants(size: CheckSize, device: torch.device, seed: int = 0) -> list[dict[str, Any]]:
    """The preset's training step (independent coupling, paired inside the step) in fp32, bf16 autocast,
    channels_last and torch.compile; bf16 runs only on CUDA (lib.train autocasts there), so on the CPU its row
    says so instead of timing fp32 under another name."""
    data = preset_data(size.preset, 4 * size.batch_size, str(device), seed)
    variants: dict[str, tuple[Callable[[nn.Module], nn.Module], bool, str]] = {
        "fp32": (lambda m: m, False, ""),
        "bf16 autocast": (lambda m: m, True, ""),
        "channels_last": (lambda m: m.to(memory_format=torch.channels_last), False, ""),
        "torch.compile": (lambda m: m, False, size.compile_backend),
    }
    rows = []
    for name, (prepare, bf16, backend) in variants.items():
        if bf16 and device.type != "cuda":
            rows.append({"variant": name, "ran": False, "note": "bf16 autocast runs on CUDA only"})
            continue
        _reset_peak(device)
        model = prepare(build_model(size.preset, (), seed=seed).to(device))
        (row,) = time_training_steps(
            model,
            data,
            size.batch_size,
            size.steps,
            size.warmup,
            size.block,
            seed=seed,
            bf16=bf16,
            couplings=("independent",),
            pairings=("synchronous",),
            compile_backend=backend,
        )
        rows.append(
            {
                "variant": name,
                "ran": True,
                "note": f"torch.compile backend {backend}" if backend else "",
                "step_ms": row["step_ms"],
                "images_per_s": row["images_per_s"],
                "peak_cuda_mib": _peak_mib(device),
            }
        )
        del model
    return rows


def coupling_share(size: CheckSize, device: torch.device, bf16: bool, seed: int = 0) -> list[dict[str, Any]]:
    """Independent and LOOM training steps of the preset, paired synchronously and pipelined, taking turns; per row
    the coupling step alone, its share of the step, and the step over the independent synchronous step."""
    data = preset_data(size.preset, 4 * size.batch_size, str(device), seed)
    _reset_peak(device)
    model = build_model(size.preset, (), seed=seed).to(device)
    rows = time_training_steps(
        model,
        data,
        size.batch_size,
        size.steps,
        size.warmup,
        size.block,
        seed=seed,
        bf16=bf16,
        couplings=("independent", "loom"),
    )
    peak = _peak_mib(device)
    return [{"preset": size.preset, "batch_size": size.batch_size, **r, "peak_cuda_mib": peak} for r in rows]


def sampling(size: CheckSize, device: torch.device, seed: int = 0) -> list[dict[str, Any]]:
    """midpoint-12 sampling throughput of the preset (fp32, and bf16 on CUDA)."""
    cfg = PRESETS[size.preset]
    model = build_model(size.preset, (), seed=seed).to(device)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    rows = []
    for bf16 in (False, True) if device.type == "cuda" else (False,):
        _reset_peak(device)
        timed = time_sampling(
            model, shape, ["midpoint-12"], size.sample_batch, size.sample_steps, warmup=1, seed=seed, bf16=bf16
        )
        rows += [{"preset": size.preset, **r, "peak_cuda_mib": _peak_mib(device)} for r in timed]
    return rows


def architecture_throughput(size: CheckSize, device: torch.device, seed: int = 0) -> list[dict[str, Any]]:
    """Each released architecture's training step (independent coupling, paired inside the step) at its per-GPU
    batch in fp32 and bf16 autocast (bf16 on CUDA only; on the CPU its row says so): images/s and peak memory."""
    steps, warmup, block = ARCHITECTURE_TURNS
    rows: list[dict[str, Any]] = []
    for preset, batch_size in size.architectures:
        data = preset_data(preset, 2 * batch_size, str(device), seed)
        for bf16 in (False, True):
            row: dict[str, Any] = {"preset": preset, "batch_size": batch_size, "precision": "bf16" if bf16 else "fp32"}
            if bf16 and device.type != "cuda":
                rows.append({**row, "ran": False, "note": "bf16 autocast runs on CUDA only"})
                continue
            _reset_peak(device)
            model = build_model(preset, (), seed=seed).to(device)
            (timed,) = time_training_steps(
                model,
                data,
                batch_size,
                steps,
                warmup,
                block,
                seed=seed,
                bf16=bf16,
                couplings=("independent",),
                pairings=("synchronous",),
            )
            rows.append(
                {
                    **row,
                    "ran": True,
                    "note": "",
                    "step_ms": timed["step_ms"],
                    "images_per_s": timed["images_per_s"],
                    "peak_cuda_mib": _peak_mib(device),
                }
            )
            del model
    return rows


def summarise(
    variants: list[dict[str, Any]],
    share: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    architectures: list[dict[str, Any]],
) -> dict[str, Any]:
    """The check's headline numbers and issue 13's GPU targets, from the measured rows."""
    ran = {r["variant"]: r for r in variants if r["ran"]}
    steps = {(r["coupling"], r["pairing"]): r for r in share}
    independent = steps[("independent", "synchronous")]["step_ms"]
    pipelined, synchronous = steps[("loom", "pipelined")], steps[("loom", "synchronous")]
    visible_share = max(0.0, (pipelined["step_ms"] - independent) / pipelined["step_ms"])
    bf16_ratio = ran["bf16 autocast"]["images_per_s"] / ran["fp32"]["images_per_s"] if "bf16 autocast" in ran else None
    return {
        "images_per_s": {name: r["images_per_s"] for name, r in ran.items()},
        "bf16_over_fp32": bf16_ratio,
        "bf16_target": BF16_TARGET,
        "bf16_target_met": None if bf16_ratio is None else bf16_ratio >= BF16_TARGET,
        "loom_coupling_ms": synchronous["coupling_ms"],
        "coupling_share_synchronous": synchronous["share_of_step"],
        "loom_pipelined_over_independent": pipelined["ratio_to_independent"],
        "loom_synchronous_over_independent": synchronous["ratio_to_independent"],
        "coupling_share_pipelined": visible_share,
        "share_target": SHARE_TARGET,
        "share_target_met": visible_share < SHARE_TARGET,
        "midpoint12_images_per_s": {("bf16" if r["bf16"] else "fp32"): r["images_per_s"] for r in samples},
        "architecture_images_per_s": {
            preset: {r["precision"]: r["images_per_s"] for r in architectures if r["preset"] == preset and r["ran"]}
            for preset in dict.fromkeys(r["preset"] for r in architectures)
        },
        "peak_cuda_mib": max((r.get("peak_cuda_mib") or 0.0) for r in [*variants, *share, *samples, *architectures])
        or None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lib.kit.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="toy size on the CPU (tests): plumbing, not GPU numbers")
    parser.add_argument("--results-dir", default="", help="results root (default: <repo>/results)")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run this on a GPU machine, or pass --tiny to check the plumbing on the CPU")
    device = torch.device("cpu") if args.tiny else torch.device("cuda", torch.cuda.current_device())
    size = TINY_SIZE if args.tiny else GPU_SIZE
    started = time.perf_counter()
    root = results.published_root(args.results_dir)  # a command that publishes, like make reproduce
    params = {"QUICK": args.tiny, "SEED": 0, "RESULTS_DIR": str(root), **size.__dict__}
    run = results.start_run("gpu_check", params, profile="gpu-tiny" if args.tiny else "gpu")
    variants = training_variants(size, device)
    run.write_table("training_throughput", variants)
    share = coupling_share(size, device, bf16=device.type == "cuda")
    run.write_table("coupling_share", share)
    samples = sampling(size, device)
    run.write_table("sampling", samples)
    architectures = architecture_throughput(size, device)
    run.write_table("architectures", architectures)
    summary = summarise(variants, share, samples, architectures)
    wall = time.perf_counter() - started
    run.write_json("gpu", {**gpu_description(device), **size.__dict__, "summary": summary, "wall_time_s": wall})
    run.finish()
    print(f"{gpu_description(device)['gpu_model'] or 'CPU (tiny)'}: {wall:.0f} s; {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
