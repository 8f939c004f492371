"""Progress of running tasks, from the runtime to the task record, at most one write per second per task.

Adapters call `Progress.update(task_ids, fraction, step, steps)` as often as their runtime tells them (SD WebUI
`/sdapi/v1/progress` polled during a call, ComfyUI `progress` websocket messages); that only stores the latest
value. One writer thread copies what changed to the task record (`TaskStore.set_progress`, conditional on the
task still `running`, so a late write can never touch a finished task), never more often than MIN_INTERVAL_SECONDS
per task, and never on the runtime call's thread. Tasks that asked for a preview (`preview: true`) also get the
runtime's latest preview image, shrunk to PREVIEW_SIDE_PX, at `<prefix>/<id>/preview.png` (`progress.preview`).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from agent.supervise import Supervisor
from sdlab.contracts import TaskMessage, preview_key

log = logging.getLogger(__name__)
MIN_INTERVAL_SECONDS = 1.0
FLUSH_SECONDS = 0.2
PREVIEW_SIDE_PX = 256


class ProgressSink(Protocol):
    def __call__(self, task_ids: Iterable[str], fraction: float, step: int | None = None,
                 steps: int | None = None, preview: bytes | None = None) -> None: ...


def shrink(image: bytes, side: int = PREVIEW_SIDE_PX) -> bytes:
    """A PNG no larger than `side` on its longer edge."""
    from PIL import Image

    img = Image.open(io.BytesIO(image))
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class Progress:
    def __init__(self, store: Any, supervisor: Supervisor | None = None, min_interval: float = MIN_INTERVAL_SECONDS,
                 s3: Any = None, bucket: str = "") -> None:
        self._store = store
        self._s3 = s3
        self._bucket = bucket
        self._previewed: dict[str, TaskMessage] = {}  # running tasks that asked for a preview
        self._preview_uris: dict[str, str] = {}  # task id -> its stored preview (kept in every later write)
        self._supervisor = supervisor or Supervisor(unhealthy_after_seconds=float("inf"))
        self._min_interval = min_interval
        self._latest: dict[str, dict[str, Any]] = {}  # task id -> progress not written yet
        self._written: dict[str, tuple[float, float]] = {}  # task id -> (monotonic time, fraction) of the last write
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0

    def start(self) -> None:
        self._thread = self._supervisor.start("progress", self._run)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def begin(self, tasks: Iterable[TaskMessage]) -> None:
        """A runtime call starts for these tasks (the ones that asked for a preview are remembered)."""
        with self._lock:
            self._previewed.update({t.id: t for t in tasks if t.preview and self._s3 is not None})

    def wants_preview(self, task_ids: Iterable[str]) -> bool:
        with self._lock:
            return any(t in self._previewed for t in task_ids)

    def update(self, task_ids: Iterable[str], fraction: float, step: int | None = None, steps: int | None = None,
               preview: bytes | None = None) -> None:
        value: dict[str, Any] = {"fraction": round(min(1.0, max(0.0, float(fraction))), 4), "step": step, "steps": steps}
        with self._lock:
            for task_id in task_ids:
                self._latest[task_id] = {**value, "_image": preview} if preview and task_id in self._previewed else value

    def forget(self, task_ids: Iterable[str]) -> None:
        """The runtime call ended: nothing more to write for these tasks."""
        with self._lock:
            for task_id in task_ids:
                self._latest.pop(task_id, None)
                self._written.pop(task_id, None)
                self._previewed.pop(task_id, None)
                self._preview_uris.pop(task_id, None)

    def _due(self) -> list[tuple[str, dict[str, Any], TaskMessage | None]]:
        now = time.monotonic()
        with self._lock:
            due: list[tuple[str, dict[str, Any]]] = []
            for task_id, value in self._latest.items():
                last = self._written.get(task_id)
                if last is not None and (now - last[0] < self._min_interval or last[1] == value["fraction"]):
                    continue
                due.append((task_id, value))
            for task_id, value in due:
                self._written[task_id] = (now, value["fraction"])
                del self._latest[task_id]
            return [(t, v, self._previewed.get(t)) for t, v in due]

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            try:
                for task_id, value, task in self._due():
                    image = value.pop("_image", None)
                    if image is not None and task is not None:
                        key = preview_key(task.prefix, task.id)
                        self._s3.put_object(Bucket=self._bucket, Key=key, Body=shrink(image), ContentType="image/png")
                        self._preview_uris[task_id] = f"s3://{self._bucket}/{key}"
                    if task_id in self._preview_uris:
                        value["preview"] = self._preview_uris[task_id]
                    self._store.set_progress(task_id, {**value, "updated_at": time.time()})
                    self.writes += 1
            except Exception as err:  # a lost progress write is harmless; the next one carries newer news
                self._supervisor.failed("progress", err)
            else:
                self._supervisor.ok("progress")
