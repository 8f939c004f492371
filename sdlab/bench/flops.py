"""The arithmetic floor: FLOPs per image (counted by torch) over the card's measured matmul ceiling."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ImageFlops:
    """FLOPs (2 per multiply-add) of one image: text encoding, the UNet steps (with CFG), the VAE decode."""

    text: float
    unet_step: float
    vae: float
    steps: int

    @property
    def total(self) -> float:
        return self.text + self.steps * self.unet_step + self.vae


def _count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def image_flops(pipe: Any, *, width: int, height: int, steps: int) -> ImageFlops:
    """Count one image's FLOPs on the runtime's own path (eager; call it before compiling).

    Runs :func:`~sdlab.runtime.batch.generate_batch` for one and for two steps: the difference is one
    UNet step (a batch of 2 with CFG); a one-step run minus that step is text + VAE.
    """
    from sdlab.runtime.batch import BatchItem, generate_batch

    item = [BatchItem("a red fox in the snow", seed=0, cfg_scale=7.5)]

    def run(n: int):
        return lambda: generate_batch(pipe, item, steps=n, width=width, height=height, output="uint8")

    one, two = _count(run(1)), _count(run(2))
    unet_step = two - one
    with torch.inference_mode():
        vae_in = torch.zeros(1, pipe.vae.config.latent_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor,
                             device=pipe.device, dtype=pipe.vae.dtype)
        vae = _count(lambda: pipe.vae.decode(vae_in, return_dict=False))
    return ImageFlops(text=max(0.0, one - unet_step - vae), unet_step=unet_step, vae=vae, steps=steps)


def matmul_ceiling(device: str, *, dtype: torch.dtype | None = None, n: int | None = None, iters: int = 20) -> float:
    """Measured dense matmul rate in FLOP/s: an n×n×n product on random data, median of ``iters`` timings."""
    cuda = device.startswith("cuda")
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    n = n or (8192 if cuda else 1024)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    times = []
    for i in range(iters + 3):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            torch.mm(a, b)
            seconds = time.perf_counter() - t0
        if i >= 3:  # warm-up: handles, clocks
            times.append(seconds)
    return 2 * n**3 / statistics.median(times)
