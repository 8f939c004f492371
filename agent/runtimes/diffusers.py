"""Adapter for the project's diffusers runtime: several text-to-image tasks per call through ``POST /v1/generate``.

The runtime merges the tasks of one call (and of concurrent calls) into GPU batches; each task still gets
its own images, or its own failure. Tasks the native route does not serve (image-to-image, extras, txt2img
payloads with hires fix or scripts) go one by one through the runtime's SD WebUI API, as `SdWebUIAdapter` does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx

from agent.runtimes.base import RuntimeFailure, RuntimeResult
from agent.runtimes.sdwebui import SdWebUIAdapter, _decode_image, prepare_payload
from sdlab.contracts import TaskMessage

if TYPE_CHECKING:
    from agent.inputs import TaskInputs

log = logging.getLogger(__name__)
# Payload fields the native route cannot honour; such tasks take the SD WebUI route, which answers them as before.
_WEBUI_ONLY = ("init_images", "enable_hr", "script_name", "alwayson_scripts", "mask")


class DiffusersAdapter(SdWebUIAdapter):
    """`run_batch` posts many tasks at once; `run`, `ready` and `interrupt` are the SD WebUI ones."""

    def __init__(self, base_url: str, timeout_seconds: float, inputs: TaskInputs | None = None, max_batch: int = 16) -> None:
        super().__init__(base_url, timeout_seconds, inputs)
        self.max_batch = max_batch

    def ready(self) -> bool:
        try:
            return self._http.get(f"{self._base}/healthz", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def capacity(self) -> int:
        """Images the runtime batches at once at 512² (GET /v1/info), so the agent can keep its batches full."""
        try:
            reply = self._http.get(f"{self._base}/v1/info", timeout=10.0)
            reply.raise_for_status()
            return int(reply.json().get("max_batch_512") or 1)
        except (httpx.HTTPError, ValueError, TypeError):
            log.warning("runtime did not say its batch size; using %d", self.max_batch)
            return self.max_batch

    def run(self, task: TaskMessage) -> RuntimeResult:
        if not self._native(task):
            return super().run(task)
        outcome = self.run_batch([task])[0]
        if isinstance(outcome, RuntimeFailure):
            raise outcome
        return outcome

    def run_batch(self, tasks: list[TaskMessage]) -> list[RuntimeResult | RuntimeFailure]:
        """One outcome per task, in order; the native ones in a single ``/v1/generate`` call."""
        outcomes: list[RuntimeResult | RuntimeFailure | None] = [None] * len(tasks)
        native = [i for i, t in enumerate(tasks) if self._native(t)]
        for i, task in enumerate(tasks):
            if i not in native:
                outcomes[i] = self._one_by_one(task)
        if native:
            for i, outcome in zip(native, self._generate([tasks[i] for i in native]), strict=False):
                outcomes[i] = outcome
        return [o if o is not None else RuntimeFailure("no outcome", retryable=True) for o in outcomes]

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _native(task: TaskMessage) -> bool:
        if task.task_type != "text-to-image":
            return False
        body, _ = prepare_payload(task.payload)  # the guidance's routing keys moved out, as the SD WebUI route does
        return not any(body.get(k) for k in _WEBUI_ONLY)

    def _one_by_one(self, task: TaskMessage) -> RuntimeResult | RuntimeFailure:
        try:
            return super().run(task)
        except RuntimeFailure as err:
            return err

    def _generate(self, tasks: list[TaskMessage]) -> list[RuntimeResult | RuntimeFailure]:
        # Each task names its model (override_settings.sd_model_checkpoint) itself: the runtime batches per model.
        body = [{**prepare_payload(t.payload)[0], "id": t.id} for t in tasks]
        # A batch of n takes longer than one task, but far less than n tasks one after the other.
        timeout = self._timeout * max(1.0, len(tasks) / 2)
        try:
            reply = self._http.post(f"{self._base}/v1/generate", json=body, timeout=httpx.Timeout(timeout, connect=5.0))
        except httpx.TimeoutException as err:
            self.interrupt()
            failure = RuntimeFailure(f"runtime did not answer /v1/generate in time ({err.__class__.__name__})", retryable=True)
            return [failure] * len(tasks)
        except httpx.HTTPError as err:
            return [RuntimeFailure(f"runtime unreachable: {err.__class__.__name__}: {err}", retryable=True)] * len(tasks)
        if reply.status_code >= 400:
            failure = RuntimeFailure(
                f"runtime answered {reply.status_code} to /v1/generate: {reply.text[:300]}", retryable=reply.status_code >= 500
            )
            return [failure] * len(tasks)
        try:
            results = reply.json()["results"]
        except (ValueError, KeyError, TypeError):
            return [RuntimeFailure("runtime answered /v1/generate without a results list", retryable=True)] * len(tasks)
        by_id = {r.get("id"): r for r in results if isinstance(r, dict)}
        return [self._outcome(by_id.get(t.id)) for t in tasks]

    @staticmethod
    def _outcome(result: dict[str, Any] | None) -> RuntimeResult | RuntimeFailure:
        if result is None:
            return RuntimeFailure("the runtime's answer has no result for this task", retryable=True)
        if result.get("status") != "ok":
            error = result.get("error") or {}
            status = int(error.get("status") or 500)
            detail = str(error.get("detail"))[:500]
            return RuntimeFailure(f"runtime failed the task ({status}): {detail}", retryable=status >= 500)
        images = result.get("images")
        if not isinstance(images, list) or not images:
            return RuntimeFailure("runtime answered without images", retryable=True)
        try:
            decoded = [_decode_image(img, n) for n, img in enumerate(images)]
        except RuntimeFailure as err:
            return err
        return RuntimeResult(images=decoded, info=result.get("info") or {})
