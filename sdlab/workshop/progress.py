"""Progress bars (`tqdm.auto`: widgets in JupyterLab, text elsewhere) for the waits of a workshop.

`UpBar` follows `sdlab.up` step by step; `TaskBars` draws one bar per task through queued → running (filled by the
task's `progress`, the sampling steps its runtime reports) → done, from `GET /v1/tasks/{id}` while `Client.wait`
waits for the notifications.
"""

from __future__ import annotations

import time
from typing import Any

from sdlab.contracts import Notification
from sdlab.local.stack import UP_STEPS

RUNNING_FROM, RUNNING_TO = 5, 99  # percent of the bar: queued 0, running 5..99 by its progress, ended 100


class UpBar:
    """A `progress` callback for `sdlab.up`: one tick per step, the step's name beside the bar."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.steps: list[str] = []
        self._bar: Any = None

    def __enter__(self) -> UpBar:
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(UP_STEPS), desc="sdlab up", unit="step")
        return self

    def __call__(self, step: str) -> None:
        if self._bar is not None:
            if self.steps:
                self._bar.update(1)
            self._bar.set_postfix_str(step)
        self.steps.append(step)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            if exc[0] is None:
                self._bar.update(len(UP_STEPS) - self._bar.n)
                self._bar.set_postfix_str("ready")
            self._bar.close()


class TaskBars:
    """A `progress` callback for `Client.wait`: a bar per task, its status beside it; keeps each task's transitions."""

    def __init__(self, client: Any, task_ids: list[str], *, enabled: bool = True, poll_seconds: float = 1.0) -> None:
        self.client = client
        self.poll_seconds = poll_seconds
        self.transitions: dict[str, list[str]] = {i: [] for i in task_ids}
        self.progress: dict[str, list[float]] = {i: [] for i in task_ids}  # each progress fraction seen while running
        self._last_poll = 0.0
        self._bars: dict[str, Any] = {}
        if enabled:
            from tqdm.auto import tqdm

            self._bars = {i: tqdm(total=100, desc=f"task {i[:8]}", bar_format="{desc} {bar} {postfix}") for i in task_ids}

    def _seen(self, task_id: str, status: str, progress: dict[str, Any] | None = None) -> None:
        changed = not self.transitions[task_id] or self.transitions[task_id][-1] != status
        if changed:
            self.transitions[task_id].append(status)
        fraction = float(progress["fraction"]) if status == "running" and progress else None
        if fraction is not None and (not self.progress[task_id] or self.progress[task_id][-1] != fraction):
            self.progress[task_id].append(fraction)
        elif not changed:
            return
        bar = self._bars.get(task_id)
        if bar is not None:
            if status == "queued":
                bar.n = 0
            elif status == "running":
                bar.n = RUNNING_FROM + round((RUNNING_TO - RUNNING_FROM) * (fraction or 0.0))
            else:
                bar.n = 100
            steps = f"step {progress.get('step')}/{progress.get('steps')}" if fraction is not None and progress else ""
            bar.set_postfix_str(steps, refresh=False)
            bar.set_description_str(f"task {task_id[:8]} {status:<9}")  # refreshes the bar

    def __call__(self, done: dict[str, Notification]) -> None:
        for task_id, note in done.items():
            self._seen(task_id, note.status.value)
        if time.monotonic() - self._last_poll >= self.poll_seconds:
            self._last_poll = time.monotonic()
            for task_id in self.transitions:
                if task_id not in done:
                    record = self.client.status(task_id)
                    self._seen(task_id, record["status"], record.get("progress"))
        if len(done) == len(self.transitions):
            self.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars = {}


def wait(client: Any, task_ids: list[str], *, timeout: float = 300.0,
         enabled: bool = True) -> tuple[dict[str, Notification], TaskBars]:
    """`client.wait` with a bar per task; returns the notifications and the bars (their `transitions`)."""
    bars = TaskBars(client, task_ids, enabled=enabled)
    try:
        notes = client.wait(task_ids, timeout=timeout, progress=bars)
    finally:
        bars.close()
    return notes, bars
