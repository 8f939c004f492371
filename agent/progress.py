"""Progress of running tasks, from the runtime to the task record, at most one write per second per task.

Adapters call `Progress.update(task_ids, fraction, step, steps)` as often as their runtime tells them (SD WebUI
`/sdapi/v1/progress` polled during a call, ComfyUI `progress` websocket messages); that only stores the latest
value. One writer thread copies what changed to the task record (`TaskStore.set_progress`, conditional on the
task still `running`, so a late write can never touch a finished task), never more often than MIN_INTERVAL_SECONDS
per task, and never on the runtime call's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from agent.supervise import Supervisor

log = logging.getLogger(__name__)
MIN_INTERVAL_SECONDS = 1.0
FLUSH_SECONDS = 0.2


class ProgressSink(Protocol):
    def __call__(self, task_ids: Iterable[str], fraction: float, step: int | None = None,
                 steps: int | None = None) -> None: ...


class Progress:
    def __init__(self, store: Any, supervisor: Supervisor | None = None, min_interval: float = MIN_INTERVAL_SECONDS) -> None:
        self._store = store
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

    def update(self, task_ids: Iterable[str], fraction: float, step: int | None = None, steps: int | None = None) -> None:
        value = {"fraction": round(min(1.0, max(0.0, float(fraction))), 4), "step": step, "steps": steps}
        with self._lock:
            for task_id in task_ids:
                self._latest[task_id] = value

    def forget(self, task_ids: Iterable[str]) -> None:
        """The runtime call ended: nothing more to write for these tasks."""
        with self._lock:
            for task_id in task_ids:
                self._latest.pop(task_id, None)
                self._written.pop(task_id, None)

    def _due(self) -> list[tuple[str, dict[str, Any]]]:
        now = time.monotonic()
        with self._lock:
            due = []
            for task_id, value in self._latest.items():
                last = self._written.get(task_id)
                if last is not None and (now - last[0] < self._min_interval or last[1] == value["fraction"]):
                    continue
                due.append((task_id, value))
            for task_id, value in due:
                self._written[task_id] = (now, value["fraction"])
                del self._latest[task_id]
            return due

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            try:
                for task_id, value in self._due():
                    self._store.set_progress(task_id, {**value, "updated_at": time.time()})
                    self.writes += 1
            except Exception as err:  # a lost progress write is harmless; the next one carries newer news
                self._supervisor.failed("progress", err)
            else:
                self._supervisor.ok("progress")
