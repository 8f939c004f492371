"""ComfyUI API adapter: a workflow in, its saved images out.

One task, read top to bottom:
1. the graph: the payload itself (an API-format export), `{"prompt": graph}`, or a named template from the
   bucket (`{"workflow": name, "params": {...}}`, see sdlab/workflows.py), with `params` filled in;
2. LoadImage inputs given as `s3://` URIs or base64 are uploaded with `POST /upload/image` and replaced
   by the name ComfyUI gave them;
3. open `/ws?clientId=<uuid>` first (so no message is missed), then `POST /prompt {"prompt", "client_id"}`;
   a 400 names the failing nodes (`node_errors`) or the unknown node type (`error`);
4. follow the websocket with bounded waits (never a blocking recv): `execution_error` fails the task naming
   node id, node type and exception; `execution_interrupted` is retryable; `execution_success` or
   `executing` with `node: null` ends it; a quiet socket falls back to polling `/history/{prompt_id}`;
5. `GET /history/{prompt_id}` and `GET /view?filename&subfolder&type` for every image output.
Past the timeout the prompt is removed from the queue and `/interrupt`ed; `interrupt()` does the same on cancel.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import logging
import time
import uuid
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from agent.inputs import IMAGE_MAGIC, TaskInputs
from agent.progress import ProgressSink
from agent.runtimes.base import RuntimeFailure, RuntimeResult
from sdlab.contracts import TaskMessage
from sdlab.errors import ValidationError
from sdlab.workflows import apply_params

log = logging.getLogger(__name__)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RECV_SECONDS = 5.0  # longest single websocket wait; between waits the deadline and /history are checked
HISTORY_POLL_SECONDS = 0.5


def describe_rejection(status: int, body: Any) -> str:
    """ComfyUI's 400 from /prompt in one line: the prompt-level error, then each node's errors."""
    if not isinstance(body, dict):
        return f"ComfyUI rejected the workflow ({status}): {str(body)[:300]}"
    error = body.get("error")
    if isinstance(error, dict):
        text = error.get("message", "")
        if error.get("details") and error.get("type") != "prompt_outputs_failed_validation":
            text += f" ({error['details']})"
    else:
        text = str(error or "")
    parts = [f"ComfyUI rejected the workflow: {text}".rstrip(": ")]
    node_errors = body.get("node_errors") or {}
    for node_id, entry in (node_errors.items() if isinstance(node_errors, dict) else []):
        for err in entry.get("errors", []):
            parts.append(f"node {node_id} ({entry.get('class_type', '?')}): {err.get('message', '')}: {err.get('details', '')}")
    return "; ".join(parts)


def describe_execution_error(data: dict[str, Any]) -> str:
    message = str(data.get("exception_message", "")).strip()[:500]
    return (f"ComfyUI node {data.get('node_id')} ({data.get('node_type')}) failed: "
            f"{data.get('exception_type', 'Exception')}: {message}")


def _looks_like_base64_image(value: str) -> bool:
    if value.startswith("data:"):
        return True
    if len(value) < 64 or "." in value[-6:]:
        return False  # a file name on the ComfyUI server, e.g. "example.png"
    try:
        return base64.b64decode(value[:64], validate=True).startswith(IMAGE_MAGIC)
    except (binascii.Error, ValueError):
        return False


class ComfyUIAdapter:
    def __init__(self, base_url: str, timeout_seconds: float, inputs: TaskInputs | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._ws_base = "ws" + self._base.removeprefix("http")
        self._timeout = timeout_seconds
        self.inputs = inputs
        self._http = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
        self._prompt_id: str | None = None
        self.on_progress: ProgressSink | None = None
        self._task_id = ""
        self._latest_preview: bytes | None = None

    def ready(self) -> bool:
        try:
            return self._http.get(f"{self._base}/system_stats", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def run(self, task: TaskMessage) -> RuntimeResult:
        graph = self._upload_images(task, self.workflow(task))
        deadline = time.monotonic() + self._timeout
        client_id = uuid.uuid4().hex
        try:
            ws = connect(f"{self._ws_base}/ws?clientId={client_id}", open_timeout=10, close_timeout=2, max_size=2**24)
        except (OSError, TimeoutError, WebSocketException) as err:
            raise RuntimeFailure(f"ComfyUI websocket unreachable: {err.__class__.__name__}: {err}", retryable=True) from err
        self._task_id = task.id
        self._latest_preview = None
        with ws:
            self._await_status(ws)
            prompt_id = self._queue_prompt(graph, client_id)
            self._prompt_id = prompt_id
            try:
                self._follow(ws, prompt_id, deadline)
            finally:
                self._prompt_id = None
        entry = self._history(prompt_id, deadline)
        return RuntimeResult(images=self._images(entry), info={
            "prompt_id": prompt_id, "outputs": entry.get("outputs", {}),
            "status": {k: v for k, v in (entry.get("status") or {}).items() if k != "messages"}})

    # -- 1-2. the graph ----------------------------------------------------------------------------
    def workflow(self, task: TaskMessage) -> dict[str, Any]:
        """The graph to run: the payload, its `prompt`, or a named template with `params` applied."""
        payload = task.payload
        try:
            if isinstance(payload.get("workflow"), str):
                if self.inputs is None:
                    raise RuntimeFailure("named workflows need the agent's bucket access (TaskInputs)", retryable=False)
                return apply_params(self.inputs.workflow(payload["workflow"]), payload.get("params"))
            if isinstance(payload.get("prompt"), dict):
                return apply_params(payload["prompt"], payload.get("params"))
        except ValidationError as err:
            raise RuntimeFailure(str(err), retryable=False) from err
        return copy.deepcopy(payload)

    def _upload_images(self, task: TaskMessage, graph: dict[str, Any]) -> dict[str, Any]:
        for node_id, node in graph.items():
            if not isinstance(node, dict) or node.get("class_type") != "LoadImage":
                continue
            image = (node.get("inputs") or {}).get("image")
            if not isinstance(image, str):
                continue
            field = f"payload.{node_id}.inputs.image"
            if image.startswith(("s3://", "http://", "https://", "file:")) or _looks_like_base64_image(image):
                if self.inputs is None:
                    raise RuntimeFailure(f"{field}: the agent has no bucket access to resolve it", retryable=False)
                data = self.inputs.image_bytes(field, image)
                node["inputs"]["image"] = self._upload(f"sdlab-{task.id}-{node_id}.png", data)
        return graph

    def _upload(self, name: str, data: bytes) -> str:
        try:
            reply = self._http.post(f"{self._base}/upload/image", files={"image": (name, data, "image/png")},
                                    data={"type": "input", "overwrite": "true"})
        except httpx.HTTPError as err:
            raise RuntimeFailure(f"ComfyUI upload failed: {err.__class__.__name__}: {err}", retryable=True) from err
        if reply.status_code != 200:
            raise RuntimeFailure(f"ComfyUI refused the input image upload ({reply.status_code})",
                                 retryable=reply.status_code >= 500)
        answer = reply.json()
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    # -- 3. queue ----------------------------------------------------------------------------------
    def _queue_prompt(self, graph: dict[str, Any], client_id: str) -> str:
        try:
            reply = self._http.post(f"{self._base}/prompt", json={"prompt": graph, "client_id": client_id})
        except httpx.HTTPError as err:
            raise RuntimeFailure(f"ComfyUI unreachable: {err.__class__.__name__}: {err}", retryable=True) from err
        try:
            body = reply.json()
        except ValueError:
            body = reply.text
        if reply.status_code >= 500:
            raise RuntimeFailure(f"ComfyUI answered {reply.status_code} to /prompt: {str(body)[:300]}", retryable=True)
        if reply.status_code >= 400:
            raise RuntimeFailure(describe_rejection(reply.status_code, body), retryable=False)
        if not isinstance(body, dict) or not body.get("prompt_id"):
            raise RuntimeFailure(f"ComfyUI answered /prompt without a prompt_id: {str(body)[:300]}", retryable=True)
        if body.get("node_errors"):
            log.warning("ComfyUI queued the prompt but some outputs will not run: %s", describe_rejection(200, body))
        return str(body["prompt_id"])

    # -- 4. follow ---------------------------------------------------------------------------------
    @staticmethod
    def _await_status(ws: ClientConnection) -> None:
        """ComfyUI greets a socket with `status` once it is registered; queueing before that could lose messages."""
        try:
            ws.recv(timeout=RECV_SECONDS)
        except TimeoutError:
            log.warning("no status greeting on the ComfyUI websocket; following the prompt through /history if needed")

    def _follow(self, ws: ClientConnection, prompt_id: str, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._stop(prompt_id)
                raise RuntimeFailure(f"ComfyUI did not finish prompt {prompt_id} within {self._timeout:.0f} s; "
                                     "interrupted it", retryable=True)
            try:
                raw = ws.recv(timeout=min(left, RECV_SECONDS))
            except TimeoutError:
                if self._finished(prompt_id):
                    return
                continue
            except ConnectionClosed:
                log.warning("ComfyUI websocket closed; following prompt %s through /history", prompt_id)
                return
            if isinstance(raw, bytes):
                # ComfyUI's binary frames: 4-byte event (1 = preview image), 4-byte format, then the image bytes
                if self.on_progress is not None and len(raw) > 8 and int.from_bytes(raw[:4], "big") == 1:
                    self._latest_preview = raw[8:]
                continue
            message = json.loads(raw)
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            if kind == "execution_error":
                raise RuntimeFailure(describe_execution_error(data), retryable=False)
            if kind == "execution_interrupted":
                raise RuntimeFailure(f"ComfyUI interrupted prompt {prompt_id} at node {data.get('node_id')} "
                                     f"({data.get('node_type')})", retryable=True)
            if kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                return
            if kind == "progress":
                value, total = data.get("value"), data.get("max")
                if self.on_progress is not None and isinstance(value, int) and isinstance(total, int) and total > 0:
                    # a workflow's sampling steps are the bulk of its time; its other nodes are quick
                    self.on_progress([self._task_id], value / total, value, total, self._latest_preview)

    def _finished(self, prompt_id: str) -> bool:
        """A quiet socket: did the prompt end while we were not told (e.g. messages lost on a reconnect)?"""
        entry = self._history_entry(prompt_id)
        if entry is None:
            return False
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            for kind, data in status.get("messages") or []:
                if kind == "execution_error":
                    raise RuntimeFailure(describe_execution_error(data), retryable=False)
            raise RuntimeFailure(f"ComfyUI prompt {prompt_id} ended with an error", retryable=True)
        return True

    # -- 5. outputs --------------------------------------------------------------------------------
    def _history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        try:
            reply = self._http.get(f"{self._base}/history/{prompt_id}")
            reply.raise_for_status()
            return reply.json().get(prompt_id)
        except (httpx.HTTPError, ValueError) as err:
            raise RuntimeFailure(f"ComfyUI /history failed: {err.__class__.__name__}: {err}", retryable=True) from err

    def _history(self, prompt_id: str, deadline: float) -> dict[str, Any]:
        """The history entry; `execution_success` can arrive just before ComfyUI writes it, so wait for it."""
        while True:
            entry = self._history_entry(prompt_id)
            if entry is not None and (entry.get("status") or {}).get("status_str") != "error":
                return entry
            if entry is not None:
                self._finished(prompt_id)  # raises with the node's error
            if time.monotonic() > deadline:
                self._stop(prompt_id)
                raise RuntimeFailure(f"ComfyUI has no history for prompt {prompt_id} within {self._timeout:.0f} s",
                                     retryable=True)
            time.sleep(HISTORY_POLL_SECONDS)

    def _images(self, entry: dict[str, Any]) -> list[bytes]:
        refs = [img for node_id in sorted(entry.get("outputs", {}), key=lambda n: (len(n), n))
                for img in entry["outputs"][node_id].get("images", []) if isinstance(img, dict)]
        saved = [r for r in refs if r.get("type") == "output"]
        refs = saved or refs  # only previews: better than nothing
        if not refs:
            raise RuntimeFailure("the workflow produced no images; end it with a SaveImage node", retryable=False)
        return [self._view(ref) for ref in refs]

    def _view(self, ref: dict[str, Any]) -> bytes:
        params = {"filename": ref.get("filename", ""), "subfolder": ref.get("subfolder", ""), "type": ref.get("type", "output")}
        try:
            reply = self._http.get(f"{self._base}/view", params=params)
        except httpx.HTTPError as err:
            raise RuntimeFailure(f"ComfyUI /view failed: {err.__class__.__name__}: {err}", retryable=True) from err
        if reply.status_code != 200:
            raise RuntimeFailure(f"ComfyUI /view {params} answered {reply.status_code}", retryable=True)
        data = reply.content
        if data.startswith(PNG_MAGIC):
            return data
        from PIL import Image  # webp/jpeg/gif outputs: the task contract stores PNGs

        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buf, format="PNG")
        return buf.getvalue()

    # -- interrupt ---------------------------------------------------------------------------------
    def _stop(self, prompt_id: str) -> None:
        """Drop the prompt if it still waits, stop it if it runs."""
        try:
            self._http.post(f"{self._base}/queue", json={"delete": [prompt_id]}, timeout=5.0)
            self._http.post(f"{self._base}/interrupt", json={"prompt_id": prompt_id}, timeout=5.0)
        except httpx.HTTPError:
            log.warning("could not interrupt ComfyUI prompt %s", prompt_id)

    def interrupt(self) -> None:
        prompt_id = self._prompt_id
        if prompt_id is not None:
            self._stop(prompt_id)
            return
        try:
            self._http.post(f"{self._base}/interrupt", timeout=5.0)
        except httpx.HTTPError:
            log.warning("interrupt request to ComfyUI failed")
