"""``sdlab bench runtime``: the project runtime beside plain diffusers, in one run, on one card.

For each model (full-size SD1.5 at 512² × 25 steps and SDXL at 1024² × 30 steps with random weights on a GPU;
a tiny model on CPU) it measures, per batch size: images/s, p50/p95 latency of one call, peak GPU memory and
utilisation = achieved FLOP/s ÷ the bf16 matmul ceiling measured in the same run. "diffusers" is
``StableDiffusion(XL)Pipeline.__call__`` with its defaults (eager, fp16, SDPA, PIL output); "runtime" is
:func:`sdlab.runtime.batch.generate_batch` on a pipeline prepared by :func:`sdlab.runtime.optimize.apply`.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from sdlab.bench import flops, models
from sdlab.runtime import optimize
from sdlab.runtime.batch import BatchItem, generate_batch
from sdlab.runtime.text import TextCache, encode_texts

logger = logging.getLogger(__name__)
PROMPTS = ("a red fox in the snow, detailed oil painting", "a lighthouse at dusk", "a castle on a hill, watercolor",
           "portrait of a knight in armor", "a blue whale in a deep ocean", "a city street at night, neon lights")
CFG = 7.5


@dataclass
class Row:
    model: str
    impl: str
    batch: int
    images_per_s: float
    p50_s: float
    p95_s: float
    peak_gib: float
    util: float  # achieved FLOP/s over the matmul ceiling
    compile_s: float = 0.0
    settings: str = ""
    runs_s: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Variant:
    """One thing to measure: a label, optimisations (None: plain diffusers ``__call__``) and batch sizes.

    ``via="diffusers"`` calls the pipeline's own ``__call__`` after :func:`optimize.apply` (diffusers with
    ``torch.compile``, the stronger baseline); otherwise the project's batch loop runs.
    """

    label: str
    opts: optimize.Optimizations | None
    batches: tuple[int, ...]
    via: str = "runtime"


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _items(n: int, take: int = 0) -> list[BatchItem]:
    """``n`` images; ``take`` > 0 gives every prompt a new ending, so no timed call reuses an earlier call's prompt
    embeddings (only the empty negative prompt repeats, as in service)."""
    ending = f", take {take}" if take else ""
    return [BatchItem(PROMPTS[i % len(PROMPTS)] + ending, "", 1000 + i, CFG) for i in range(n)]


def _call(pipe: Any, variant: Variant, n: int, size: int, steps: int) -> Callable[[int], Any]:
    """One call of batch ``n`` as a function of ``take`` (see :func:`_items`); returns the images."""
    if variant.opts is None or variant.via == "diffusers":
        def diffusers_call(take: int) -> Any:
            items = _items(n, take)
            return pipe(prompt=[it.prompt for it in items], negative_prompt=[""] * n, num_inference_steps=steps,
                        guidance_scale=CFG, width=size, height=size,
                        generator=[torch.Generator("cpu").manual_seed(it.seed) for it in items]).images
        return diffusers_call
    return lambda take: generate_batch(pipe, _items(n, take), steps=steps, width=size, height=size, output="uint8").images


def measure(pipe: Any, variant: Variant, n: int, *, model: str, size: int, steps: int, repeats: int,
            image_flops: float, ceiling: float, device: str) -> tuple[Row, Any]:
    """Time ``repeats`` calls of batch ``n`` after warm-up, each with new prompts; returns the row and the first image
    of one more (untimed) call with the reference prompts, the image compared across implementations."""
    fn = _call(pipe, variant, n, size, steps)
    takes = itertools.count(1)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn(next(takes))
    _sync(device)
    first_s = time.perf_counter() - t0
    compiled = variant.opts is not None and variant.opts.compiled
    if compiled:
        fn(next(takes))  # CUDA graphs record on the second call of a shape
        _sync(device)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(next(takes))
        _sync(device)
        runs.append(time.perf_counter() - t0)
    p50 = statistics.median(runs)
    row = Row(model, variant.label, n, n / p50, p50, _percentile(runs, 95),
              torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0, n / p50 * image_flops / ceiling,
              first_s if compiled else 0.0, variant.opts.describe() if variant.opts else "diffusers defaults", runs)
    first = np.asarray(fn(0)[0])
    return row, first


def components(pipe: Any, n: int, *, size: int, unet_step_flops: float, vae_flops: float, iters: int = 10) -> dict[str, float]:
    """Where a batch's time goes (CUDA events): one UNet call at the CFG batch, one VAE decode chunk, text encoding."""
    from sdlab.runtime.optimize import settings_of

    opts = settings_of(pipe)
    size_b = 2 * n
    dev, dtype = pipe.device, pipe.unet.dtype
    lat = size // pipe.vae_scale_factor
    # inference tensors, like the loop's: normal ones would fail the compiled graphs' guards and recompile
    with torch.inference_mode():
        return _components(pipe, opts, n, size_b, dev, dtype, lat, size, unet_step_flops, vae_flops, iters)


def unet_inputs(pipe: Any, batch: int, size: int) -> tuple[Any, Any, Any, dict[str, Any] | None]:
    """Random inputs of one UNet call at ``batch`` (the CFG batch) for ``size``² images, as the loop passes them:
    latents, timestep, text embeddings and, for SDXL, the added conditions."""
    dev, dtype = pipe.device, pipe.unet.dtype
    lat = size // pipe.vae_scale_factor
    x = torch.randn(batch, pipe.unet.config.in_channels, lat, lat, device=dev, dtype=dtype)
    t = torch.tensor(500.0, device=dev)
    ehs = torch.randn(batch, 77, pipe.unet.config.cross_attention_dim, device=dev, dtype=dtype)
    added = None
    if getattr(pipe, "text_encoder_2", None) is not None:
        added = {"text_embeds": torch.randn(batch, pipe.text_encoder_2.config.projection_dim, device=dev, dtype=dtype),
                 "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, device=dev, dtype=dtype)}
    return x, t, ehs, added


def cuda_ms(fn: Any, *, warmup: int = 2, iters: int = 10) -> float:
    """Mean milliseconds of ``fn`` on the GPU (CUDA events) after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def _unet_call(pipe: Any, opts: optimize.Optimizations, inputs: tuple[Any, Any, Any, Any]):
    x, t, ehs, added = inputs

    def unet() -> None:
        if opts.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        pipe.unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs=added, return_dict=False)
    return unet


def _components(pipe, opts, n, size_b, dev, dtype, lat, size, unet_step_flops, vae_flops, iters) -> dict[str, float]:
    chunk = opts.vae_batch or n
    z = torch.randn(chunk, pipe.vae.config.latent_channels, lat, lat, device=dev, dtype=pipe.vae.dtype)
    unet_ms = cuda_ms(_unet_call(pipe, opts, unet_inputs(pipe, size_b, size)), iters=iters)
    vae_ms = cuda_ms(lambda: pipe.vae.decode(z, return_dict=False), iters=iters)
    text_ms, text_uncached_ms = _text_ms(pipe, n, iters)
    return {"unet_ms": round(unet_ms, 2), "unet_tflops": round(n * unet_step_flops / unet_ms / 1e9, 1),
            "vae_ms_per_image": round(vae_ms / chunk, 2), "vae_tflops": round(chunk * vae_flops / vae_ms / 1e9, 1),
            "text_ms": round(text_ms, 2), "text_uncached_ms": round(text_uncached_ms, 2)}


def _text_ms(pipe: Any, n: int, iters: int) -> tuple[float, float]:
    """ms to encode one call's texts (``n`` new prompts and ``n`` empty negatives): with the negative cached, as in
    service, and with nothing cached."""
    cache = TextCache.of(pipe)
    takes = itertools.count(10_000)

    def new_prompts() -> None:
        encode_texts(pipe, [it.prompt for it in _items(n, next(takes))] + [""] * n)

    def nothing_cached() -> None:
        cache.clear()
        new_prompts()

    return cuda_ms(new_prompts, iters=iters), cuda_ms(nothing_cached, iters=iters)


def default_variants(device: str, model: str, batches: tuple[int, ...], compiled_batches: tuple[int, ...],
                     ablation: bool) -> list[Variant]:
    """Plain diffusers first, then the runtime: optional ablation steps (cumulative), then the full set."""
    if not device.startswith("cuda"):
        return [Variant("diffusers", None, batches), Variant("runtime", optimize.Optimizations(channels_last=True), batches)]
    out = [Variant("diffusers", None, batches)]
    if ablation:
        small = tuple(b for b in (1, 8) if b in batches) or batches[:1]
        out += [
            Variant("rt-fp16-eager", optimize.Optimizations(dtype="fp16"), small),
            Variant("rt+bf16", optimize.Optimizations(dtype="bf16"), small),
            Variant("rt+chlast", optimize.Optimizations(dtype="bf16", channels_last=True), small),
            Variant("rt+fuseqkv", optimize.Optimizations(dtype="bf16", channels_last=True, fuse_qkv=True), small),
        ]
    out.append(Variant("runtime", optimize.Optimizations.fast(), compiled_batches))
    return out


EXTRA_VARIANTS = {
    # compile without CUDA graphs: what the graphs buy at small batches
    "nographs": lambda b: Variant("rt-nographs", optimize.Optimizations.fast(compile="default"), b),
    # inductor's coordinate-descent kernel tuning on top of the full set
    "tuned": lambda b: Variant("rt-tuned", optimize.Optimizations.fast(inductor_tuning=True), b),
    # decode 4 images per VAE call instead of 1
    "vae4": lambda b: Variant("rt-vae4", optimize.Optimizations.fast(vae_batch=4, batch_buckets=(1, 4, 8, 16)), b),
    # diffusers' own torch.compile recipe through its __call__: channels_last, UNet with CUDA graphs, VAE decoder
    "dcompiled": lambda b: Variant("diffusers-compiled", optimize.Optimizations(
        dtype="bf16", channels_last=True, compile="reduce-overhead"), b, via="diffusers"),
    # the full set with cuDNN's attention (Hopper) tried first, and with FlashAttention first
    "cudnn": lambda b: Variant("rt-cudnn-attn", optimize.Optimizations.fast(attention="cudnn"), b),
    "flash": lambda b: Variant("rt-flash-attn", optimize.Optimizations.fast(attention="flash"), b),
}


def kernel_profile(pipe: Any, n: int, *, size: int, iters: int = 3) -> dict[str, Any]:
    """GPU time of one UNet call at the CFG batch of ``n`` by kind of kernel (torch.profiler, CUDA activities).

    The kinds are read from kernel names: attention (flash / cuDNN / memory-efficient SDPA), convolution
    (cuDNN and implicit-GEMM kernels), matmul (cuBLAS incl. its ``nvjet`` kernels / CUTLASS / Triton ``mm``), inductor's
    fused Triton kernels (GroupNorm, SiLU, adds, layout changes).
    """
    from torch.profiler import ProfilerActivity, profile

    opts = optimize.settings_of(pipe)
    with torch.inference_mode(), optimize.attention_context(opts):
        unet = _unet_call(pipe, opts, unet_inputs(pipe, 2 * n, size))
        for _ in range(2):
            unet()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                unet()
            torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    top: dict[str, float] = {}
    for ev in prof.key_averages():
        us = float(getattr(ev, "device_time_total", 0.0) or getattr(ev, "cuda_time_total", 0.0))
        if us <= 0 or ev.key.startswith(("cudaGraph", "Memcpy", "Memset")) or ev.key.startswith("aten::"):
            continue
        kind = _kernel_kind(ev.key)
        kinds[kind] = kinds.get(kind, 0.0) + us / iters / 1000
        top[ev.key[:90]] = top.get(ev.key[:90], 0.0) + us / iters / 1000
    total = sum(kinds.values())
    return {"batch": n, "kernel_ms_per_unet_call": round(total, 2),
            "by_kind_ms": {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "by_kind_share": {k: round(v / total, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])} if total else {},
            "top_kernels_ms": {k: round(v, 2) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:15]}}


def _kernel_kind(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")):
        return "attention"
    if any(k in low for k in ("conv", "implicit", "xmma_fprop", "dgrad", "wgrad", "fprop")):
        return "convolution"
    if any(k in low for k in ("gemm", "sm90_xmma", "cutlass", "cublas", "nvjet", "triton_tem_fused_mm", "matmul", "mm_")):
        return "matmul"
    if low.startswith("triton_"):
        return "fused triton (norm, activation, elementwise)"
    return "other"


def _pixel_diff(a: Any, b: Any) -> dict[str, float]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"mean": round(float(d.mean()), 3), "max": int(d.max())}


def with_cache_dir(variants: list[Variant], cache_dir: str | None) -> list[Variant]:
    """The variants with their compile caches in ``cache_dir`` (every other field kept, ``via`` included)."""
    if not cache_dir:
        return variants
    return [dataclasses.replace(v, opts=v.opts and dataclasses.replace(v.opts, cache_dir=cache_dir)) for v in variants]


def bench_model(model: str, variants: list[Variant], *, device: str, size: int, steps: int, repeats: int,
                ceiling: float, dtype: str = "bf16", profile: bool = True) -> tuple[list[Row], dict[str, Any]]:
    """Measure every variant of one model; the pipeline is built once and optimised step by step.

    Every variant runs at ``dtype`` (plain diffusers too), so the images compare at equal precision.
    """
    from sdlab.runtime.loader import resolve_dtype

    t0 = time.perf_counter()
    pipe = models.build(model, device=device, dtype=resolve_dtype(dtype if device.startswith("cuda") else "fp32", device))
    _sync(device)
    notes: dict[str, Any] = {"build_s": round(time.perf_counter() - t0, 2)}
    counted = flops.image_flops(pipe, width=size, height=size, steps=steps)
    notes |= {"tflop_per_image": counted.total / 1e12, "unet_step_tflop": counted.unet_step / 1e12,
              "vae_tflop": counted.vae / 1e12, "text_tflop": counted.text / 1e12,
              "floor_images_per_s": ceiling / counted.total}
    rows: list[Row] = []
    same_seed: dict[str, dict[int, Any]] = {}
    for variant in variants:
        if variant.opts is not None:
            optimize.apply(pipe, variant.opts)
        for n in variant.batches:
            try:
                row, first = measure(pipe, variant, n, model=model, size=size, steps=steps, repeats=repeats,
                                     image_flops=counted.total, ceiling=ceiling, device=device)
            except Exception as exc:  # one failing configuration must not lose the others' figures
                logger.exception("%s %s batch %d failed", model, variant.label, n)
                notes.setdefault("errors", []).append(f"{variant.label} batch {n}: {exc.__class__.__name__}: {exc}"[:300])
                continue
            rows.append(row)
            same_seed.setdefault(variant.label, {})[n] = first
            print(format_row(row), flush=True)
            if variant.opts is not None and variant.opts.compiled and device.startswith("cuda"):
                parts: dict[str, Any]
                try:
                    parts = components(pipe, n, size=size, unet_step_flops=counted.unet_step, vae_flops=counted.vae)
                except Exception as exc:
                    parts = {"error": f"{exc.__class__.__name__}: {exc}"[:200]}
                parts["loop_other_ms"] = round(1000 * row.p50_s - steps * parts.get("unet_ms", 0)
                                               - n * parts.get("vae_ms_per_image", 0), 1)
                notes[f"components_{variant.label}_{n}"] = parts
                print(f"# components {variant.label} batch {n}: {json.dumps(parts)}", flush=True)
                if profile and n == max(variant.batches) and variant.via == "runtime":
                    try:
                        prof = kernel_profile(pipe, n, size=size)
                    except Exception as exc:
                        prof = {"error": f"{exc.__class__.__name__}: {exc}"[:200]}
                    notes[f"profile_{variant.label}_{n}"] = prof
                    print(f"# profile {variant.label} batch {n}: {json.dumps(prof)}", flush=True)
        gc.collect()
    # Same seed, same image: the first image of every batch against the batch-1 image (same prompt and seed).
    for label, firsts in same_seed.items():
        if 1 in firsts and firsts[1] is not None:
            one = firsts[1].astype(np.int16)
            diffs = {n: float(np.abs(one - f.astype(np.int16)).mean()) for n, f in firsts.items() if n != 1}
            if diffs:
                notes[f"same_seed_mean_abs_diff_{label}"] = diffs
    # Ours against diffusers' image: same prompt, seed, sampler and precision, first image of each batch size.
    for label, firsts in same_seed.items():
        base = same_seed.get("diffusers", {})
        if label == "diffusers":
            continue
        against = {n: _pixel_diff(base[n], f) for n, f in firsts.items() if base.get(n) is not None and f is not None}
        if against:
            notes[f"vs_diffusers_mean_abs_diff_{label}"] = against
    del pipe
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows, notes


HEADER = (f"{'model':<8} {'impl':<14} {'batch':>5} {'img/s':>8} {'p50_s':>8} {'p95_s':>8} {'peak_GiB':>8} {'util%':>6} "
          f"{'compile_s':>9}")


def format_row(r: Row) -> str:
    return (f"{r.model:<8} {r.impl:<14} {r.batch:>5} {r.images_per_s:>8.3f} {r.p50_s:>8.4f} {r.p95_s:>8.4f} "
            f"{r.peak_gib:>8.2f} {100 * r.util:>6.1f} {r.compile_s:>9.1f}")


def environment(device: str) -> dict[str, Any]:
    import diffusers
    import transformers

    env: dict[str, Any] = {"device": device, "torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d")}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        env |= {"card": props.name, "card_memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
        try:
            import subprocess

            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip().split("\n")[0]
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env |= {"card": "cpu", "threads": torch.get_num_threads()}
    return env


def run(*, models_: list[str], device: str, batches: tuple[int, ...], compiled_batches: tuple[int, ...],
        repeats: int, ablation: bool, steps: int | None, size: int | None, cache_dir: str | None,
        extra: tuple[tuple[str, tuple[int, ...]], ...] = (), dtype: str = "bf16") -> dict[str, Any]:
    """The whole benchmark; prints the table as it goes and returns everything (for ``--json``)."""
    env = environment(device) | {"dtype": dtype}
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    ceiling = flops.matmul_ceiling(device)
    shape = "bf16 8192³" if device.startswith("cuda") else "fp32 1024³"
    print(f"# matmul ceiling {ceiling / 1e12:.1f} TFLOP/s ({shape})", flush=True)
    print(HEADER, flush=True)
    result: dict[str, Any] = {"env": env, "ceiling_tflops": ceiling / 1e12, "models": {}}
    for name in models_:
        family, default_size, default_steps = models.MODELS[name]
        s, n_steps = size or default_size, steps or default_steps
        variants = default_variants(device, name, batches, compiled_batches, ablation)
        variants += [EXTRA_VARIANTS[e](sizes) for e, sizes in extra]
        variants = with_cache_dir(variants, cache_dir)
        rows, notes = bench_model(name, variants, device=device, size=s, steps=n_steps, repeats=repeats, ceiling=ceiling,
                                  dtype=dtype)
        summary = summarise(name, rows, notes, s, n_steps)
        print(summary, flush=True)
        result["models"][name] = {"size": s, "steps": n_steps, "rows": [asdict(r) for r in rows], "notes": notes}
    if cache_dir:
        optimize.save_compile_cache(cache_dir)
    return result


def summarise(name: str, rows: list[Row], notes: dict[str, Any], size: int, steps: int) -> str:
    """Best throughput and batch-1 latency of each implementation, and the floor."""
    lines = [f"# {name} {size}x{size} {steps} steps: {notes['tflop_per_image']:.4g} TFLOP/image "
             f"(UNet step {notes['unet_step_tflop']:.4g}, VAE {notes['vae_tflop']:.4g}, text {notes['text_tflop']:.4g}); "
             f"floor {notes['floor_images_per_s']:.2f} img/s"]
    for impl in dict.fromkeys(r.impl for r in rows):
        mine = [r for r in rows if r.impl == impl]
        best = max(mine, key=lambda r: r.images_per_s)
        one = next((r for r in mine if r.batch == 1), None)
        latency = f"batch-1 p50 {one.p50_s:.3f} s" if one else "no batch-1 run"
        lines.append(f"# {name} {impl}: best {best.images_per_s:.2f} img/s at batch {best.batch} "
                     f"({100 * best.util:.0f}% of floor), {latency}")
    for key, value in notes.items():
        if key.startswith(("same_seed", "vs_diffusers")) or key == "errors":
            lines.append(f"# {name} {key}: {json.dumps(value)}")
    return "\n".join(lines)
