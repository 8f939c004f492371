"""SD WebUI (AUTOMATIC1111) API adapter: `/sdapi/v1/txt2img`, `/img2img`, `/extra-single-image`.

The project's diffusers runtime speaks the same API, so this adapter drives both. Before generating it:
1. accepts the public guidance's request shape: routing keys in `alwayson_scripts` (`sd_model_checkpoint`,
   `override_settings`, `image_link`, `task`, `id_task`, ...) are moved out or dropped;
2. resolves `s3://` input images to base64 (allow-listed buckets only; see agent/inputs.py);
3. switches the runtime's model when the task asks for another one (`override_settings.sd_model_checkpoint`):
   refresh-checkpoints, find the title in sd-models, POST options, wait until GET options shows it. Switching
   through options makes the change stick, so the next task for the same model pays no load; an unknown model
   fails the task at once, naming the models the runtime has.
4. checks `sampler_name` and `scheduler` against what the runtime offers (`/sdapi/v1/samplers`, `/schedulers`,
   asked once per adapter): SD WebUI silently substitutes a sampler it does not know, so an unknown one fails the
   task, naming those it offers. A runtime without these endpoints (404) is not checked.
`override_settings` is passed through unchanged. A call that outlives the timeout interrupts the runtime.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

import httpx

from agent.inputs import TaskInputs
from agent.runtimes.base import RuntimeFailure, RuntimeResult
from sdlab.contracts import TaskMessage

log = logging.getLogger(__name__)
ENDPOINTS = {
    "text-to-image": "txt2img",
    "image-to-image": "img2img",
    "extra-single-image": "extra-single-image",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# keys the guidance's clients put in alwayson_scripts for routing; none of them is a script
ROUTING_KEYS = ("task", "id_task", "uid", "sd_model_checkpoint", "image_link", "save_dir", "sd_vae", "override_settings")
MODEL_POLL_SECONDS = 0.25


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


def bare_model_name(name: str) -> str:
    """`"v1-5.safetensors [6ce0161689]"` -> `"v1-5"`: A1111 titles carry a hash and often an extension."""
    name = name.strip()
    if name.endswith("]") and " [" in name:
        name = name[: name.rindex(" [")]
    for ext in (".safetensors", ".ckpt"):
        name = name.removesuffix(ext)
    return name


def prepare_payload(payload: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The body to send and the checkpoint the task asks for (None: whatever is loaded)."""
    body = dict(payload)
    scripts = dict(body.get("alwayson_scripts") or {})
    overrides = dict(body.get("override_settings") or {})
    if isinstance(scripts.get("override_settings"), dict):
        overrides = {**scripts["override_settings"], **overrides}
    wanted = overrides.get("sd_model_checkpoint") or scripts.get("sd_model_checkpoint")
    if scripts.get("image_link") and not body.get("init_images"):
        body["init_images"] = [scripts["image_link"]]
    for key in ROUTING_KEYS:
        scripts.pop(key, None)
    if scripts:
        body["alwayson_scripts"] = scripts
    else:
        body.pop("alwayson_scripts", None)
    if overrides:
        body["override_settings"] = overrides
    return body, (str(wanted) if wanted else None)


class SdWebUIAdapter:
    def __init__(self, base_url: str, timeout_seconds: float, inputs: TaskInputs | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout_seconds
        self.inputs = inputs
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_seconds, connect=5.0))
        self._offered: dict[str, tuple[list[str], set[str]] | None] = {}  # asked once: "samplers", "schedulers"

    def ready(self) -> bool:
        try:
            return self._http.get(f"{self._base}/sdapi/v1/options", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def run(self, task: TaskMessage) -> RuntimeResult:
        endpoint = ENDPOINTS.get(task.task_type)
        if endpoint is None:
            raise RuntimeFailure(f"task_type {task.task_type!r} is not served by SD WebUI", retryable=False)
        body, wanted = prepare_payload(task.payload)
        if self.inputs is not None:
            body = self.inputs.resolve_webui(body)
        if endpoint != "extra-single-image":
            self.check_sampling(body)
        if wanted:
            self.ensure_model(wanted)
        reply = self._call("POST", endpoint, json=body)
        try:
            answer = reply.json()
        except ValueError as err:
            raise RuntimeFailure("runtime answered with a body that is not JSON", retryable=True) from err
        images = answer.get("images") if endpoint != "extra-single-image" else [answer.get("image")]
        if not isinstance(images, list) or not images:
            raise RuntimeFailure("runtime answered without images", retryable=True)
        info = answer.get("info") if endpoint != "extra-single-image" else {"html_info": answer.get("html_info")}
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                info = {"text": info}
        return RuntimeResult(images=[_decode_image(img, n) for n, img in enumerate(images)], info=info or {})

    def offered(self, kind: str) -> tuple[list[str], set[str]] | None:
        """What the runtime lists under `/sdapi/v1/<kind>`: (names, every accepted spelling in lower case);
        None when it has no such endpoint."""
        if kind not in self._offered:
            try:
                items = self._call("GET", kind).json()
            except RuntimeFailure as err:
                if "(404)" not in str(err):
                    raise
                log.info("runtime does not list %s; they are not checked", kind)
                items = None
            listing = None
            if isinstance(items, list):
                entries = [i for i in items if isinstance(i, dict) and i.get("name")]
                spellings = {str(n).lower() for i in entries for n in (i["name"], i.get("label"), *(i.get("aliases") or [])) if n}
                listing = ([str(i.get("label") or i["name"]) for i in entries], spellings)
            self._offered[kind] = listing
        return self._offered[kind]

    def check_sampling(self, body: dict[str, Any]) -> None:
        """Fail the task (not retryable) when it names a sampler or scheduler the runtime does not offer."""
        for field, kind in (("sampler_name", "samplers"), ("scheduler", "schedulers")):
            value = body.get(field)
            if value is None:
                continue
            listing = self.offered(kind)
            if listing is None:
                continue
            names, known = listing
            wanted = str(value).strip().lower()
            if wanted in known:
                continue
            # "DPM++ 2M Karras": a sampler with its schedule in the name, as clients of older SD WebUI send it
            schedules = self.offered("schedulers") if field == "sampler_name" else None
            if schedules and any(wanted.endswith(" " + s) and wanted[: -len(s) - 1] in known for s in schedules[1]):
                continue
            raise RuntimeFailure(f"payload.{field}: {value!r} is not offered by the runtime; use one of {names}",
                                 retryable=False)

    def ensure_model(self, wanted: str) -> str:
        """Make `wanted` the runtime's checkpoint (A1111's options endpoint); returns its title."""
        current = self._call("GET", "options").json().get("sd_model_checkpoint") or ""
        if bare_model_name(current) == bare_model_name(wanted):
            return current
        self._call("POST", "refresh-checkpoints")
        models = self._call("GET", "sd-models").json()
        title = next((m["title"] for m in models if wanted in (m.get("title"), m.get("model_name"))), None)
        title = title or next((m["title"] for m in models if bare_model_name(m["title"]) == bare_model_name(wanted)), None)
        if title is None:
            raise RuntimeFailure(f"model {wanted!r} is not on the runtime; use one of {[m.get('title') for m in models]} "
                                 "in override_settings.sd_model_checkpoint", retryable=False)
        log.info("switching the runtime's model from %s to %s", current or "none", title)
        started = time.monotonic()
        self._call("POST", "options", json={"sd_model_checkpoint": title})
        while bare_model_name(self._call("GET", "options").json().get("sd_model_checkpoint") or "") != bare_model_name(title):
            if time.monotonic() - started > self._timeout:
                raise RuntimeFailure(f"runtime did not switch to model {title!r} within {self._timeout:.0f} s", retryable=True)
            time.sleep(MODEL_POLL_SECONDS)
        log.info("model %s loaded in %.2f s", title, time.monotonic() - started)
        return title

    def _call(self, method: str, endpoint: str, **kwargs: Any) -> httpx.Response:
        """One SD WebUI API call; transport errors, timeouts and 5xx are retryable, 4xx are not."""
        try:
            reply = self._http.request(method, f"{self._base}/sdapi/v1/{endpoint}", **kwargs)
        except httpx.TimeoutException as err:
            self.interrupt()
            raise RuntimeFailure(f"runtime did not answer {endpoint} in time ({err.__class__.__name__})", retryable=True) from err
        except httpx.HTTPError as err:
            raise RuntimeFailure(f"runtime unreachable: {err.__class__.__name__}: {err}", retryable=True) from err
        if reply.status_code >= 500:
            raise RuntimeFailure(f"runtime answered {reply.status_code} to {endpoint}: {reply.text[:300]}", retryable=True)
        if reply.status_code >= 400:
            raise RuntimeFailure(f"runtime rejected {endpoint} ({reply.status_code}): {reply.text[:500]}", retryable=False)
        return reply

    def interrupt(self) -> None:
        try:
            self._http.post(f"{self._base}/sdapi/v1/interrupt", timeout=5.0)
        except httpx.HTTPError:
            log.warning("interrupt request to the runtime failed")
