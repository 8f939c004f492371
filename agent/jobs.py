"""Messages the agent holds: one `Job` per message, and `Inflight`, which keeps them all invisible.

A message is held from the moment it is received (buffered for the runtime, running, or being finished) until
it is deleted or released. `Inflight` runs one heartbeat thread that extends every held message's visibility
before it lapses and notices tasks cancelled through the API, so the worker can interrupt or skip them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from agent.supervise import Supervisor
from sdlab.contracts import TaskMessage

log = logging.getLogger(__name__)
CANCEL_CHECK_SECONDS = 1.0


@dataclass(eq=False)
class Job:
    """One received message and its task."""

    message: dict[str, Any]
    queue_url: str
    task: TaskMessage
    attempt: int
    received_at: float = field(default_factory=time.time)
    cancelled: bool = False
    # Held until deleted, released or moved to the DLQ; `lock` orders those against the heartbeat's extension, so
    # an extension can never follow (and undo) a release.
    settled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def receipt(self) -> str:
        return self.message["ReceiptHandle"]

    @property
    def log_extra(self) -> dict[str, Any]:
        return {"task_id": self.task.id, "message_id": self.message["MessageId"], "attempt": self.attempt}


class Inflight:
    """The set of held jobs, with the heartbeat that keeps their messages invisible."""

    def __init__(self, sqs: Any, visibility_timeout_seconds: int, is_cancelled: Callable[[str], bool],
                 on_cancel: Callable[[Job], None], supervisor: Supervisor | None = None) -> None:
        self._sqs = sqs
        self._supervisor = supervisor or Supervisor(unhealthy_after_seconds=float("inf"))
        self._timeout = visibility_timeout_seconds
        self._is_cancelled = is_cancelled
        self._on_cancel = on_cancel
        self._jobs: dict[int, tuple[Job, float]] = {}  # id(job) -> (job, monotonic time of last extension)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = self._supervisor.start("heartbeat", self._beat)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[id(job)] = (job, time.monotonic())

    def remove(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(id(job), None)

    def jobs(self) -> list[Job]:
        with self._lock:
            return [job for job, _ in self._jobs.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def _beat(self) -> None:
        # extend at a third of the timeout: two missed beats still leave the message invisible
        every = max(1.0, self._timeout / 3)
        last_cancel_check = 0.0
        pause = 0.5
        while not self._stop.wait(pause):
            pause = 0.5
            try:
                now = time.monotonic()
                with self._lock:
                    due = [(k, job) for k, (job, last) in self._jobs.items() if now - last >= every]
                for key, job in due:
                    self._extend(job)
                    with self._lock:
                        if key in self._jobs:
                            self._jobs[key] = (job, time.monotonic())
                if now - last_cancel_check >= CANCEL_CHECK_SECONDS:
                    last_cancel_check = now
                    self._check_cancelled()
            except Exception as err:  # botocore connection/read errors, or a bug: retry soon, never die
                # a job whose extension failed stays due, so the next round tries it again
                pause = min(self._supervisor.failed("heartbeat", err), every / 3)
            else:
                self._supervisor.ok("heartbeat")

    def _extend(self, job: Job) -> None:
        with job.lock:  # a concurrent release/delete either went first (settled: skip) or waits for this call
            if job.settled:
                return
            try:
                self._sqs.change_message_visibility(QueueUrl=job.queue_url, ReceiptHandle=job.receipt,
                                                    VisibilityTimeout=self._timeout)
            except ClientError as err:
                # the receipt is stale (the message was deleted or redelivered elsewhere): nothing left to hold
                log.warning("visibility extension failed: %s", err.response["Error"]["Code"], extra=job.log_extra)

    def _check_cancelled(self) -> None:
        for job in self.jobs():
            if job.cancelled:
                continue
            if self._is_cancelled(job.task.id):
                job.cancelled = True
                log.info("task cancelled through the API", extra=job.log_extra)
                self._on_cancel(job)
