"""Generate several compatible tasks in one pass, and the queue that gathers them.

Tasks are *compatible* when they share a :class:`BatchKey`: model, task kind, size, steps, sampler and noise
schedule, CLIP skip and eta. Within a batch every image keeps its own prompt, negative prompt, seed and CFG
scale (:class:`BatchItem`), and :func:`generate_batch` gives each image the result it would get alone: its own
CPU generator draws its initial latents (and any sampler noise), the CFG scale is applied per image, and
every other operation is elementwise or batch-independent. Same seed ⇒ same image, batched or not, up to
the rounding of batched kernels.

:class:`BatchQueue` runs on one worker thread: the first waiting job waits up to ``max_wait_ms`` for
compatible company, then everything compatible (up to ``max_batch`` images) goes to the GPU together.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

from sdlab.errors import ValidationError
from sdlab.runtime.optimize import attention_context, settings_of, unet_for
from sdlab.runtime.text import encode_prompts

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchItem:
    """One image: what may differ between the images of a batch."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    cfg_scale: float = 7.0


@dataclass(frozen=True)
class BatchKey:
    """What must be equal for images to share a batch."""

    model: str
    kind: str = "txt2img"
    width: int = 512
    height: int = 512
    steps: int = 20
    sampler: str = "Euler"
    scheduler: str | None = None
    clip_layers: int = 1
    eta: float | None = None


@dataclass
class BatchOutput:
    """Images in item order (PIL images, or HxWx3 uint8 arrays with ``output="uint8"``)."""

    images: list[Any]
    interrupted: bool = False
    seconds: float = 0.0
    padded_to: int = 0


def bucket_size(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``n`` images (``n`` itself when none does)."""
    fitting = [b for b in sorted(buckets) if b >= n]
    return fitting[0] if fitting else n


def _pad(t: Any, pad: int) -> Any:
    if t is None or pad == 0:
        return t
    return torch.cat([t, t[-1:].expand(pad, *t.shape[1:])])


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """NHWC uint8, computed exactly as diffusers' ``postprocess(output_type="pil")`` does, but on the device."""
    images = (images * 0.5 + 0.5).clamp(0, 1)
    images = (images.float() * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def decode_latents(pipe: Any, latents: torch.Tensor, chunk: int | None = None, eager: bool = False) -> torch.Tensor:
    """The VAE's pixels (-1..1, NCHW) for ``latents``, ``chunk`` images at a time. An fp16 SDXL VAE overflows, so it
    decodes in fp32, as StableDiffusionXLPipeline does. ``eager`` calls the class's method, never a compiled decoder
    (which would compile a new shape)."""
    vae = pipe.vae
    upcast = (vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
              and getattr(pipe, "text_encoder_2", None) is not None)
    if upcast:
        vae.to(dtype=torch.float32)
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    decode = functools.partial(type(vae).decode, vae) if eager else vae.decode
    step = chunk or len(z)
    try:
        return torch.cat([decode(z[j : j + step].clone(), return_dict=False)[0] for j in range(0, len(z), step)])
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


def _under_attention_choice(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn(pipe, ...)`` under the pipeline's attention-backend choice
    (:func:`sdlab.runtime.optimize.attention_context`), so graphs compiled during a call and every later call use
    the same backend."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with attention_context(settings_of(args[0])):
            return fn(*args, **kwargs)

    return wrapper


@_under_attention_choice
@torch.inference_mode()
def generate_batch(
    pipe: Any,
    items: Sequence[BatchItem],
    *,
    steps: int,
    width: int,
    height: int,
    scheduler: Any = None,
    clip_skip: int | None = None,
    eta: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_latents: Callable[[int, torch.Tensor], None] | None = None,
    output: str = "pil",
) -> BatchOutput:
    """Text-to-image for ``items`` in one denoising loop (StableDiffusion or StableDiffusionXL pipelines).

    Args:
        pipe: A loaded diffusers pipeline, optionally prepared by :func:`sdlab.runtime.optimize.apply`.
        items: The images; each keeps its prompt, negative prompt, seed and CFG scale.
        steps, width, height: Shared by all items (the batch key).
        scheduler: The sampler to use (a fresh copy of the pipeline's own when None); it is mutated.
        clip_skip: diffusers' ``clip_skip`` (A1111's "Clip skip" minus one), or None.
        eta: DDIM's eta; diffusers' default 0.0 when None.
        should_stop: Polled before each step; True stops denoising and decodes the partial latents.
        on_step: Called with ``(steps_done, total_steps)`` after each step.
        on_latents: Called with ``(steps_done, latents)`` after each step (live previews; padding included).
        output: ``"pil"`` (list of PIL images) or ``"uint8"`` (list of HxWx3 arrays).
    """
    # 0. check inputs
    if not items:
        raise ValidationError("items", "a batch needs at least one item")
    if width % 8 or height % 8:
        raise ValidationError("width", f"{width}x{height}: width and height must be multiples of 8")
    if output not in ("pil", "uint8"):
        raise ValueError(f"output={output!r}: use 'pil' or 'uint8'")
    started = time.perf_counter()
    opts = settings_of(pipe)
    device = pipe._execution_device
    n = len(items)
    size = bucket_size(n, opts.batch_buckets) if opts.compiled else n
    pad = size - n
    scales = [float(it.cfg_scale) for it in items]
    cfg = any(s > 1.0 for s in scales) and pipe.unet.config.time_cond_proj_dim is None

    # 1. text embeddings (only the real items; padding repeats the last one)
    cond, uncond, pooled, uncond_pooled = encode_prompts(
        pipe, [it.prompt for it in items], [it.negative_prompt for it in items], cfg, clip_skip, device
    )
    cond, uncond, pooled, uncond_pooled = (_pad(t, pad) for t in (cond, uncond, pooled, uncond_pooled))

    # 2. timesteps
    if scheduler is None:
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)  # txt2img starts at index 0; saves a device→host sync to look it up

    # 3. initial latents: one CPU generator per image, as diffusers draws them for a list of generators
    from diffusers.utils.torch_utils import randn_tensor

    generators = [torch.Generator("cpu").manual_seed(int(it.seed)) for it in items]
    factor = pipe.vae_scale_factor
    shape = (n, pipe.unet.config.in_channels, height // factor, width // factor)
    latents = randn_tensor(shape, generator=generators, device=device, dtype=cond.dtype)
    latents = _pad(latents * scheduler.init_noise_sigma, pad)
    step_kwargs: dict[str, Any] = {}
    params = inspect.signature(scheduler.step).parameters
    if "eta" in params:
        step_kwargs["eta"] = 0.0 if eta is None else eta
    if "generator" in params:  # stochastic samplers draw each image's noise from its own generator
        step_kwargs["generator"] = generators + [torch.Generator("cpu").manual_seed(0) for _ in range(pad)]

    # 4. guidance: one scale per image (a Python float when all agree: exactly diffusers' arithmetic)
    embeds = torch.cat([uncond, cond]) if cfg else cond
    scale: float | torch.Tensor = 1.0
    if cfg:
        effective = [max(s, 1.0) for s in scales] + [1.0] * pad  # ≤ 1 means "no CFG": the conditional prediction
        if len(set(effective)) == 1:
            scale = effective[0]
        else:
            scale = torch.tensor(effective, dtype=torch.float32, device=device).view(-1, 1, 1, 1)
    added = None
    if pooled is not None:
        te2 = pipe.text_encoder_2
        time_ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=cond.dtype,
                                          text_encoder_projection_dim=te2.config.projection_dim).to(device)
        text_embeds = torch.cat([uncond_pooled, pooled]) if cfg else pooled
        added = {"text_embeds": text_embeds, "time_ids": time_ids.repeat(text_embeds.shape[0], 1)}

    # 5. denoise
    unet = unet_for(pipe, (latents.shape[0] * (2 if cfg else 1), *latents.shape[1:]))
    compiled_shape = unet is pipe.unet
    mark_step = torch.compiler.cudagraph_mark_step_begin if opts.cuda_graphs and compiled_shape else None
    interrupted = False
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        if should_stop is not None and should_stop():
            interrupted = True
            break
        model_in = torch.cat([latents] * 2) if cfg else latents
        model_in = scheduler.scale_model_input(model_in, t)
        if mark_step is not None:
            mark_step()  # CUDA graph outputs of the previous step may be overwritten now
        noise = unet(model_in, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]
        if cfg:
            uncond_noise, cond_noise = noise.chunk(2)
            diff = cond_noise - uncond_noise
            if isinstance(scale, float):
                noise = uncond_noise + scale * diff
            else:
                noise = uncond_noise + (scale * diff).to(diff.dtype)
        latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        if on_step is not None:
            on_step(i + 1, total)
        if on_latents is not None:
            on_latents(i + 1, latents)

    # 6. decode (in chunks of opts.vae_batch images) and convert to 8-bit on the device
    arrays = to_uint8(decode_latents(pipe, latents[:n], chunk=opts.vae_batch or n, eager=not compiled_shape))
    images: list[Any] = list(arrays)
    if output == "pil":
        from PIL import Image

        images = [Image.fromarray(a) for a in arrays]
    return BatchOutput(images, interrupted, time.perf_counter() - started, size)


# -- the queue -----------------------------------------------------------------------------------------


@dataclass
class Job:
    """Images of one request (or one part of it) waiting for a batch."""

    key: BatchKey
    items: list[BatchItem]
    meta: Any = None
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)


Runner = Callable[[BatchKey, list[Job]], BatchOutput]


class BatchQueue:
    """One worker thread that merges compatible jobs into batches.

    ``runner(key, jobs)`` generates the concatenated items of ``jobs`` and returns one :class:`BatchOutput`;
    each job's future gets its own slice. ``max_batch(key)`` caps the images per batch for that key.
    """

    def __init__(self, runner: Runner, *, max_batch: Callable[[BatchKey], int], max_wait_ms: float = 50.0) -> None:
        self._runner = runner
        self._max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms / 1000.0)
        self._jobs: list[Job] = []
        self._calls: list[tuple[Callable[[], Any], Future]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0
        self.busy_seconds = 0.0
        self._thread = threading.Thread(target=self._loop, name="sdlab-batch", daemon=True)
        self._thread.start()

    def submit(self, key: BatchKey, items: Sequence[BatchItem], meta: Any = None) -> Future:
        """Queue ``items``; the future resolves to a :class:`BatchOutput` holding exactly these images.

        A job larger than ``max_batch(key)`` is split into parts that run as separate batches.
        """
        limit = max(1, self._max_batch(key))
        parts = [Job(key, list(items[i : i + limit]), meta) for i in range(0, len(items), limit)] or [Job(key, [], meta)]
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch queue is closed")
            self._jobs.extend(parts)
            self._cond.notify_all()
        if len(parts) == 1:
            return parts[0].future
        return _join([p.future for p in parts])

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the worker thread between batches (model switches, warm-up: CUDA graphs are per thread)."""
        future: Future = Future()
        with self._cond:
            self._calls.append((fn, future))
            self._cond.notify_all()
        return future

    def pending(self) -> int:
        with self._cond:
            return sum(len(j.items) for j in self._jobs)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _take(self) -> tuple[list[Job], Callable[[], Any] | None, Future | None]:
        """Block until there is a call to make or a batch to run; return it."""
        with self._cond:
            while True:
                if self._calls:
                    fn, fut = self._calls.pop(0)
                    return [], fn, fut
                if self._closed and not self._jobs:
                    return [], None, None
                if not self._jobs:
                    self._cond.wait()
                    continue
                first = self._jobs[0]
                limit = max(1, self._max_batch(first.key))
                deadline = first.submitted + self.max_wait_s
                batch, count = self._gather(first.key, limit)
                if count >= limit or time.monotonic() >= deadline or self._closed:
                    for job in batch:
                        self._jobs.remove(job)
                    return batch, None, None
                self._cond.wait(timeout=deadline - time.monotonic())

    def _gather(self, key: BatchKey, limit: int) -> tuple[list[Job], int]:
        batch: list[Job] = []
        count = 0
        for job in self._jobs:
            if job.key == key and (not batch or count + len(job.items) <= limit):
                batch.append(job)
                count += len(job.items)
        return batch, count

    def _loop(self) -> None:
        while True:
            jobs, fn, fut = self._take()
            if fn is not None and fut is not None:
                _resolve(fut, fn)
                continue
            if not jobs:
                return
            started = time.monotonic()
            try:
                out = self._runner(jobs[0].key, jobs)
            except BaseException as exc:  # every waiting request learns why its batch failed
                logger.exception("batch of %d job(s) failed", len(jobs))
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            finally:
                self.busy_seconds += time.monotonic() - started
                self.batches += 1
            offsets = itertools.accumulate([0] + [len(j.items) for j in jobs])
            for job, start in zip(jobs, offsets, strict=False):
                mine = out.images[start : start + len(job.items)]
                job.future.set_result(BatchOutput(mine, out.interrupted, out.seconds, out.padded_to))


def _resolve(future: Future, fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)


def _join(parts: list[Future]) -> Future:
    """One future for the parts of a split job: the images in order, interrupted if any part was."""
    joined: Future = Future()
    lock = threading.Lock()

    def done(_: Future) -> None:
        with lock:
            if joined.done() or not all(p.done() for p in parts):
                return
            errors = [p.exception() for p in parts if p.exception() is not None]
            if errors:
                joined.set_exception(errors[0])
                return
            outs = [p.result() for p in parts]
            joined.set_result(BatchOutput([im for o in outs for im in o.images], any(o.interrupted for o in outs),
                                          sum(o.seconds for o in outs), max(o.padded_to for o in outs)))

    for part in parts:
        part.add_done_callback(done)
    return joined
