"""The runtime's native API: ``POST /v1/generate`` takes a list of txt2img tasks and answers each one.

Tasks in one request may differ in everything (prompt, seed, CFG, size, steps, sampler, model); compatible
ones, from this request and from any other request in flight, share GPU batches (:mod:`sdlab.runtime.batch`).
Each task is a SD WebUI txt2img body plus an ``id``, with the same defaults and validation as
``/sdapi/v1/txt2img``, so one task gives the same images on either route. A bad task gets its own error;
the others still run.

    POST /v1/generate  [{"id": "a", "prompt": "a red fox", "seed": 1, "steps": 25}, {"id": "b", ...}]
    200 {"results": [{"id": "a", "status": "ok", "images": [<base64 PNG>], "info": {...}},
                     {"id": "b", "status": "error", "error": {"status": 422, "detail": "..."}}],
         "seconds": 1.9}
"""

from __future__ import annotations

import datetime
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pydantic
import torch
from fastapi import APIRouter, Body, HTTPException
from pydantic import Field

from sdlab.errors import ModelError, ValidationError
from sdlab.runtime import optimize
from sdlab.runtime.loader import ModelNotFoundError

if TYPE_CHECKING:
    from sdlab.runtime.server import Runtime

MAX_TASKS = 256


def _task_model():
    from sdlab.runtime.server import Txt2ImgRequest

    class NativeTask(Txt2ImgRequest):
        """One task of ``/v1/generate``: a txt2img body with an ``id``; ``model`` picks the checkpoint."""

        id: str = Field(..., min_length=1, max_length=256)
        model: str | None = None

    return NativeTask


def _error(task_id: Any, status: int, detail: Any) -> dict[str, Any]:
    return {"id": task_id, "status": "error", "error": {"status": status, "detail": detail}}


def router(rt: Runtime) -> APIRouter:
    """The native routes, bound to runtime ``rt``; ``create_app`` includes them."""
    api = APIRouter(tags=["native"])
    native_task = _task_model()
    encoders = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2), thread_name_prefix="sdlab-png")

    def prepare(raw: Any):
        task_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(raw, dict):
            return task_id, _error(None, 422, "each task must be an object")
        if raw.get("init_images") is not None:
            return task_id, _error(task_id, 422, "init_images: img2img is served by /sdapi/v1/img2img, not /v1/generate")
        try:
            task = native_task.model_validate(raw)
        except pydantic.ValidationError as exc:
            return task_id, _error(task_id, 422, json.loads(exc.json(include_url=False)))
        if task.model:
            overrides = {**(task.override_settings or {}), "sd_model_checkpoint": task.model}
            task = task.model_copy(update={"override_settings": overrides})
        try:
            return task_id, rt.prepare(task)
        except ValidationError as exc:
            return task_id, _error(task_id, exc.status, str(exc))
        except ModelNotFoundError as exc:
            return task_id, _error(task_id, 404, str(exc))
        except ModelError as exc:
            return task_id, _error(task_id, 500, str(exc))

    @api.post("/v1/generate")
    def generate(body: Any = Body(...)) -> dict[str, Any]:
        """Generate every task of the list (or of ``{"tasks": [...]}``); one result per task, in order."""
        started = time.perf_counter()
        tasks = body.get("tasks") if isinstance(body, dict) else body
        if not isinstance(tasks, list) or not tasks:
            raise HTTPException(status_code=422, detail='send a non-empty JSON list of tasks (or {"tasks": [...]})')
        if len(tasks) > MAX_TASKS:
            raise HTTPException(status_code=413, detail=f"{len(tasks)} tasks; send at most {MAX_TASKS} per request")
        if not rt.ready.is_set():
            raise HTTPException(status_code=503, detail=rt.error or "the model is still loading; retry shortly")
        mark = rt._interrupts
        timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        prepared = [prepare(raw) for raw in tasks]
        # All tasks go into the queue before waiting on any, so they can share batches.
        pending: list[tuple[Any, Any, Any, Any]] = []
        for task_id, prep in prepared:
            if isinstance(prep, dict):
                pending.append((task_id, prep, None, None))
                continue
            seeds = rt.seeds_of(prep.req)
            pending.append((task_id, prep, seeds, rt.submit(prep, seeds, mark=mark)))

        def finish(entry) -> dict[str, Any]:
            task_id, prep, seeds, future = entry
            if future is None:
                return prep
            try:
                out = future.result()
            except Exception as exc:  # the batch failed: every task in it reports why
                return _error(task_id, 500, f"generation failed: {exc.__class__.__name__}: {exc}")
            body = rt.respond(prep, out.images, seeds[: len(out.images)] or seeds, rt._interrupts > mark, timestamp)
            return {"id": task_id, "status": "ok", "images": body["images"], "info": json.loads(body["info"])}

        results = list(encoders.map(finish, pending))  # PNG encoding in parallel threads
        return {"results": results, "seconds": round(time.perf_counter() - started, 4)}

    @api.get("/v1/info")
    def info() -> dict[str, Any]:
        """What this runtime batches and how: max batch at the model's size, optimisations, queue counters."""
        from sdlab.runtime.batch import BatchKey

        model = rt.options.get("sd_model_checkpoint")
        opts = optimize.Optimizations()
        if model and rt.registry.is_loaded(model):
            opts = optimize.settings_of(rt.registry.get(model))
        return {
            "model": model,
            "ready": rt.ready.is_set(),
            "device": rt.registry.device,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "max_batch_512": rt.max_batch_for(BatchKey(model=model or "")),
            "max_wait_ms": rt.queue.max_wait_s * 1000,
            "optimizations": opts.describe(),
            "batches": rt.queue.batches,
            "busy_seconds": round(rt.queue.busy_seconds, 3),
            "pending_images": rt.queue.pending(),
            "startup": rt.startup,
        }

    return api
