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
from pathlib import Path
from typing import Any

import torch
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image, PngImagePlugin, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdlab.errors import ModelError, ValidationError
from sdlab.runtime import samplers
from sdlab.runtime.loader import ModelNotFoundError, ModelRegistry, with_scheduler

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
    """What ``/sdapi/v1/progress`` reports; written by the generating thread only."""

    def __init__(self) -> None:
        self.begin("", 0)

    def begin(self, job: str, job_count: int) -> None:
        self.job, self.job_count, self.job_no = job, job_count, 0
        self.sampling_step, self.sampling_steps = 0, 0
        self.interrupted = self.skipped = False
        self.time_start = time.time()
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")

    def end(self) -> None:
        self.job, self.job_count = "", 0

    def as_dict(self) -> dict[str, Any]:
        keys = ("skipped", "interrupted", "job", "job_count", "job_timestamp", "job_no", "sampling_step", "sampling_steps")
        return {k: getattr(self, k) for k in keys}

    def progress(self) -> dict[str, Any]:
        # Read each field once: the generating thread may end the job while we compute.
        job_count, steps = self.job_count, self.sampling_steps
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
            "current_image": None,
            "textinfo": None,
        }


class Runtime:
    """Model selection, options and the generation loop behind the HTTP routes."""

    def __init__(self, registry: ModelRegistry, default_model: str | None) -> None:
        self.registry = registry
        self.lock = threading.Lock()  # one generation / model switch at a time
        self.state = JobState()
        self.ready = threading.Event()
        self.error: str | None = None
        titles = registry.titles()
        if default_model is None and not titles:
            self.error = f"no models in {registry.models_dir}; build one with sdlab.runtime.model.build_tiny_model"
        self.options: dict[str, Any] = {
            "sd_model_checkpoint": default_model or (titles[0] if titles else None),
            "samples_format": "png",
            "CLIP_stop_at_last_layers": 1,
            "eta_noise_seed_delta": 0,
            "sd_vae": "Automatic",
            "sd_checkpoints_limit": registry.max_loaded,
        }

    def load_default(self) -> None:
        """Load the startup model; health turns green when this succeeds."""
        if self.error:
            logger.error("%s", self.error)
            return
        try:
            self.set_model(self.options["sd_model_checkpoint"])
        except ModelError as exc:
            self.error = str(exc)
            logger.error("cannot load startup model: %s", exc)
            return
        self.ready.set()

    def set_model(self, name: str) -> str:
        """Make ``name`` the current checkpoint, loading it now. Returns its title."""
        ckpt = self.registry.find(name)
        with self.lock:
            started = time.perf_counter()
            self.registry.get(ckpt.title)
            self.options["sd_model_checkpoint"] = ckpt.title
            self.options["sd_checkpoint_hash"] = self.registry.sha256(ckpt)
        logger.info("model %s ready (%.2f s)", ckpt.title, time.perf_counter() - started)
        return ckpt.title

    def generate(self, req: Txt2ImgRequest) -> dict[str, Any]:
        """Run a txt2img or (for an :class:`Img2ImgRequest`) img2img request; returns the A1111 response body."""
        if req.enable_hr:
            raise ValidationError("enable_hr", "hires fix is not supported by the sdlab runtime; set it to false", 422)
        if req.script_name or req.alwayson_scripts:
            raise ValidationError("script_name", "scripts/alwayson_scripts are not supported by the sdlab runtime", 422)
        sampler_name = req.sampler_name or req.sampler_index
        spec, _ = samplers.resolve(sampler_name, req.scheduler)
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
            scheduler = samplers.sampler_for(sampler_name, base.scheduler.config, req.scheduler)
            pipe = with_scheduler(base, scheduler, img2img=img2img)
            job = "img2img" if img2img else "txt2img"
            self.state.begin(job, req.n_iter)
            started = time.perf_counter()
            try:
                images, seeds = self._run(pipe, req, init_images, clip_layers)
            finally:
                interrupted, timestamp = self.state.interrupted, self.state.job_timestamp
                self.state.end()
            elapsed = time.perf_counter() - started
        logger.info(
            "%s: %d image(s) %dx%d, %d steps, %s, model %s, %.2f s%s",
            job,
            len(images),
            req.width,
            req.height,
            req.steps,
            spec.name,
            title,
            elapsed,
            " (interrupted)" if interrupted else "",
        )
        run = {
            "sampler_name": sampler_name,
            "clip_layers": clip_layers,
            "interrupted": interrupted,
            "job_timestamp": timestamp,
            "img2img": img2img,
        }
        return self._response(req, images, seeds, ckpt, run)

    def _run(self, pipe, req: Txt2ImgRequest, init_images, clip_layers: int):
        seed = req.seed if req.seed != -1 else random.randrange(MAX_SEED)
        all_seeds = [seed + i for i in range(req.batch_size * req.n_iter)]

        def on_step_end(p, step, timestep, callback_kwargs):
            self.state.sampling_step = step + 1
            self.state.sampling_steps = p.num_timesteps
            if self.state.interrupted or self.state.skipped:
                # diffusers skips the remaining steps and decodes the current latents,
                # which is A1111's "return the partial image" behaviour.
                p._interrupt = True
            return callback_kwargs

        images: list[Image.Image] = []
        for it in range(req.n_iter):
            if self.state.interrupted:
                break
            self.state.job_no = it
            seeds = all_seeds[it * req.batch_size : (it + 1) * req.batch_size]
            kwargs: dict[str, Any] = {
                "prompt": [req.prompt] * len(seeds),
                "negative_prompt": [req.negative_prompt] * len(seeds),
                "num_inference_steps": req.steps,
                "guidance_scale": req.cfg_scale,
                # CPU generators: identical noise on CPU and CUDA hosts.
                "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
                "callback_on_step_end": on_step_end,
                "clip_skip": clip_layers - 1 if clip_layers > 1 else None,
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
        return images, all_seeds[: len(images)] or all_seeds

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
) -> FastAPI:
    """Build the FastAPI app serving the models in ``models_dir``.

    The startup model (``default_model``, else the first title) loads in a background
    thread; ``/healthz`` answers 503 until it has loaded, then 200 for the rest of the
    process, with ``"loaded": false`` after ``/sdapi/v1/unload-checkpoint`` (the next
    generation reloads it). Raises ModelError when ``models_dir`` is missing or
    ``default_model`` is not in it.
    """
    registry = ModelRegistry(models_dir, device=device, dtype=dtype, max_loaded=max_loaded, single_file_config=single_file_config)
    if default_model is not None:
        default_model = registry.find(default_model).title
    rt = Runtime(registry, default_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=rt.load_default, name="sdlab-load", daemon=True).start()
        yield

    app = FastAPI(title="sdlab runtime (A1111-compatible API)", lifespan=lifespan)
    app.state.runtime = rt

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
    async def progress():
        return rt.state.progress()

    @app.post("/sdapi/v1/interrupt")
    async def interrupt():
        rt.state.interrupted = True
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
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(stream=sys.stdout, level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    import uvicorn

    try:
        app = create_app(
            args.models_dir,
            args.model,
            device=args.device,
            dtype=args.dtype,
            max_loaded=args.max_loaded,
            single_file_config=args.single_file_config,
        )
    except ModelError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("sdlab runtime on http://%s:%d (torch threads %d)", args.host, args.port, torch.get_num_threads())
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0
