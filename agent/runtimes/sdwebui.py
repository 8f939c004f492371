"""SD WebUI (AUTOMATIC1111) API adapter: `/sdapi/v1/txt2img`, `/img2img`, `/extra-single-image`.

The project's diffusers runtime speaks the same API, so this adapter drives both.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import httpx

from agent.runtimes.base import RuntimeFailure, RuntimeResult
from sdlab.contracts import TaskMessage

log = logging.getLogger(__name__)
ENDPOINTS = {
    "text-to-image": "txt2img",
    "image-to-image": "img2img",
    "extra-single-image": "extra-single-image",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _decode_image(data: Any, n: int) -> bytes:
    if not isinstance(data, str):
        raise RuntimeFailure(f"image {n} in the runtime's answer is not a base64 string", retryable=True)
    if data.startswith("data:"):
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as err:
        raise RuntimeFailure(f"image {n} in the runtime's answer is not valid base64", retryable=True) from err
    if not raw.startswith(PNG_MAGIC):
        raise RuntimeFailure(f"image {n} in the runtime's answer is not a PNG", retryable=True)
    return raw


class SdWebUIAdapter:
    def __init__(self, base_url: str, timeout_seconds: float) -> None:
        self._base = base_url.rstrip("/")
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_seconds, connect=5.0))

    def ready(self) -> bool:
        try:
            return self._http.get(f"{self._base}/sdapi/v1/options", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def run(self, task: TaskMessage) -> RuntimeResult:
        endpoint = ENDPOINTS.get(task.task_type)
        if endpoint is None:
            raise RuntimeFailure(f"task_type {task.task_type!r} is not served by SD WebUI", retryable=False)
        try:
            reply = self._http.post(f"{self._base}/sdapi/v1/{endpoint}", json=task.payload)
        except httpx.TimeoutException as err:
            self.interrupt()
            raise RuntimeFailure(f"runtime did not answer {endpoint} in time ({err.__class__.__name__})", retryable=True) from err
        except httpx.HTTPError as err:
            raise RuntimeFailure(f"runtime unreachable: {err.__class__.__name__}: {err}", retryable=True) from err
        if reply.status_code >= 500:
            raise RuntimeFailure(f"runtime answered {reply.status_code} to {endpoint}: {reply.text[:300]}", retryable=True)
        if reply.status_code >= 400:
            raise RuntimeFailure(f"runtime rejected the request ({reply.status_code}): {reply.text[:500]}", retryable=False)
        try:
            body = reply.json()
        except ValueError as err:
            raise RuntimeFailure("runtime answered with a body that is not JSON", retryable=True) from err
        images = body.get("images") if endpoint != "extra-single-image" else [body.get("image")]
        if not isinstance(images, list) or not images:
            raise RuntimeFailure("runtime answered without images", retryable=True)
        info = body.get("info")
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                info = {"text": info}
        return RuntimeResult(images=[_decode_image(img, n) for n, img in enumerate(images)], info=info or {})

    def interrupt(self) -> None:
        try:
            self._http.post(f"{self._base}/sdapi/v1/interrupt", timeout=5.0)
        except httpx.HTTPError:
            log.warning("interrupt request to the runtime failed")
