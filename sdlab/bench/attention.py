"""``sdlab bench attention``: each SDPA backend at the attention shapes of SD1.5 and SDXL, alone and in the UNet.

The UNet's attention layers are torch's ``scaled_dot_product_attention``; which kernel runs is the backend
(FlashAttention 2, cuDNN's fused attention, memory-efficient). This measures each backend at the model's own
shapes (bf16, the CFG batch) and an eager UNet forward with each backend first, so the choice of
``Optimizations.attention`` rests on a measurement on the card at hand.
"""

from __future__ import annotations

from typing import Any

import torch

from sdlab.bench.runtime import cuda_ms, unet_inputs

# (model, where, heads, tokens, key tokens, head width) for one image; the batch is 2 × images (CFG).
SHAPES = (
    ("sd15", "64² self", 8, 4096, 4096, 40),
    ("sd15", "64² cross", 8, 4096, 77, 40),
    ("sd15", "32² self", 8, 1024, 1024, 80),
    ("sd15", "16² self", 8, 256, 256, 160),
    ("sdxl", "64² self", 10, 4096, 4096, 64),
    ("sdxl", "64² cross", 10, 4096, 77, 64),
    ("sdxl", "32² self", 20, 1024, 1024, 64),
)
BACKENDS = ("flash", "cudnn", "efficient")


def kernels(images: dict[str, int]) -> list[dict[str, Any]]:
    """ms and TFLOP/s of each backend at each shape (``images``: images per call, by model)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION}
    rows = []
    for model, where, heads, tokens, keys, width in SHAPES:
        b = 2 * images[model]
        q = torch.randn(b, heads, tokens, width, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, heads, keys, width, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        flop = 4 * b * heads * tokens * keys * width
        row: dict[str, Any] = {"model": model, "where": where, "batch": b, "head_width": width}
        for name in BACKENDS:
            try:
                with sdpa_kernel(chosen[name]):
                    ms = cuda_ms(lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                                 warmup=3, iters=20)
                row[name] = {"ms": round(ms, 3), "tflops": round(flop / ms / 1e9, 1)}
            except RuntimeError as exc:  # the backend cannot run this shape
                row[name] = {"error": str(exc).splitlines()[0][:120]}
        rows.append(row)
    return rows


def unet(model: str, images: int, *, iters: int = 10) -> dict[str, Any]:
    """An eager UNet forward (bf16, channels_last, CFG batch) with each backend tried first."""
    from sdlab.bench import models
    from sdlab.runtime.optimize import Optimizations, attention_context

    pipe = models.build(model, device="cuda", dtype=torch.bfloat16)
    pipe.unet.to(memory_format=torch.channels_last)
    x, t, ehs, added = unet_inputs(pipe, 2 * images, models.MODELS[model][1])
    out: dict[str, Any] = {"model": model, "images": images}
    net = pipe.unet
    with torch.inference_mode():
        for name in ("auto",) + BACKENDS:
            with attention_context(Optimizations(attention=name)):
                out[name] = round(cuda_ms(lambda: net(x, t, encoder_hidden_states=ehs, added_cond_kwargs=added,
                                                      return_dict=False), warmup=3, iters=iters), 2)
    return out
