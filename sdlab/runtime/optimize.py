"""Speed switches for a loaded pipeline: precision, attention, memory layout, fused QKV, ``torch.compile``.

Every optimisation is one field of the frozen :class:`Optimizations`, so each can be measured on and off
(``sdlab bench runtime`` does) and set from the command line of ``python -m sdlab.runtime``. The loader calls
:func:`apply` once after loading; the batch loop (:mod:`sdlab.runtime.batch`) reads the few settings it needs
(``vae_batch``, ``batch_buckets``, whether CUDA graphs are in use) from the attributes :func:`apply` leaves
on the pipeline.

Compilation is paid once per shape: the compile cache (``cache_dir``) keeps inductor's FX-graph and Triton
caches on disk (``TORCHINDUCTOR_CACHE_DIR``), and :func:`save_compile_cache` / :func:`load_compile_cache`
write and read PyTorch's portable "mega-cache" artifacts, so a new pod on the same image and card starts warm.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient")
MEGA_CACHE_FILE = "sdlab-mega-cache.bin"


@dataclass(frozen=True)
class Optimizations:
    """What :func:`apply` does to a pipeline. The defaults change nothing (plain diffusers behaviour)."""

    dtype: str | None = None  # "fp16", "bf16", "fp32"; None: the loader's default (fp16 on CUDA, fp32 on CPU)
    sdpa: bool = True  # torch's scaled_dot_product_attention (diffusers' default on torch 2)
    attention: str = "auto"  # SDPA backend tried first: auto (torch's order), flash, cudnn or efficient
    channels_last: bool = False  # NHWC UNet and VAE: cuDNN's fast convolution layout
    fuse_qkv: bool = False  # one matmul for Q, K and V (self-attention) and for K, V (cross-attention)
    compile: str = "off"  # torch.compile mode of the UNet; one of COMPILE_MODES
    compile_vae: bool = True  # also compile the VAE decoder (inductor's default mode) when compile is on
    cudnn_benchmark: bool = False  # let cuDNN time its convolution algorithms per shape
    cache_dir: str | None = None  # compile caches (inductor + Triton + mega-cache) live here
    vae_batch: int = 0  # images per VAE decode call; 0: all at once. 1 keeps one compiled decoder shape
    vae_tiling: bool = False  # decode in overlapping tiles: less memory for large images, a little slower
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16)  # compiled batch sizes; batches are padded up to one
    inductor_tuning: bool = False  # coordinate-descent tuning of inductor's Triton kernels: longer compile
    text_graphs: bool = False  # replay the text encoders as CUDA graphs (CUDA only): one launch per encoder call

    def __post_init__(self) -> None:
        problems = []
        if self.compile not in COMPILE_MODES:
            problems.append(f"compile={self.compile!r}: use one of {', '.join(COMPILE_MODES)}")
        if self.attention not in ATTENTION_BACKENDS:
            problems.append(f"attention={self.attention!r}: use one of {', '.join(ATTENTION_BACKENDS)}")
        if self.vae_batch < 0:
            problems.append(f"vae_batch={self.vae_batch}: use 0 (all at once) or a positive number")
        if not self.batch_buckets or any(b < 1 for b in self.batch_buckets):
            problems.append(f"batch_buckets={self.batch_buckets}: use positive batch sizes, e.g. 1,2,4,8,16")
        if problems:
            raise ValueError("bad optimisation settings: " + "; ".join(problems))

    @property
    def compiled(self) -> bool:
        return self.compile != "off"

    @property
    def cuda_graphs(self) -> bool:
        return self.compile in ("reduce-overhead", "max-autotune")

    @classmethod
    def fast(cls, **overrides: Any) -> Optimizations:
        """The settings the GPU benchmark uses for the project runtime (see docs/benchmarks.md)."""
        settings: dict[str, Any] = dict(
            dtype="bf16",
            channels_last=True,
            fuse_qkv=True,
            compile="reduce-overhead",
            cudnn_benchmark=True,
            vae_batch=1,
            text_graphs=True,
        )
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Optimizations:
        """``"off"`` (plain diffusers) or ``"fast"``."""
        if name == "off":
            return cls(**overrides)
        if name == "fast":
            return cls.fast(**overrides)
        raise ValueError(f"unknown optimisation preset {name!r}; use off or fast")

    def describe(self) -> str:
        """One line naming the switches that differ from plain diffusers."""
        base = Optimizations()
        names = [f.name for f in dataclasses.fields(self)]
        changed = [f"{n}={getattr(self, n)}" for n in names if getattr(self, n) != getattr(base, n)]
        return ", ".join(changed) or "none"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The optimisation flags of ``python -m sdlab.runtime`` (``--dtype`` is the server's own flag)."""
    g = parser.add_argument_group("optimisations (each one a switch; --opt fast sets the benchmarked set)")
    g.add_argument("--opt", choices=["off", "fast"], default="off", help="preset the flags below start from")
    g.add_argument("--sdpa", action=argparse.BooleanOptionalAction, default=None, help="SDPA attention")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--fuse-qkv", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--attention", choices=ATTENTION_BACKENDS, default=None,
                   help="SDPA backend tried first (the others stay as fallbacks for shapes it cannot run)")
    g.add_argument("--compile", choices=COMPILE_MODES, default=None, help="torch.compile mode of the UNet")
    g.add_argument("--compile-vae", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--compile-cache-dir", default=None, help="keep compile caches here (a persistent volume)")
    g.add_argument("--vae-batch", type=int, default=None, help="images per VAE decode (0: all)")
    g.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--batch-buckets", default=None, help="compiled batch sizes, e.g. 1,2,4,8,16")
    g.add_argument("--inductor-tuning", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--text-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the text encoders as CUDA graphs")


def from_args(args: argparse.Namespace) -> Optimizations:
    """Build :class:`Optimizations` from :func:`add_arguments`' flags: preset first, then each flag given."""
    overrides: dict[str, Any] = {}
    for flag, name in (
        ("sdpa", "sdpa"),
        ("attention", "attention"),
        ("channels_last", "channels_last"),
        ("fuse_qkv", "fuse_qkv"),
        ("compile", "compile"),
        ("compile_vae", "compile_vae"),
        ("cudnn_benchmark", "cudnn_benchmark"),
        ("compile_cache_dir", "cache_dir"),
        ("vae_batch", "vae_batch"),
        ("vae_tiling", "vae_tiling"),
        ("inductor_tuning", "inductor_tuning"),
        ("text_graphs", "text_graphs"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "batch_buckets", None):
        overrides["batch_buckets"] = tuple(int(b) for b in str(args.batch_buckets).split(","))
    if getattr(args, "dtype", None):
        overrides["dtype"] = args.dtype
    return Optimizations.preset(getattr(args, "opt", "off") or "off", **overrides)


def attention_context(opts: Optimizations) -> contextlib.AbstractContextManager:
    """The SDPA backend priority of ``opts`` for the calls made inside (and the graphs compiled inside) it.

    The chosen backend goes first; the rest follow in torch's own order, so a shape the backend cannot run
    (e.g. cuDNN with SD1.5's 160-wide heads) falls back instead of failing.
    """
    if opts.attention == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}[opts.attention]
    rest = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel([first] + [b for b in rest if b != first], set_priority=True)


def use_cache_dir(cache_dir: str | os.PathLike | None) -> None:
    """Point inductor's and Triton's on-disk caches at ``cache_dir`` (before the first compile)."""
    if not cache_dir:
        return
    path = Path(cache_dir)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path / "inductor")
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    os.environ["TRITON_CACHE_DIR"] = str(path / "triton")


SHIPPED_CACHE_DIR = "compile-cache"  # inside a model's folder: s3://<bucket>/models/<name>/compile-cache/<key>.bin


def cache_key() -> str:
    """What a compile cache is valid for: torch, diffusers, the card and CUDA (inductor re-checks the rest)."""
    import re

    import diffusers

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    raw = f"torch{torch.__version__}-diffusers{diffusers.__version__}-cuda{torch.version.cuda}-{card}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw)


def shipped_cache_file(model_path: str | os.PathLike) -> Path:
    """Where a model's compile cache for this software and card lives, next to the model (in the bucket)."""
    return Path(model_path) / SHIPPED_CACHE_DIR / f"{cache_key()}.bin"


def load_compile_cache(cache_dir: str | os.PathLike | None) -> bool:
    """Load the mega-cache :func:`save_compile_cache` wrote in ``cache_dir``, if there is one. True when loaded."""
    return bool(cache_dir) and load_cache_file(Path(cache_dir or ".") / MEGA_CACHE_FILE)


def load_cache_file(path: str | os.PathLike) -> bool:
    """Load one mega-cache file (a cache dir's, or one shipped next to a model), if it exists. True when loaded."""
    path = Path(path)
    loader = getattr(torch.compiler, "load_cache_artifacts", None)
    if loader is None or not path.is_file():
        return False
    started = time.perf_counter()
    loader(path.read_bytes())
    logger.info("loaded compile cache %s (%.1f MB, %.2f s)", path, path.stat().st_size / 1e6, time.perf_counter() - started)
    return True


def save_compile_cache(cache_dir: str | os.PathLike | None) -> Path | None:
    """Write what this process compiled as one portable file in ``cache_dir``; returns its path."""
    saver = getattr(torch.compiler, "save_cache_artifacts", None)
    if not cache_dir or saver is None:
        return None
    result = saver()
    if result is None:
        return None
    data, _info = result
    path = Path(cache_dir) / MEGA_CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    logger.info("saved compile cache %s (%.1f MB)", path, len(data) / 1e6)
    return path


def ship_compile_cache(saved: Path | None, model_path: str | os.PathLike) -> Path | None:
    """Put a freshly saved cache next to the model, so the next pod on this software and card starts warm.

    Where the model folder is read-only (Mountpoint mounts the bucket so) it logs where to upload it instead.
    """
    target = shipped_cache_file(model_path)
    if saved is None or target.is_file():
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(saved, tmp)
        tmp.replace(target)
    except OSError as exc:
        logger.warning("cannot write the compile cache next to the model (%s); upload %s to <model>/%s/%s to ship it",
                       exc.__class__.__name__, saved, SHIPPED_CACHE_DIR, target.name)
        return None
    logger.info("compile cache shipped next to the model: %s", target)
    return target


def _configure_inductor(opts: Optimizations) -> None:
    import torch._inductor.config as inductor

    # 1x1 convolutions as matmuls (most of the UNet's projections): what diffusion-fast found pays.
    inductor.conv_1x1_as_mm = True
    inductor.coordinate_descent_tuning = opts.inductor_tuning
    inductor.coordinate_descent_check_all_directions = opts.inductor_tuning


def _undo_compile(pipe: Any) -> None:
    """Back to the eager modules, so :func:`apply` can be called again with other settings."""
    original = getattr(pipe.unet, "_orig_mod", None)
    compiled_vae = "decode" in vars(pipe.vae)
    if original is not None:
        pipe.unet = original
    if compiled_vae:
        del pipe.vae.decode
    if original is not None or compiled_vae:
        torch._dynamo.reset()


def apply(pipe: Any, opts: Optimizations) -> Any:
    """Apply ``opts`` to ``pipe`` in place and return it. Safe on CPU (CUDA-only switches are skipped there)."""
    from sdlab.runtime.loader import resolve_dtype

    _undo_compile(pipe)
    device = pipe.device.type
    if opts.dtype is not None:
        dtype = resolve_dtype(opts.dtype, device)
        if pipe.unet.dtype != dtype:
            pipe.to(dtype=dtype)
    if opts.sdpa:
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.vae.set_attn_processor(AttnProcessor2_0())
    for module in (pipe.unet, pipe.vae):  # both ways, so apply() can be called again with other settings
        fused = getattr(module, "original_attn_processors", None) is not None
        if opts.fuse_qkv and not fused:
            module.fuse_qkv_projections()
        elif fused and not opts.fuse_qkv:
            module.unfuse_qkv_projections()
        module.to(memory_format=torch.channels_last if opts.channels_last else torch.contiguous_format)
    if opts.vae_tiling:
        pipe.vae.enable_tiling()
    if opts.cudnn_benchmark and device == "cuda":
        torch.backends.cudnn.benchmark = True
    if opts.compiled:
        use_cache_dir(opts.cache_dir)
        load_compile_cache(opts.cache_dir)
        _configure_inductor(opts)
        # dynamic=False: one specialised graph per batch size (the buckets), no slower symbolic kernels.
        mode = None if opts.compile == "default" else opts.compile
        pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True, dynamic=False)
        if opts.compile_vae:
            pipe.vae.decode = torch.compile(pipe.vae.decode, fullgraph=True, dynamic=False)
    from sdlab.runtime.text import EncoderGraphs, TextCache

    TextCache.of(pipe).clear()  # embeddings of the old settings (another dtype, say) must not be reused
    graphs = opts.text_graphs and device == "cuda"
    pipe._sdlab_text_graphs = EncoderGraphs(max_rows=2 * max(opts.batch_buckets)) if graphs else None
    pipe._sdlab_optimizations = opts
    logger.info("optimisations on %s: %s", device, opts.describe())
    return pipe


def unet_for(pipe: Any, shape: tuple[int, ...]) -> Any:
    """The UNet for a batch whose UNet input has ``shape``: the compiled one for the shapes compiled at start (the
    warm-up records them), the eager one for any other shape. A one-off size, or a batch without CFG (half the rows),
    would otherwise compile mid-service (SD1.5's compile for one bucket took 88 s on an H200) with the GPU held and
    every task behind it waiting."""
    unet = pipe.unet
    eager = getattr(unet, "_orig_mod", None)
    if eager is None:  # not compiled
        return unet
    compiled: set[tuple[int, ...]] = getattr(pipe, "_sdlab_compiled_shapes", set())
    if getattr(pipe, "_sdlab_warming", False):
        pipe._sdlab_compiled_shapes = compiled | {shape}
        return unet
    if not compiled or shape in compiled:  # never warmed up: compile on first use, as torch.compile does
        return unet
    seen: set[tuple[int, ...]] = getattr(pipe, "_sdlab_eager_shapes", set())
    if shape not in seen:
        pipe._sdlab_eager_shapes = seen | {shape}
        logger.warning("UNet input %s was not compiled at start (compiled: %s); it runs eagerly. To compile it, start "
                       "with that size as the model's native size or its batch in --batch-buckets", shape, sorted(compiled))
    return eager


def settings_of(pipe: Any) -> Optimizations:
    """The optimisations :func:`apply` left on ``pipe`` (plain defaults for a pipeline it never saw)."""
    return getattr(pipe, "_sdlab_optimizations", None) or Optimizations()


def warmup(pipe: Any, *, batch_sizes: tuple[int, ...] | list[int], width: int, height: int, steps: int = 2,
           split: dict[str, Any] | None = None) -> float:
    """Run a throw-away generation per batch size so compilation happens before the first real task.

    Returns the seconds it took. Cheap without compile; with compile this is where its minutes go
    (seconds when the cache is warm). ``split``, when given, receives where they went: each batch size's first call
    (dynamo's trace and inductor's compile or cache load) and second call (CUDA graph recording), the text graphs'
    capture, and dynamo's own compile-time metrics over the warm-up (seconds per phase, those over 0.05 s).
    """
    from sdlab.runtime.batch import BatchItem, generate_batch

    before = _dynamo_seconds()
    started = time.perf_counter()
    pipe._sdlab_warming = True  # unet_for records each shape compiled here
    try:
        for n in batch_sizes:
            items = [BatchItem(prompt="warm-up", seed=i) for i in range(n)]
            for call in ("first", "second"):  # CUDA graph trees record on the second call of a shape
                began = time.perf_counter()
                generate_batch(pipe, items, steps=steps, width=width, height=height, output="uint8")
                if split is not None:
                    _synchronize(pipe)
                    split[f"batch {n} {call} call s"] = round(time.perf_counter() - began, 2)
    finally:
        pipe._sdlab_warming = False
    began = time.perf_counter()
    capture_text_graphs(pipe)
    _synchronize(pipe)
    if split is not None:
        split["text graphs s"] = round(time.perf_counter() - began, 2)
        after = _dynamo_seconds()
        spent = {name: round(after[name] - before.get(name, 0.0), 2) for name in after}
        split["dynamo"] = dict(sorted(((k, v) for k, v in spent.items() if v >= 0.05), key=lambda kv: -kv[1]))
    return time.perf_counter() - started


def _synchronize(pipe: Any) -> None:
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()


def _dynamo_seconds() -> dict[str, float]:
    """Dynamo's compile-time metrics so far: seconds per phase (tracing, the backend compile, cache loads...)."""
    from torch._dynamo import utils

    return {name: float(sum(times)) for name, times in getattr(utils, "compilation_time_metrics", {}).items()}


def capture_text_graphs(pipe: Any) -> None:
    """Capture the text encoders' CUDA graphs for every row count now, not on a task's time (no-op without
    ``text_graphs``)."""
    graphs = getattr(pipe, "_sdlab_text_graphs", None)
    if graphs is None:
        return
    from sdlab.runtime.text import TextCache, encode_texts

    rows = 1
    while rows <= graphs.max_rows:
        encode_texts(pipe, [f"warm-up text {i} of {rows}" for i in range(rows)])
        rows *= 2
    TextCache.of(pipe).clear()  # the warm-up texts would only take room
