"""Load the GPU kernels a model's first image needs while Python is still importing diffusers and transformers.

A process loads each CUDA kernel on its first use (``CUDA_MODULE_LOADING=LAZY``, the default), and the first process
on a machine reads cuDNN's fused attention kernels from disk: on fresh H200 machines the first eager SD1.5 UNet call
took 3.0–4.2 s, 2.7 s of it in attention, against 0.05 s for the second call and 0.7–0.9 s for the first call of a
later process (``python -m sdlab.bench.start_probe``; docs/benchmarks.md). A pod on a node just launched is such a
first process. Loaded kernels belong to the process, not the thread, so a side thread that runs each of the model's
attention shapes once (plus a matmul and a convolution) while the main thread spends its ~8 s importing takes that
cost off the first image (0.96 s for the first UNet call of a fresh machine with it). The shapes come from the
model's own config files, read as JSON: nothing here needs diffusers.

Torch's operators release the GIL, so the imports beside the work go on; with the disk cache already warm, starts
with and without the pre-load measured the same within their spread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

TEXT_TOKENS = 77  # CLIP's context: the length of every prompt's token rows, and of the UNet's cross-attention keys


@dataclass(frozen=True)
class AttentionShape:
    """One scaled-dot-product-attention call: batch, heads, query and key lengths, head width, causal or not."""

    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    causal: bool = False


def _per_block(value: int | list[int], blocks: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * blocks


def attention_shapes(model_dir: str | Path) -> list[AttentionShape]:
    """The attention calls of one txt2img image of the diffusers folder ``model_dir`` at its native size: the text
    encoders (prompt and negative prompt together), the UNet's self- and cross-attention at each level that has
    attention (the CFG batch), and the VAE decoder's mid-block attention. Empty when the folder has no configs
    (a single-file checkpoint)."""
    root = Path(model_dir)
    shapes: set[AttentionShape] = set()
    rows = 2  # one image with CFG: the prompt's row and the negative prompt's
    for config_file in sorted(root.glob("text_encoder*/config.json")):
        config = json.loads(config_file.read_text())
        heads = config["num_attention_heads"]
        shapes.add(AttentionShape(rows, heads, TEXT_TOKENS, TEXT_TOKENS, config["hidden_size"] // heads, causal=True))
    unet_file = root / "unet" / "config.json"
    if unet_file.is_file():
        unet = json.loads(unet_file.read_text())
        channels = unet["block_out_channels"]
        blocks = len(channels)
        # diffusers' naming: attention_head_dim is the number of heads when num_attention_heads is not given
        heads = _per_block(unet.get("num_attention_heads") or unet["attention_head_dim"], blocks)
        side = unet["sample_size"]
        levels = {i for i, kind in enumerate(unet["down_block_types"]) if "CrossAttn" in kind}
        levels |= {blocks - 1 - i for i, kind in enumerate(unet["up_block_types"]) if "CrossAttn" in kind}
        if "CrossAttn" in (unet.get("mid_block_type") or ""):
            levels.add(blocks - 1)
        for level in sorted(levels):
            tokens = (side >> level) ** 2
            width = channels[level] // heads[level]
            shapes.add(AttentionShape(rows, heads[level], tokens, tokens, width))
            shapes.add(AttentionShape(rows, heads[level], tokens, TEXT_TOKENS, width))
        vae_file = root / "vae" / "config.json"
        if vae_file.is_file():
            vae = json.loads(vae_file.read_text())
            if vae.get("mid_block_add_attention", True):
                # the decoder's mid block attends over the latent's pixels
                shapes.add(AttentionShape(1, 1, side**2, side**2, vae["block_out_channels"][-1]))
    return sorted(shapes, key=lambda s: (s.causal, -s.q_len, s.kv_len, s.head_dim))


def _run(shapes: list[AttentionShape], device: str, dtype: torch.dtype) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        a = torch.randn(256, 256, device=device, dtype=dtype)
        (a @ a).sum()
        conv = torch.nn.Conv2d(4, 32, 3, padding=1).to(device, dtype)
        conv(torch.randn(2, 4, 32, 32, device=device, dtype=dtype))
        for s in shapes:
            # the layout the models' attention hands over: (batch, tokens, heads, width) viewed as (batch, heads, ...)
            q = torch.randn(s.batch, s.q_len, s.heads, s.head_dim, device=device, dtype=dtype).transpose(1, 2)
            kv = torch.randn(s.batch, s.kv_len, s.heads, s.head_dim, device=device, dtype=dtype).transpose(1, 2)
            torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=s.causal)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()  # the VAE's attention at full size can take hundreds of MB; hand them back
    return time.perf_counter() - started


def preload(model_dir: str | Path | None, *, device: str, dtype: torch.dtype) -> float | None:
    """Run ``model_dir``'s attention shapes, a matmul and a convolution once on ``device``; the seconds it took, or
    None when it stopped. Failures are logged, never raised: this only saves time, and the first image loads
    whatever this did not."""
    try:  # a config this reading does not know (a missing key, say) must not stop the server
        shapes = attention_shapes(model_dir) if model_dir is not None else []
        seconds = _run(shapes, device, dtype)
    except Exception as exc:
        logger.warning("GPU kernel pre-load stopped: %s: %s", type(exc).__name__, exc)
        return None
    logger.info("GPU kernels pre-loaded (%d attention shapes, %s) in %.2f s", len(shapes), dtype, seconds)
    return seconds


def start(model_dir: str | Path | None, *, device: str, dtype: torch.dtype) -> threading.Thread | None:
    """:func:`preload` in a daemon thread, begun now; None off CUDA (a CPU has no kernels to load)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    thread = threading.Thread(target=preload, args=(model_dir,), kwargs={"device": device, "dtype": dtype},
                              name="sdlab-prewarm", daemon=True)
    thread.start()
    return thread
