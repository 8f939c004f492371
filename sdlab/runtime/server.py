"""HTTP server speaking the AUTOMATIC1111 SD WebUI API (``/sdapi/v1/...``).

Field names and response shapes follow A1111's ``modules/api/models.py`` so that
existing clients (webuiapi, ComfyUI bridges, scripts) work unchanged. Generation
runs one request at a time under a lock, in FastAPI's worker threads, so
``/progress``, ``/interrupt`` and the health checks keep answering meanwhile.

Reproducibility: every image gets its own CPU ``torch.Generator`` seeded with that
image's seed (``seed + index`` like A1111), so a fixed-seed request returns the
same PNG bytes every time, on any device.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import io
import json
import logging
import random
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image, PngImagePlugin, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdlab.errors import ModelError, ValidationError
from sdlab.runtime import comfy_api, extras, native_api, optimize, prewarm, samplers
from sdlab.runtime.batch import BatchItem, BatchKey, BatchOutput, BatchQueue, Job, generate_batch
from sdlab.runtime.loader import (
    ModelNotFoundError,
    ModelRegistry,
    import_pipelines,
    resolve_device,
    resolve_dtype,
    with_scheduler,
)
from sdlab.runtime.preview import LivePreview
from sdlab.runtime.text import prompt_embeds

logger = logging.getLogger(__name__)

MAX_SEED = 4294967294  # A1111 draws random seeds below this bound.


class Txt2ImgRequest(BaseModel):
    """``POST /sdapi/v1/txt2img`` body; A1111 defaults. Unknown fields are kept and echoed back."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = Field(-1, ge=-1, lt=2**63)
    subseed: int = -1
    subseed_strength: float = 0.0
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=100)
    steps: int = Field(50, ge=1, le=1000)
    cfg_scale: float = Field(7.0, ge=0, le=100)
    width: int = Field(512, ge=64, le=4096)
    height: int = Field(512, ge=64, le=4096)
    eta: float | None = None
    denoising_strength: float | None = Field(None, ge=0, le=1)
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    enable_hr: bool = False
    script_name: str | None = None
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        # The VAE downsamples by 8; other sizes would be silently cropped by diffusers.
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}; use {value // 8 * 8} or {value // 8 * 8 + 8}")
        return value


class Img2ImgRequest(Txt2ImgRequest):
    """``POST /sdapi/v1/img2img`` body."""

    init_images: list[str] | None = None
    denoising_strength: float = Field(0.75, ge=0, le=1)
    resize_mode: int = 0
    mask: str | None = None
    include_init_images: bool = False


def decode_image(data: str, field: str) -> Image.Image:
    """Decode a base64 PNG/JPEG, with or without a ``data:image/...;base64,`` prefix."""
    if not isinstance(data, str) or not data:
        raise ValidationError(field, "expected a base64-encoded PNG or JPEG string", status=422)
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise ValidationError(field, f"not a valid base64-encoded PNG/JPEG image ({exc})", status=422) from None
    return image.convert("RGB")


def encode_png(image: Image.Image, infotext: str) -> str:
    """PNG bytes as base64, with the A1111 ``parameters`` text chunk."""
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", infotext)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class JobState:
    """What ``/sdapi/v1/progress`` reports; written by the generating thread only (the preview has its own lock)."""

    def __init__(self) -> None:
        self.preview = LivePreview()
        self.begin("", 0)

    def begin(self, job: str, job_count: int) -> None:
        self.sampling_step, self.sampling_steps = 0, 0  # before job_count: no reader sees a new job with old steps
        self.job, self.job_count, self.job_no = job, job_count, 0
        self.interrupted = self.skipped = False
        self.preview.reset()
        self.time_start = time.time()
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")

    def end(self) -> None:
        self.job, self.job_count = "", 0

    def as_dict(self) -> dict[str, Any]:
        keys = ("skipped", "interrupted", "job", "job_count", "job_timestamp", "job_no", "sampling_step", "sampling_steps")
        return {k: getattr(self, k) for k in keys}

    def progress(self, with_image: bool = False) -> dict[str, Any]:
        """SD WebUI's progress answer; ``with_image`` asks for the live preview (and keeps previews coming)."""
        # Read each field once: the generating thread may end the job while we compute.
        job_count, steps = self.job_count, self.sampling_steps
        image = self.preview.watch() if with_image else None
        if job_count == 0:
            return {"progress": 0.0, "eta_relative": 0.0, "state": self.as_dict(), "current_image": None, "textinfo": None}
        done = 0.01 + self.job_no / job_count
        if steps > 0:
            done += self.sampling_step / steps / job_count
        elapsed = time.time() - self.time_start
        eta = elapsed / done - elapsed
        return {
            "progress": min(done, 1.0),
            "eta_relative": eta,
            "state": self.as_dict(),
            "current_image": image,
            "textinfo": None,
        }


@dataclass(frozen=True)
class Prepared:
    """A validated generation request: the model, sampler and CLIP layers it runs with."""

    req: Txt2ImgRequest
    title: str
    ckpt: Any
    sampler_name: str
    key: BatchKey
    clip_layers: int
    init_images: list[Image.Image]
    img2img: bool


@dataclass(frozen=True)
class _JobMeta:
    job: str
    job_no: int
    job_count: int
    mark: int  # interrupts counted when the request started: a later /interrupt stops its batches


def _process_age_seconds() -> float | None:
    """Seconds since this process started (Linux /proc), for the cold-start log line."""
    try:
        import os

        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _schedule_name(schedule_kwargs: dict[str, Any]) -> str:
    return next(name for name, kwargs in samplers.SCHEDULES.items() if kwargs == schedule_kwargs)


class Runtime:
    """Model selection, options and the generation loop behind the HTTP routes.

    txt2img images go through a :class:`BatchQueue`: compatible concurrent requests (A1111 or the native
    ``/v1/generate``) share batches. img2img and warm-up run on the same worker thread, between batches.
    """

    def __init__(
        self, registry: ModelRegistry, default_model: str | None, *, max_batch: int | None = None, max_wait_ms: float = 50.0
    ) -> None:
        self.registry = registry
        self.lock = threading.RLock()  # one generation / model switch at a time
        self.state = JobState()
        self.ready = threading.Event()
        self.error: str | None = None
        self.max_batch = max_batch
        self._interrupts = 0
        self.queue = BatchQueue(self._run_batch, max_batch=self.max_batch_for, max_wait_ms=max_wait_ms)
        titles = registry.titles()
        if default_model is None and not titles:
            self.error = f"no models in {registry.models_dir}; build one with sdlab.runtime.model.build_tiny_model"
        # where this process's start went, in seconds of its age: main() reached (imports done), serving, the model
        # load begun, then ready; and in seconds each: the pipeline imports, the CUDA context, the load, the warm-up
        self.startup: dict[str, Any] = {}
        self.options: dict[str, Any] = {
            "sd_model_checkpoint": default_model or (titles[0] if titles else None),
            "samples_format": "png",
            "CLIP_stop_at_last_layers": 1,
            "eta_noise_seed_delta": 0,
            "sd_vae": "Automatic",
            "sd_checkpoints_limit": registry.max_loaded,
        }

    def load_default(self) -> None:
        """Load the startup model (and compile it, when asked); health turns green when this succeeds."""
        if self.error:
            logger.error("%s", self.error)
            return
        try:
            self._before_load()
            title = self.set_model(self.options["sd_model_checkpoint"])
            self.queue.call(lambda: self.warmup(title)).result()
        except Exception as exc:  # health must say why, whatever failed (load, compile)
            self.error = f"{exc.__class__.__name__}: {exc}" if not isinstance(exc, ModelError) else str(exc)
            logger.error("cannot load startup model: %s", exc)
            return
        self.ready.set()
        age = _process_age_seconds()
        self.startup["ready_s"] = round(age, 2) if age else None
        since = f", {age:.1f} s after process start" if age else ""
        logger.info("ready: %s loaded%s", self.options["sd_model_checkpoint"], since)

    def _before_load(self) -> None:
        """What every first load pays before its weights, timed on its own: the pipeline imports (diffusers,
        transformers) and, on a GPU, the CUDA context."""
        started = time.perf_counter()
        import_pipelines()
        self.startup["imports_s"] = round(time.perf_counter() - started, 2)
        if self.registry.device.startswith("cuda"):
            started = time.perf_counter()
            torch.empty(1, device=self.registry.device)
            self.startup["cuda_init_s"] = round(time.perf_counter() - started, 2)

    def warmup(self, title: str) -> None:
        """Compile ``title`` for its native size at every batch bucket up to the max batch; uncompiled, only capture
        the text encoders' CUDA graphs (with ``text_graphs``)."""
        pipe = self.registry.get(title)
        opts = optimize.settings_of(pipe)
        if not opts.compiled:
            optimize.capture_text_graphs(pipe)
            return
        side = pipe.unet.config.sample_size * pipe.vae_scale_factor
        key = BatchKey(model=title, width=side, height=side)
        sizes = [b for b in opts.batch_buckets if b <= self.max_batch_for(key)] or [1]
        split: dict[str, Any] = {}
        with self.lock:
            seconds = optimize.warmup(pipe, batch_sizes=sizes, width=side, height=side, split=split)
        shipped = bool(getattr(pipe, "_sdlab_cache_shipped", False))
        self.startup |= {"warmup_s": round(seconds, 2), "compile_cache_shipped": shipped, "warmup_split": split}
        logger.info("compiled %s for %dx%d, batches %s, in %.1f s (compile cache shipped with the model: %s)",
                    title, side, side, sizes, seconds, "loaded" if shipped else "none")
        saved = optimize.save_compile_cache(opts.cache_dir)
        if not shipped and getattr(pipe, "_sdlab_model_path", None) is not None:
            optimize.ship_compile_cache(saved, pipe._sdlab_model_path)

    def max_batch_for(self, key: BatchKey) -> int:
        """Images per batch: the configured max, else what the card's memory holds (about 1 GiB per 512² image)."""
        if self.max_batch is not None:
            return self.max_batch
        if self.registry.device.startswith("cuda") and torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            free = 0.8 * total - torch.cuda.memory_allocated()
            per_image = (1 << 30) * key.width * key.height / (512 * 512)
            fits = max(1, min(16, int(free // per_image)))
        else:
            fits = 4  # CPU: batching saves little there; keep latency low
        opts = self.registry.optimizations or optimize.Optimizations()
        if opts.compiled:  # stay within the compiled buckets
            fits = min(fits, max(opts.batch_buckets))
        return fits

    def set_model(self, name: str) -> str:
        """Make ``name`` the current checkpoint, loading it now. Returns its title."""
        ckpt = self.registry.find(name)
        with self.lock:
            started = time.perf_counter()
            age = _process_age_seconds()
            self.registry.get(ckpt.title)
            self.options["sd_model_checkpoint"] = ckpt.title
            self.options["sd_checkpoint_hash"] = None
        # Hashing every file of the model (2 GB for SD1.5, 7 GB for SDXL, about 1 GB/s) stays off the start:
        # the first response that names the hash computes it if this thread has not finished.
        threading.Thread(target=self._hash_checkpoint, args=(ckpt,), name="checkpoint-hash", daemon=True).start()
        took = time.perf_counter() - started
        if "load_s" not in self.startup:  # the startup model
            self.startup |= {"before_load_s": round(age, 2) if age else None, "load_s": round(took, 2)}
        logger.info("model %s ready (%.2f s)", ckpt.title, took)
        return ckpt.title

    def _hash_checkpoint(self, ckpt: Any) -> None:
        sha = self.registry.sha256(ckpt)
        with self.lock:
            if self.options["sd_model_checkpoint"] == ckpt.title:
                self.options["sd_checkpoint_hash"] = sha

    def interrupt(self) -> None:
        """Stop the running batch (it returns its partial images) and the later iterations of its requests."""
        self._interrupts += 1
        self.state.interrupted = True

    def prepare(self, req: Txt2ImgRequest) -> Prepared:
        """Validate ``req`` and load its model; raises ValidationError (422) or ModelError."""
        if req.enable_hr:
            raise ValidationError("enable_hr", "hires fix is not supported by the sdlab runtime; set it to false", 422)
        if req.script_name or req.alwayson_scripts:
            raise ValidationError("script_name", "scripts/alwayson_scripts are not supported by the sdlab runtime", 422)
        sampler_name = req.sampler_name or req.sampler_index
        spec, schedule = samplers.resolve(sampler_name, req.scheduler)
        init_images: list[Image.Image] = []
        img2img = isinstance(req, Img2ImgRequest)
        if isinstance(req, Img2ImgRequest):
            if req.mask:
                raise ValidationError("mask", "inpainting is not supported by the sdlab runtime; omit mask", 422)
            if not req.init_images:
                raise ValidationError("init_images", "img2img needs at least one base64 image in init_images", 422)
            init_images = [
                decode_image(data, f"init_images.{i}").resize((req.width, req.height), Image.Resampling.LANCZOS)
                for i, data in enumerate(req.init_images)
            ]
            if int(req.steps * req.denoising_strength) < 1:
                raise ValidationError("denoising_strength", "steps × denoising_strength must be ≥ 1; raise one of them", 422)
        overrides = dict(req.override_settings or {})
        title = self.options["sd_model_checkpoint"]
        if overrides.get("sd_model_checkpoint"):
            title = self.registry.find(str(overrides["sd_model_checkpoint"])).title
        clip_layers = overrides.get("CLIP_stop_at_last_layers", self.options["CLIP_stop_at_last_layers"])
        if not isinstance(clip_layers, int) or clip_layers < 1:
            raise ValidationError(
                "override_settings.CLIP_stop_at_last_layers", f"must be an integer ≥ 1, got {clip_layers!r}", 422
            )

        with self.lock:
            base = self.registry.get(title)
            ckpt = self.registry.find(title)
            layers = base.text_encoder.config.num_hidden_layers
            if clip_layers > layers + 1:
                raise ValidationError(
                    "override_settings.CLIP_stop_at_last_layers",
                    f"{clip_layers} exceeds this model's text encoder ({layers} layers); use 1..{layers + 1}",
                    422,
                )
            if overrides.get("sd_model_checkpoint") and not req.override_settings_restore_afterwards:
                self.options["sd_model_checkpoint"] = title
                self.options["sd_checkpoint_hash"] = self.registry.sha256(ckpt)
        key = BatchKey(
            model=title,
            kind="img2img" if img2img else "txt2img",
            width=req.width,
            height=req.height,
            steps=req.steps,
            sampler=spec.name,
            scheduler=_schedule_name(schedule),
            clip_layers=clip_layers,
            eta=req.eta,
        )
        return Prepared(req, title, ckpt, sampler_name, key, clip_layers, init_images, img2img)

    def seeds_of(self, req: Txt2ImgRequest) -> list[int]:
        """A1111 seeds: ``seed + i`` for every image, a random start when seed is -1."""
        seed = req.seed if req.seed != -1 else random.randrange(MAX_SEED)
        return [seed + i for i in range(req.batch_size * req.n_iter)]

    def submit(self, prep: Prepared, seeds: list[int], job_no: int = 0, job_count: int = 1, mark: int | None = None):
        """Queue txt2img images with ``seeds``; returns a Future of their :class:`BatchOutput`."""
        req = prep.req
        items = [BatchItem(req.prompt, req.negative_prompt, s, req.cfg_scale) for s in seeds]
        meta = _JobMeta("txt2img", job_no, job_count, self._interrupts if mark is None else mark)
        return self.queue.submit(prep.key, items, meta)

    def generate(self, req: Txt2ImgRequest) -> dict[str, Any]:
        """Run a txt2img or (for an :class:`Img2ImgRequest`) img2img request; returns the A1111 response body."""
        prep = self.prepare(req)
        started = time.perf_counter()
        timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        all_seeds = self.seeds_of(req)
        if prep.img2img:
            images, interrupted, timestamp = self.queue.call(lambda: self._img2img(prep, all_seeds)).result()
        else:
            # A1111 semantics: n_iter batches one after the other; /interrupt stops the rest, /skip only the current.
            mark = self._interrupts
            images = []
            for it in range(req.n_iter):
                if self._interrupts > mark:
                    break
                seeds = all_seeds[it * req.batch_size : (it + 1) * req.batch_size]
                out = self.submit(prep, seeds, it, req.n_iter, mark).result()
                images.extend(out.images)
            interrupted = self._interrupts > mark
        seeds = all_seeds[: len(images)] or all_seeds
        elapsed = time.perf_counter() - started
        logger.info(
            "%s: %d image(s) %dx%d, %d steps, %s, model %s, %.2f s%s",
            prep.key.kind,
            len(images),
            req.width,
            req.height,
            req.steps,
            prep.key.sampler,
            prep.title,
            elapsed,
            " (interrupted)" if interrupted else "",
        )
        return self.respond(prep, images, seeds, interrupted, timestamp)

    def respond(self, prep: Prepared, images, seeds: list[int], interrupted: bool, timestamp: str) -> dict[str, Any]:
        """The A1111 response body for ``prep``'s images."""
        run = {
            "sampler_name": prep.sampler_name,
            "clip_layers": prep.clip_layers,
            "interrupted": interrupted,
            "job_timestamp": timestamp,
            "img2img": prep.img2img,
        }
        return self._response(prep.req, images, seeds, prep.ckpt, run)

    def _run_batch(self, key: BatchKey, jobs: list[Job]) -> BatchOutput:
        """The queue's runner: one txt2img batch of every image of ``jobs`` (on the queue's worker thread)."""
        items = [item for job in jobs for item in job.items]
        first: _JobMeta = jobs[0].meta
        mark = min(job.meta.mark for job in jobs)

        def should_stop() -> bool:
            return self._interrupts > mark or self.state.skipped

        def on_step(done: int, total: int) -> None:
            self.state.sampling_step, self.state.sampling_steps = done, total

        with self.lock:
            base = self.registry.get(key.model)
            scheduler = samplers.sampler_for(key.sampler, base.scheduler.config, key.scheduler)
            self.state.begin(first.job, first.job_count)
            self.state.job_no = first.job_no
            self.state.interrupted = self._interrupts > mark
            logger.debug("batch: %d image(s) from %d job(s), key %s", len(items), len(jobs), key)
            try:
                out = generate_batch(
                    base,
                    items,
                    steps=key.steps,
                    width=key.width,
                    height=key.height,
                    scheduler=scheduler,
                    clip_skip=key.clip_layers - 1 if key.clip_layers > 1 else None,
                    eta=key.eta,
                    should_stop=should_stop,
                    on_step=on_step,
                    on_latents=lambda step, latents: self.state.preview.maybe_update(base, step, latents),
                )
            finally:
                self.state.skipped = False  # /skip ends only the current batch
                if self.queue.pending() == 0:
                    self.state.end()
        return out

    def _img2img(self, prep: Prepared, all_seeds: list[int]):
        """img2img through the diffusers pipeline, one n_iter batch at a time (on the queue's worker thread)."""
        req = prep.req
        with self.lock:
            base = self.registry.get(prep.title)
            scheduler = samplers.sampler_for(prep.sampler_name, base.scheduler.config, req.scheduler)
            pipe = with_scheduler(base, scheduler, img2img=True)
            self.state.begin("img2img", req.n_iter)
            try:
                images = self._run(pipe, req, prep.init_images, prep.clip_layers, all_seeds)
            finally:
                interrupted, timestamp = self.state.interrupted, self.state.job_timestamp
                self.state.end()
        return images, interrupted, timestamp

    def _run(self, pipe, req: Txt2ImgRequest, init_images, clip_layers: int, all_seeds: list[int]):
        mark = self._interrupts

        def on_step_end(p, step, timestep, callback_kwargs):
            self.state.sampling_step = step + 1
            self.state.sampling_steps = p.num_timesteps
            if "latents" in callback_kwargs:
                self.state.preview.maybe_update(p, step + 1, callback_kwargs["latents"])
            if self._interrupts > mark or self.state.skipped:
                # diffusers skips the remaining steps and decodes the current latents,
                # which is A1111's "return the partial image" behaviour.
                p._interrupt = True
            return callback_kwargs

        images: list[Image.Image] = []
        for it in range(req.n_iter):
            if self._interrupts > mark:
                break
            self.state.job_no = it
            seeds = all_seeds[it * req.batch_size : (it + 1) * req.batch_size]
            kwargs: dict[str, Any] = {
                # the texts' embeddings, encoded as txt2img batches encode them (cached; CLIP skip on prompts)
                **prompt_embeds(pipe, [req.prompt] * len(seeds), [req.negative_prompt] * len(seeds),
                                cfg=req.cfg_scale > 1, clip_skip=clip_layers - 1 if clip_layers > 1 else None),
                "num_inference_steps": req.steps,
                "guidance_scale": req.cfg_scale,
                # CPU generators: identical noise on CPU and CUDA hosts.
                "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
                "callback_on_step_end": on_step_end,
            }
            if req.eta is not None:
                kwargs["eta"] = req.eta
            if init_images:
                first = it * req.batch_size
                kwargs["image"] = [init_images[(first + j) % len(init_images)] for j in range(len(seeds))]
                kwargs["strength"] = req.denoising_strength
            else:
                kwargs["width"], kwargs["height"] = req.width, req.height
            logger.debug("generating prompt=%r negative=%r seeds=%s", req.prompt, req.negative_prompt, seeds)
            images.extend(pipe(**kwargs).images)
            self.state.skipped = False  # /skip ends only the current batch
        self.state.interrupted = self._interrupts > mark
        return images

    def _response(self, req: Txt2ImgRequest, images, seeds: list[int], ckpt, run: dict[str, Any]) -> dict[str, Any]:
        sha = self.registry.sha256(ckpt)
        sampler_name, clip_layers, img2img = run["sampler_name"], run["clip_layers"], run["img2img"]
        denoise = req.denoising_strength if img2img else None

        def infotext(seed: int) -> str:
            lines = [req.prompt]
            if req.negative_prompt:
                lines.append(f"Negative prompt: {req.negative_prompt}")
            params = [
                f"Steps: {req.steps}",
                f"Sampler: {sampler_name}",
                f"CFG scale: {req.cfg_scale}",
                f"Seed: {seed}",
                f"Size: {req.width}x{req.height}",
                f"Model hash: {sha[:10]}",
                f"Model: {ckpt.model_name}",
            ]
            if denoise is not None:
                params.append(f"Denoising strength: {denoise}")
            if clip_layers > 1:
                params.append(f"Clip skip: {clip_layers}")
            lines.append(", ".join(params + ["Version: sdlab"]))
            return "\n".join(lines)

        infotexts = [infotext(s) for s in seeds[: len(images)]]
        n = len(seeds)
        subseed = req.subseed if req.subseed != -1 else seeds[0]
        info = {
            "prompt": req.prompt,
            "all_prompts": [req.prompt] * n,
            "negative_prompt": req.negative_prompt,
            "all_negative_prompts": [req.negative_prompt] * n,
            "seed": seeds[0],
            "all_seeds": seeds,
            "subseed": subseed,
            "all_subseeds": [subseed + i for i in range(n)],
            "subseed_strength": req.subseed_strength,
            "width": req.width,
            "height": req.height,
            "sampler_name": sampler_name,
            "cfg_scale": req.cfg_scale,
            "steps": req.steps,
            "batch_size": req.batch_size,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": ckpt.model_name,
            "sd_model_hash": sha[:10],
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": denoise,
            "extra_generation_params": {},
            "index_of_first_image": 0,
            "infotexts": infotexts,
            "styles": req.styles or [],
            "job_timestamp": run["job_timestamp"],
            "clip_skip": clip_layers,
            "is_using_inpainting_conditioning": False,
            "interrupted": run["interrupted"],
            "version": "sdlab",
        }
        params = req.model_dump()
        if isinstance(req, Img2ImgRequest) and not req.include_init_images:
            params["init_images"] = None
            params["mask"] = None
        encoded = [encode_png(im, txt) for im, txt in zip(images, infotexts, strict=True)] if req.send_images else []
        return {"images": encoded, "parameters": params, "info": json.dumps(info)}


def _validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    loc = ["body", *[int(p) if p.isdigit() else p for p in exc.field.split(".")]]
    msg = str(exc).removeprefix(f"{exc.field}: ")
    return [{"type": "value_error", "loc": loc, "msg": msg, "input": None}]


def create_app(
    models_dir: Path,
    default_model: str | None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    max_loaded: int = 2,
    single_file_config: Path | None = None,
    optimizations: optimize.Optimizations | None = None,
    max_batch: int | None = None,
    max_batch_wait_ms: float = 50.0,
) -> FastAPI:
    """Build the FastAPI app serving the models in ``models_dir``.

    The startup model (``default_model``, else the first title) loads in a background
    thread; ``/healthz`` answers 503 until it has loaded, then 200 for the rest of the
    process, with ``"loaded": false`` after ``/sdapi/v1/unload-checkpoint`` (the next
    generation reloads it). Raises ModelError when ``models_dir`` is missing or
    ``default_model`` is not in it.
    """
    registry = ModelRegistry(models_dir, device=device, dtype=dtype, max_loaded=max_loaded, single_file_config=single_file_config,
                             optimizations=optimizations)
    if default_model is not None:
        default_model = registry.find(default_model).title
    rt = Runtime(registry, default_model, max_batch=max_batch, max_wait_ms=max_batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        age = _process_age_seconds()
        if age is not None:
            rt.startup["server_s"] = round(age, 2)  # the app built and uvicorn serving
        threading.Thread(target=rt.load_default, name="sdlab-load", daemon=True).start()
        yield

    app = FastAPI(title="sdlab runtime (A1111-compatible API)", lifespan=lifespan)
    app.state.runtime = rt
    app.include_router(comfy_api.router(rt))  # the ComfyUI API beside the SD WebUI one
    app.include_router(extras.router())  # /sdapi/v1/extra-single-image (Lanczos, Nearest)
    app.include_router(native_api.router(rt))  # POST /v1/generate: lists of tasks, batched together

    @app.exception_handler(ValidationError)
    async def _on_validation(request: Request, exc: ValidationError):
        return JSONResponse(status_code=exc.status, content={"detail": _validation_detail(exc)})

    @app.exception_handler(ModelError)
    async def _on_model_error(request: Request, exc: ModelError):
        status = 404 if isinstance(exc, ModelNotFoundError) else 500
        return JSONResponse(status_code=status, content={"error": "ModelError", "detail": str(exc)})

    # Cheap read-only routes are `async` so they run on the event loop and answer even
    # when every worker thread is queued behind the generation lock.
    async def health():
        if rt.ready.is_set():
            model = rt.options["sd_model_checkpoint"]
            return {"status": "ok", "model": model, "loaded": registry.is_loaded(model)}
        status = "error" if rt.error else "loading"
        return JSONResponse(status_code=503, content={"status": status, "model": None, "detail": rt.error})

    app.get("/healthz")(health)
    app.get("/internal/ping")(health)

    @app.post("/sdapi/v1/txt2img")
    def txt2img(req: Txt2ImgRequest):
        return rt.generate(req)

    @app.post("/sdapi/v1/img2img")
    def img2img(req: Img2ImgRequest):
        return rt.generate(req)

    @app.get("/sdapi/v1/progress")
    async def progress(skip_current_image: bool = False):
        return rt.state.progress(with_image=not skip_current_image)

    @app.post("/sdapi/v1/interrupt")
    async def interrupt():
        rt.interrupt()
        return {}

    @app.post("/sdapi/v1/skip")
    async def skip():
        rt.state.skipped = True
        return {}

    @app.get("/sdapi/v1/options")
    async def get_options():
        return rt.options

    @app.post("/sdapi/v1/options")
    def set_options(req: dict[str, Any] = Body(...)):
        if "CLIP_stop_at_last_layers" in req:
            value = req["CLIP_stop_at_last_layers"]
            if not isinstance(value, int) or not 1 <= value <= 12:
                raise ValidationError("CLIP_stop_at_last_layers", f"must be an integer 1..12, got {value!r}", 422)
        if req.get("sd_model_checkpoint") is not None:
            rt.set_model(str(req["sd_model_checkpoint"]))
            rt.ready.set()
            rt.error = None
        rt.options.update({k: v for k, v in req.items() if k != "sd_model_checkpoint"})
        return None

    @app.get("/sdapi/v1/sd-models")
    def sd_models():
        return registry.describe()

    @app.post("/sdapi/v1/refresh-checkpoints")
    def refresh_checkpoints():
        registry.refresh()
        return None

    @app.get("/sdapi/v1/samplers")
    def get_samplers():
        return samplers.sampler_list()

    @app.get("/sdapi/v1/schedulers")
    def get_schedulers():
        return [
            {"name": k, "label": k.title(), "aliases": None, "default_rho": None, "need_inner_model": False}
            for k in samplers.SCHEDULES
        ]

    @app.post("/sdapi/v1/unload-checkpoint")
    def unload_checkpoint():
        with rt.lock:
            registry.unload()
        logger.info("unloaded all models")
        return {}

    @app.post("/sdapi/v1/reload-checkpoint")
    def reload_checkpoint():
        current = rt.options["sd_model_checkpoint"]
        if current is None:
            raise HTTPException(status_code=409, detail="no checkpoint selected; POST /sdapi/v1/options first")
        rt.set_model(current)
        return {}

    return app


def main(argv: list[str] | None = None) -> int:
    """``python -m sdlab.runtime --models-dir DIR [--model NAME] [--host H] [--port N] [--threads N]``."""
    parser = argparse.ArgumentParser(prog="python -m sdlab.runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, required=True, help="folder of diffusers folders / .safetensors files")
    parser.add_argument("--model", default=None, help="title of the startup model (default: first one found)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="fp16, bf16 or fp32 (default: fp16 on cuda, fp32 on cpu)")
    parser.add_argument("--max-loaded", type=int, default=2, help="pipelines kept in memory at once")
    parser.add_argument(
        "--single-file-config",
        type=Path,
        default=None,
        help="local diffusers folder providing configs for single-file .safetensors checkpoints",
    )
    parser.add_argument("--max-batch", type=int, default=None, help="images per batch (default: from the card's memory)")
    parser.add_argument("--max-batch-wait-ms", type=float, default=50.0, help="how long a task waits for batch company")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--prewarm", action=argparse.BooleanOptionalAction, default=True,
                        help="load the startup model's GPU kernels in a side thread during the imports (default: on)")
    optimize.add_arguments(parser)
    args = parser.parse_args(argv)
    started = _process_age_seconds()  # the interpreter and this module's imports (torch) took this long

    logging.basicConfig(stream=sys.stdout, level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        optimizations = optimize.from_args(args)
        device = resolve_device(args.device)
        dtype = resolve_dtype(optimizations.dtype, device)
    except (ModelError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    # the first image's GPU kernels load in a side thread while diffusers and transformers import (see prewarm.py)
    if args.prewarm:  # a single-file checkpoint has no configs: only the matmul and the convolution run
        prewarm.start(args.models_dir / args.model if args.model else None, device=device, dtype=dtype)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    import uvicorn

    try:
        app = create_app(
            args.models_dir,
            args.model,
            device=device,
            dtype=args.dtype,
            max_loaded=args.max_loaded,
            single_file_config=args.single_file_config,
            optimizations=optimizations,
            max_batch=args.max_batch,
            max_batch_wait_ms=args.max_batch_wait_ms,
        )
    except (ModelError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    if started is not None:
        app.state.runtime.startup["main_s"] = round(started, 2)
    logger.info("sdlab runtime on http://%s:%d (torch threads %d)", args.host, args.port, torch.get_num_threads())
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0
