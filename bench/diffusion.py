"""Diffusion benchmark: images per second of the SD-Turbo and SDXL architectures, batch 1 and
the best batch, with and without the diffusers engine's optimisations.

No weights can be downloaded, so the pipelines are built from the published architecture
configs with random weights (`imageforge.engines.diffusers.random_models`): the compute per
image is the same as with trained weights; only the pictures are noise.

Each measured call is a whole pipeline call as the engine makes it (prompt encoding, `--steps`
denoising steps, VAE decode, conversion to PIL images), timed after a warm-up call, the median
of `--repeats`. Variants, interleaved pass by pass so that both see the same machine state:

- plain: diffusers' unfused attention (AttnProcessor) and contiguous tensors;
- engine: what the engine applies (`loading.optimise`): PyTorch's fused attention (SDPA) and,
  on CUDA, channels-last convolutions;
- compiled: the engine's setup plus torch.compile of the denoiser (`compile = true`), measured
  for one configuration only (`--compile ARCH@SIZE`, batch 1) since each compilation takes
  minutes.

Defaults: on CUDA, sd-turbo and sdxl at 512² and 1024², batches 1, 2, 4, 8, in float16; on
CPU, the tiny test architectures at 64² and 128², batches 1 and 2, in float32 (the CPU run
checks the script, its figures say nothing about real models). `--budget-s` stops starting
new configurations when the time is up; what was skipped is reported.

Prints one JSON object on stdout, a Markdown table and progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing imageforge (a GPU machine with only torch).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from imageforge.engines.diffusers.loading import image_to_image, optimise
from imageforge.engines.diffusers.random_models import ARCHITECTURES, build_pipeline

PROMPT = "a lighthouse on a cliff at dusk, volumetric light, 35 mm photograph"


def main() -> int:
    args = parse_args()
    device = torch.device(args.device if args.device != "auto" else default_device())
    cuda = device.type == "cuda"
    archs = args.arch or (["sd-turbo", "sdxl"] if cuda else ["tiny-sd", "tiny-sdxl"])
    sizes = args.size or ([512, 1024] if cuda else [64, 128])
    batches = args.batch or ([1, 2, 4, 8] if cuda else [1, 2])
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    compile_target = (
        args.compile if args.compile is not None else (f"{archs[0]}@{sizes[0]}" if cuda else "")
    )
    started = time.monotonic()
    report: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "dtype": str(dtype).removeprefix("torch."),
        "steps": args.steps,
        "repeats": args.repeats,
        "results": [],
        "skipped": [],
    }
    # Random weights overflow float16 now and then; the NaNs they leave are harmless here.
    warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
    for arch in archs:
        pipeline = build_on(device, arch, dtype)
        for size in sizes:
            for batch in batches:
                if time.monotonic() - started > args.budget_s:
                    report["skipped"].append(f"{arch}@{size} batch {batch}")
                    continue
                try:
                    results = measure(pipeline, device, size, batch, args)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    report["skipped"].append(f"{arch}@{size} batch {batch}: out of memory")
                    continue
                for variant, seconds in results.items():
                    report["results"].append(row(arch, size, batch, variant, seconds))
                log(
                    f"{arch} {size}² batch {batch}: "
                    + ", ".join(f"{v} {batch / s:.2f} img/s" for v, s in results.items())
                )
            if compile_target == f"{arch}@{size}":
                if time.monotonic() - started > args.budget_s:
                    report["skipped"].append(f"{arch}@{size} compiled")
                else:
                    seconds, compile_s = measure_compiled(pipeline, device, size, args)
                    report["results"].append(row(arch, size, 1, "compiled", seconds))
                    report["compile_seconds"] = round(compile_s, 1)
                    log(
                        f"{arch} {size}² compiled: {1 / seconds:.2f} img/s "
                        f"(compiling took {compile_s:.0f} s)"
                    )
                    pipeline.unet = pipeline.unet._orig_mod  # back to eager for what follows
        del pipeline
        if cuda:
            torch.cuda.empty_cache()
    report["summary"] = summarise(report["results"])
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    log(markdown(report))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda › mps › cpu), cuda, cpu, …")
    parser.add_argument(
        "--arch",
        action="append",
        choices=sorted(ARCHITECTURES),
        help="repeatable; default sd-turbo and sdxl (CPU: the tiny ones)",
    )
    parser.add_argument("--size", action="append", type=int, help="square edge, repeatable")
    parser.add_argument("--batch", action="append", type=int, help="batch size, repeatable")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per image")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"])
    parser.add_argument(
        "--compile", metavar="ARCH@SIZE", help="the one configuration to torch.compile; '' for none"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="start no new configuration after this many seconds",
    )
    return parser.parse_args()


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (
        f"{device.type} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads)"
    )


def build_on(device: torch.device, arch: str, dtype: torch.dtype) -> Any:
    began = time.monotonic()
    pipeline = build_pipeline(ARCHITECTURES[arch], dtype=dtype, device=device)
    pipeline.set_progress_bar_config(disable=True)
    image_to_image(pipeline)  # as the engine does; shares the weights
    log(f"built {arch} on {device} in {time.monotonic() - began:.1f} s")
    return pipeline


def set_plain(pipeline: Any) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    pipeline.unet.set_attn_processor(AttnProcessor())
    pipeline.unet.to(memory_format=torch.contiguous_format)
    pipeline.vae.to(memory_format=torch.contiguous_format)


def generate(pipeline: Any, device: torch.device, size: int, batch: int, steps: int) -> float:
    generators = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]
    synchronize(device)
    began = time.perf_counter()
    with torch.inference_mode():
        pipeline(
            prompt=[PROMPT] * batch,
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=0.0,
            generator=generators,
            output_type="pil",
        )
    synchronize(device)
    return time.perf_counter() - began


def measure(
    pipeline: Any, device: torch.device, size: int, batch: int, args: argparse.Namespace
) -> dict[str, float]:
    """Median seconds per call of each variant, passes interleaved."""
    variants = {
        "plain": lambda: set_plain(pipeline),
        "engine": lambda: optimise(pipeline, device, compile_denoiser=False),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for apply in variants.values():  # warm-up: kernels chosen, memory allocated
        apply()
        generate(pipeline, device, size, batch, args.steps)
    for _ in range(args.repeats):
        for name, apply in variants.items():
            apply()
            times[name].append(generate(pipeline, device, size, batch, args.steps))
    return {name: statistics.median(values) for name, values in times.items()}


def measure_compiled(
    pipeline: Any, device: torch.device, size: int, args: argparse.Namespace
) -> tuple[float, float]:
    optimise(pipeline, device, compile_denoiser=True)
    began = time.monotonic()
    generate(pipeline, device, size, 1, args.steps)  # compiles
    compile_seconds = time.monotonic() - began
    times = [generate(pipeline, device, size, 1, args.steps) for _ in range(args.repeats)]
    return statistics.median(times), compile_seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def row(arch: str, size: int, batch: int, variant: str, seconds: float) -> dict[str, Any]:
    return {
        "arch": arch,
        "size": size,
        "batch": batch,
        "variant": variant,
        "seconds_per_call": round(seconds, 4),
        "seconds_per_image": round(seconds / batch, 4),
        "images_per_second": round(batch / seconds, 3),
    }


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per architecture, size and variant: batch 1 and the best batch."""
    summary = []
    keys = sorted({(r["arch"], r["size"], r["variant"]) for r in results})
    for arch, size, variant in keys:
        rows = [r for r in results if (r["arch"], r["size"], r["variant"]) == (arch, size, variant)]
        best = max(rows, key=lambda r: r["images_per_second"])
        single = next((r for r in rows if r["batch"] == 1), None)
        summary.append(
            {
                "arch": arch,
                "size": size,
                "variant": variant,
                "batch1_images_per_second": single["images_per_second"] if single else None,
                "batch1_seconds_per_image": single["seconds_per_image"] if single else None,
                "best_batch": best["batch"],
                "best_images_per_second": best["images_per_second"],
                "best_seconds_per_image": best["seconds_per_image"],
            }
        )
    return summary


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['device']}, torch {report['torch']}, diffusers {report['diffusers']}, "
        f"{report['dtype']}, {report['steps']} steps",
        "",
        "| model | size | variant | batch 1: img/s (s/img) | best batch: img/s (s/img) |",
        "|---|---|---|---|---|",
    ]
    for s in report["summary"]:
        single = (
            f"{s['batch1_images_per_second']:.2f} ({s['batch1_seconds_per_image']:.3f})"
            if s["batch1_images_per_second"] is not None
            else "—"
        )
        lines.append(
            f"| {s['arch']} | {s['size']}² | {s['variant']} | {single} | "
            f"{s['best_images_per_second']:.2f} ({s['best_seconds_per_image']:.3f}) at "
            f"{s['best_batch']} |"
        )
    return "\n".join(lines)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    sys.exit(main())
