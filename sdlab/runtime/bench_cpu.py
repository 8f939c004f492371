"""Smoke benchmark: seconds per image for a local model on this machine.

Run ``python -m sdlab.runtime.bench_cpu MODEL_DIR [--threads N]``; with no model
folder it builds the tiny model in a temporary directory first.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from sdlab.runtime.loader import load_pipeline

logger = logging.getLogger(__name__)


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    # Nearest-rank percentile: with 5 samples p95 is the slowest one, which is what we want to see.
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def smoke_bench(
    model_dir: Path,
    *,
    width: int = 256,
    height: int = 256,
    steps: int = 20,
    repeats: int = 5,
    guidance_scale: float = 7.0,
    device: str | None = None,
    prompt: str = "a red fox in the snow, detailed oil painting",
) -> dict:
    """Time ``repeats`` single-image txt2img runs (after one warm-up) and return the figures.

    Returns a dict with ``median_s``, ``p95_s``, ``min_s``, ``runs_s`` and the settings used;
    the summary is also printed.
    """
    pipe = load_pipeline(Path(model_dir), device=device)
    kwargs = {
        "prompt": prompt,
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
        "width": width,
        "height": height,
    }
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))  # warm-up: allocator, kernels
    runs = []
    for i in range(repeats):
        started = time.perf_counter()
        pipe(**kwargs, generator=torch.Generator().manual_seed(i + 1))
        runs.append(time.perf_counter() - started)
    result = {
        "model": str(model_dir),
        "device": str(pipe.device),
        "threads": torch.get_num_threads(),
        "width": width,
        "height": height,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "repeats": repeats,
        "median_s": statistics.median(runs),
        "p95_s": _percentile(runs, 95),
        "min_s": min(runs),
        "runs_s": runs,
    }
    print(
        f"{Path(model_dir).name}: {width}x{height}, {steps} steps, cfg {guidance_scale}, "
        f"{result['threads']} threads on {result['device']}: "
        f"median {result['median_s']:.3f} s, p95 {result['p95_s']:.3f} s per image ({repeats} runs)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI wrapper around :func:`smoke_bench`."""
    parser = argparse.ArgumentParser(prog="python -m sdlab.runtime.bench_cpu")
    parser.add_argument("model_dir", nargs="?", type=Path, help="diffusers folder (default: build the tiny model)")
    parser.add_argument("--variant", default="tiny", help="variant to build when no model_dir is given")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = dict(width=args.width, height=args.height, steps=args.steps, repeats=args.repeats)
    if args.model_dir is not None:
        smoke_bench(args.model_dir, **bench)
        return 0
    from sdlab.runtime.model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        smoke_bench(build_tiny_model(Path(tmp) / args.variant, variant=args.variant), **bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
