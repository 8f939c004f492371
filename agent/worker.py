"""The agent's work loop: receive → start → generate → store → finish → notify → delete.

Read top to bottom, one message at a time:
1. parse the message; a message that can never be parsed goes to the DLQ with its reason;
2. move the task `queued → running` (conditional: a redelivered message of a finished task is dropped);
3. call the runtime while a heartbeat keeps the message invisible;
4. write images at deterministic keys and `result.json`;
5. move the task to its terminal status (conditional, exactly once), then publish the notification;
6. delete the message.
Retryable runtime failures release the message with a backed-off visibility; on the last allowed receive the
task ends `failed` and the message goes to the DLQ with the reason.
Signals: first SIGTERM/SIGINT = warm shutdown (stop receiving, finish the current task), second = cold
(interrupt the runtime, release the message at once, exit).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError as PydanticValidationError

from agent import metrics
from agent.runtimes import RuntimeAdapter, RuntimeFailure, RuntimeResult
from agent.settings import AgentSettings
from sdlab.contracts import (
    Notification,
    TaskMessage,
    TaskStatus,
    Timings,
    image_key,
    output_prefix,
    result_key,
)
from sdlab.taskstore import TaskStore, TransitionRefused

log = logging.getLogger(__name__)
RETRY_BASE_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0


class ColdShutdown(Exception):
    """Raised inside the current task when a second signal asks the agent to stop now."""


class _IdleExit(Exception):
    """Raised from the signal handler when no task is running: leave the long poll at once."""


@dataclass
class Clients:
    sqs: Any
    s3: Any
    sns: Any
    store: TaskStore


class Heartbeat:
    """Keeps a message invisible while its task runs, extending by the queue's timeout at a third of it."""

    def __init__(self, sqs: Any, queue_url: str, receipt: str, timeout_seconds: int) -> None:
        self._sqs, self._url, self._receipt, self._timeout = sqs, queue_url, receipt, timeout_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(max(1.0, self._timeout / 3)):
            try:
                self._sqs.change_message_visibility(
                    QueueUrl=self._url, ReceiptHandle=self._receipt, VisibilityTimeout=self._timeout
                )
            except ClientError:
                log.exception("visibility extension failed")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    def __init__(self, settings: AgentSettings, clients: Clients, runtime: RuntimeAdapter) -> None:
        self.settings = settings
        self.clients = clients
        self.runtime = runtime
        self.stopping = threading.Event()  # warm: no more receives
        self.cold = threading.Event()  # cold: abandon the current task
        self.ready = threading.Event()
        self.tasks_done = 0
        self.busy = False

    # -- signals ---------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stopping.is_set():
            log.warning("second signal %s: cold shutdown", signum)
            self.cold.set()
        else:
            log.info("signal %s: warm shutdown, finishing the current task", signum)
            self.stopping.set()
            if not self.busy:
                # idle in a long poll: nothing to finish. A message that poll may have received
                # stays invisible until its visibility timeout and is then delivered again.
                raise _IdleExit()

    # -- loop ------------------------------------------------------------------------------------
    def wait_for_runtime(self) -> bool:
        """Poll the runtime until it is ready, the deadline passes, or a signal arrives."""
        deadline = time.monotonic() + self.settings.runtime_ready_timeout_seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if self.runtime.ready():
                self.ready.set()
                log.info("runtime %s is ready", self.settings.runtime_name)
                return True
            self.stopping.wait(1.0)
        log.error("runtime at %s not ready within %.0f s", self.settings.runtime_url, self.settings.runtime_ready_timeout_seconds)
        return False

    def run(self, *, max_tasks: int | None = None, burst: bool = False) -> int:
        """Work until stopped (or `max_tasks` done, or the queue is empty with `burst`). Returns the exit code."""
        if not self.wait_for_runtime():
            return 1
        try:
            while not self.stopping.is_set():
                messages = self._receive()
                if not messages and burst:
                    break
                for message in messages:
                    self.busy = True
                    try:
                        self.handle(message)
                    finally:
                        self.busy = False
                if max_tasks is not None and self.tasks_done >= max_tasks:
                    break
        except _IdleExit:
            pass
        finally:
            self.ready.clear()
            log.info("agent stopped after %d task(s)", self.tasks_done)
        return 0

    def _receive(self) -> list[dict[str, Any]]:
        try:
            out = self.clients.sqs.receive_message(
                QueueUrl=self.settings.queue_url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=self.settings.wait_time_seconds,
                VisibilityTimeout=self.settings.visibility_timeout_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=["All"],
            )
        except ClientError:
            log.exception("receive failed; retrying")
            self.stopping.wait(2.0)
            return []
        return out.get("Messages", [])

    # -- one message -----------------------------------------------------------------------------
    def handle(self, message: dict[str, Any]) -> None:
        mid = message["MessageId"]
        attempt = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            task = TaskMessage.model_validate_json(message["Body"])
        except (PydanticValidationError, ValueError) as err:
            self._to_dlq(message, f"unparseable message: {str(err)[:500]}")
            metrics.TASKS.labels(status="poison").inc()
            log.error("message %s cannot be parsed; moved to the DLQ", mid, extra={"message_id": mid})
            return
        extra = {"task_id": task.id, "message_id": mid, "attempt": attempt}
        store = self.clients.store

        # 1. expiry and start (conditional)
        if task.expired():
            self._end(task, message, TaskStatus.EXPIRED, error=f"not started within ttl_seconds={task.ttl_seconds}")
            return
        started = time.time()
        try:
            store.start(task.id, started_at=started, attempts=attempt)
        except TransitionRefused as refused:
            if refused.current is None:
                # published straight to SNS, bypassing the API: give it a record so it can be tracked
                store.create({"id": task.id, "runtime": task.runtime, "task_type": task.task_type,
                              "prefix": task.prefix, "created_at": task.submitted_at})
                store.start(task.id, started_at=started, attempts=attempt)
            else:
                log.info("task already %s; dropping the redelivered message", refused.current.get("status"), extra=extra)
                self._delete(message)
                return
        log.info("task started", extra=extra)

        # 2. generate, keeping the message invisible meanwhile
        try:
            with Heartbeat(self.clients.sqs, self.settings.queue_url, message["ReceiptHandle"],
                           self.settings.visibility_timeout_seconds):
                with metrics.RUNTIME_BUSY.time():
                    result = self._generate(task)
        except ColdShutdown:
            self._release(message, 0)
            log.warning("cold shutdown: task released for another agent", extra=extra)
            return
        except RuntimeFailure as err:
            self._failed_attempt(task, message, attempt, err)
            return
        run_s = time.time() - started

        # 3. store, finish, notify, delete
        keys = self._store(task, result, run_s)
        self._end(task, message, TaskStatus.COMPLETED, images=keys, run_s=run_s, started_at=started)
        log.info("task completed", extra={**extra, "seconds": round(run_s, 3)})

    def _generate(self, task: TaskMessage) -> RuntimeResult:
        """Run the task on the runtime in a thread so a cold shutdown can abandon it."""
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["result"] = self.runtime.run(task)
            except BaseException as err:  # handed to the caller below
                box["error"] = err

        thread = threading.Thread(target=call, name=f"task-{task.id}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
            if self.cold.is_set():
                self.runtime.interrupt()
                raise ColdShutdown()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _failed_attempt(self, task: TaskMessage, message: dict[str, Any], attempt: int, err: RuntimeFailure) -> None:
        extra = {"task_id": task.id, "message_id": message["MessageId"], "attempt": attempt}
        if err.retryable and attempt < self.settings.max_receive_count:
            delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            self._release(message, int(delay))
            metrics.RETRIES.inc()
            log.warning("retryable failure, retry in %.0f s: %s", delay, err, extra=extra)
            return
        reason = str(err) if not err.retryable else f"gave up after {attempt} attempts: {err}"
        if err.retryable:
            # the terminal status first: a crash between the two leaves a finished task, never a lost one
            self._end(task, None, TaskStatus.FAILED, error=reason)
            self._to_dlq(message, reason)
        else:
            self._end(task, message, TaskStatus.FAILED, error=reason)
        log.error("task failed: %s", reason, extra=extra)

    # -- effects ---------------------------------------------------------------------------------
    def _store(self, task: TaskMessage, result: RuntimeResult, run_s: float) -> list[str]:
        bucket = self.settings.bucket
        keys = []
        for n, png in enumerate(result.images):
            key = image_key(task.prefix, task.id, n)
            self.clients.s3.put_object(Bucket=bucket, Key=key, Body=png, ContentType="image/png")
            keys.append(f"s3://{bucket}/{key}")
        summary = {"id": task.id, "runtime": task.runtime, "status": "completed", "images": keys,
                   "info": result.info, "run_s": round(run_s, 3)}
        self.clients.s3.put_object(Bucket=bucket, Key=result_key(task.prefix, task.id),
                                   Body=json.dumps(summary).encode(), ContentType="application/json")
        return keys

    def _end(self, task: TaskMessage, message: dict[str, Any] | None, status: TaskStatus, *,
             images: list[str] | None = None, error: str | None = None, run_s: float | None = None,
             started_at: float | None = None) -> None:
        """Terminal status (once), then the notification, then delete the message."""
        now = time.time()
        queued_s = (started_at or now) - task.submitted_at
        fields: dict[str, Any] = {"finished_at": now, "queued_s": round(queued_s, 3)}
        if images is not None:
            fields |= {"images": images, "image_count": len(images)}
        if run_s is not None:
            fields["run_s"] = round(run_s, 3)
        if error:
            fields["error"] = error
        try:
            self.clients.store.finish(task.id, status, **fields)
        except TransitionRefused as refused:
            # someone else ended it (cancel, or a duplicate delivery): their notification stands
            log.info("task already %s; no second notification", refused.current and refused.current.get("status"),
                     extra={"task_id": task.id})
        else:
            self._notify(task, status, images or [], error, Timings(queued_s=fields["queued_s"], run_s=fields.get("run_s")))
        metrics.TASKS.labels(status=status.value).inc()
        if run_s is not None:
            metrics.RUN_SECONDS.observe(run_s)
        metrics.QUEUE_WAIT_SECONDS.observe(max(0.0, queued_s))
        self.tasks_done += 1
        if message is not None:
            self._delete(message)

    def _notify(self, task: TaskMessage, status: TaskStatus, images: list[str], error: str | None, timings: Timings) -> None:
        note = Notification(
            id=task.id, runtime=task.runtime, status=status, images=images, error=error, timings=timings,
            context=task.context, output_location=f"s3://{self.settings.bucket}/{output_prefix(task.prefix, task.id)}",
        )
        self.clients.sns.publish(
            TopicArn=self.settings.results_topic_arn,
            Message=note.model_dump_json(),
            MessageAttributes={
                "runtime": {"DataType": "String", "StringValue": task.runtime},
                "status": {"DataType": "String", "StringValue": status.value},
            },
        )

    def _delete(self, message: dict[str, Any]) -> None:
        self.clients.sqs.delete_message(QueueUrl=self.settings.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _release(self, message: dict[str, Any], delay_seconds: int) -> None:
        self.clients.sqs.change_message_visibility(
            QueueUrl=self.settings.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=delay_seconds
        )

    def _to_dlq(self, message: dict[str, Any], reason: str) -> None:
        """Copy the message to the DLQ with its reason, then delete it from the work queue."""
        if not self.settings.dlq_url:
            log.error("no DLQ configured; leaving the message for the queue's redrive policy")
            return
        attrs = {k: v for k, v in (message.get("MessageAttributes") or {}).items() if k in ("runtime", "priority")}
        attrs["reason"] = {"DataType": "String", "StringValue": reason[:1000]}
        self.clients.sqs.send_message(QueueUrl=self.settings.dlq_url, MessageBody=message["Body"], MessageAttributes=attrs)
        metrics.DLQ_MOVES.inc()
        self._delete(message)
