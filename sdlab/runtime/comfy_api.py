"""The ComfyUI HTTP and websocket API, served by the sdlab runtime beside the SD WebUI API.

Routes, bodies and status codes follow ComfyUI's ``server.py``, so clients written for ComfyUI
(and the queue agent's ComfyUI adapter) work unchanged: ``POST /prompt`` answers
``{"prompt_id", "number", "node_errors"}`` or 400 ``{"error": {...}, "node_errors": {...}}``;
``GET /history/{prompt_id}``, ``GET /view``, ``POST /upload/image``, ``POST /interrupt``,
``GET|POST /queue``, ``GET /object_info``, ``GET /system_stats`` and the ``/ws?clientId=`` websocket.
Every route is also served under ``/api`` as current ComfyUI does. Mount with
``app.include_router(comfy_api.router(runtime))``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import sys
import uuid
from typing import Any

import torch
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from sdlab.runtime import comfy_graph
from sdlab.runtime.comfy_nodes import NODE_TYPES
from sdlab.runtime.comfy_queue import FILE_TYPES, FileStore, Hub, PromptQueue, safe_name

logger = logging.getLogger(__name__)
MAX_UPLOAD_BYTES = 64 * 1024 * 1024


class _Catalog:
    """Checkpoint titles and uploaded inputs: the value lists of CheckpointLoaderSimple and LoadImage."""

    def __init__(self, runtime: Any, store: FileStore) -> None:
        self._runtime, self._store = runtime, store

    def checkpoints(self) -> list[str]:
        return self._runtime.registry.titles()

    def input_files(self) -> list[str]:
        return self._store.names("input")


def _memory() -> tuple[int, int]:
    """(total, available) RAM in bytes, 0 where the platform does not say."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _system_stats(device: str) -> dict[str, Any]:
    ram_total, ram_free = _memory()
    vram_total = vram_free = 0
    if device.startswith("cuda") and torch.cuda.is_available():
        vram_free, vram_total = torch.cuda.mem_get_info()
    return {
        "system": {"os": os.name, "ram_total": ram_total, "ram_free": ram_free, "comfyui_version": "sdlab",
                   "python_version": sys.version, "pytorch_version": torch.__version__, "embedded_python": False,
                   "argv": sys.argv},
        "devices": [{"name": torch.cuda.get_device_name() if vram_total else device, "type": device.split(":")[0],
                     "index": None, "vram_total": vram_total, "vram_free": vram_free,
                     "torch_vram_total": vram_total, "torch_vram_free": vram_free}],
        "platform": platform.platform(),
    }


def _bad_request(kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, "details": message, "extra_info": {}},
                         "node_errors": {}}, status_code=400)


def router(runtime: Any) -> APIRouter:
    """The ComfyUI routes for ``runtime`` (the server's :class:`Runtime`: its registry and generation lock)."""
    store, hub = FileStore(), Hub()
    queue = PromptQueue(runtime.registry, runtime.lock, store, hub)
    catalog = _Catalog(runtime, store)
    api = APIRouter(tags=["comfyui"])

    @api.post("/prompt")
    async def post_prompt(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return _bad_request("invalid_json", "the body is not JSON; send {\"prompt\": {...}, \"client_id\": \"...\"}")
        if not isinstance(body, dict) or "prompt" not in body:
            return _bad_request("no_prompt", "No prompt provided")
        try:
            outputs, node_errors, values = comfy_graph.validate(body["prompt"], catalog)
        except comfy_graph.PromptRejected as rejected:
            return JSONResponse({"error": rejected.error, "node_errors": rejected.node_errors}, status_code=400)
        number: float = queue.next_number
        if "number" in body:
            number = float(body["number"])
        else:
            queue.next_number += 1
            if body.get("front"):
                number = -number
        extra = dict(body.get("extra_data") or {})
        if body.get("client_id"):
            extra["client_id"] = str(body["client_id"])
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        queue.put([number, prompt_id, body["prompt"], extra, outputs], values)
        return {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}

    @api.get("/prompt")
    async def get_prompt():
        return queue.info()

    @api.get("/queue")
    async def get_queue():
        running, pending = queue.current()
        return {"queue_running": running, "queue_pending": pending}

    @api.post("/queue")
    async def post_queue(request: Request):
        body = await request.json()
        if body.get("clear"):
            queue.clear()
        if body.get("delete"):
            queue.delete([str(p) for p in body["delete"]])
        return Response(status_code=200)

    @api.post("/interrupt")
    async def post_interrupt(request: Request):
        raw = await request.body()
        prompt_id = None
        if raw:
            try:
                prompt_id = (json.loads(raw) or {}).get("prompt_id")
            except (ValueError, AttributeError):
                prompt_id = None
        queue.interrupt(prompt_id)
        return Response(status_code=200)

    @api.get("/history")
    async def get_history(max_items: int | None = None):
        items = list(queue.history.items())
        if max_items is not None:
            items = items[-max_items:] if max_items > 0 else []
        return dict(items)

    @api.get("/history/{prompt_id}")
    async def get_history_item(prompt_id: str):
        entry = queue.history.get(prompt_id)
        return {prompt_id: entry} if entry is not None else {}

    @api.post("/history")
    async def post_history(request: Request):
        body = await request.json()
        if body.get("clear"):
            queue.history.clear()
        for prompt_id in body.get("delete") or []:
            queue.history.pop(str(prompt_id), None)
        return Response(status_code=200)

    @api.get("/view")
    async def view(filename: str | None = None, subfolder: str = "", type: str = "output"):
        if not filename:
            return Response(status_code=404)
        if not safe_name(filename) or type not in FILE_TYPES:
            return Response(status_code=400)
        if not safe_name(subfolder):
            return Response(status_code=403)
        data = store.get(type, subfolder, os.path.basename(filename))
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="image/png", headers={"Content-Disposition": f'filename="{filename}"'})

    @api.post("/upload/image")
    async def upload_image(request: Request):
        form = await request.form()
        image = form.get("image")
        kind = str(form.get("type") or "input")
        subfolder = str(form.get("subfolder") or "")
        if not isinstance(image, UploadFile) or not image.filename or kind not in FILE_TYPES:
            return Response(status_code=400)
        name = os.path.basename(image.filename)
        if not safe_name(name) or not safe_name(subfolder):
            return Response(status_code=400)
        data = await image.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            return Response(status_code=413)
        if str(form.get("overwrite", "")).lower() not in ("true", "1"):
            stem, dot, ext = name.rpartition(".")
            stem, ext = (stem, dot + ext) if dot else (name, "")
            n = 1
            while store.get(kind, subfolder, name) not in (None, data):
                name, n = f"{stem} ({n}){ext}", n + 1
        store.put(kind, subfolder, name, data)
        return {"name": name, "subfolder": subfolder, "type": kind}

    @api.get("/object_info")
    async def object_info():
        return {name: node.info(catalog) for name, node in NODE_TYPES.items()}

    @api.get("/object_info/{node_class}")
    async def object_info_node(node_class: str):
        node = NODE_TYPES.get(node_class)
        return {node_class: node.info(catalog)} if node else {}

    @api.get("/models")
    async def model_folders():
        return ["checkpoints"]

    @api.get("/models/{folder}")
    async def models(folder: str):
        return catalog.checkpoints() if folder == "checkpoints" else Response(status_code=404)

    @api.get("/embeddings")
    async def embeddings():
        return []

    @api.get("/system_stats")
    async def system_stats():
        return _system_stats(runtime.registry.device)

    @api.websocket("/ws")
    async def websocket(ws: WebSocket):
        sid = ws.query_params.get("clientId") or uuid.uuid4().hex
        messages = hub.connect(sid, asyncio.get_running_loop())  # before accept: nothing sent to sid can be lost
        await ws.accept()
        hub.send("status", {"status": queue.info(), "sid": sid}, sid)

        async def pump() -> None:
            try:
                while True:
                    await ws.send_text(json.dumps(await messages.get()))
            except (RuntimeError, OSError) as exc:  # the client went away mid-send
                logger.debug("websocket %s closed: %s", sid, exc)

        sender = asyncio.create_task(pump())
        try:
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass  # ComfyUI ignores what clients send
        finally:
            sender.cancel()
            hub.disconnect(sid, messages)

    outer = APIRouter()
    outer.include_router(api)
    outer.include_router(api, prefix="/api")
    return outer
