"""What a task leaves behind: images and result.json in S3, its terminal status, its notification, the message.

The order is the guarantee: outputs first (deterministic keys, so a retry overwrites), then the terminal status
(conditional: exactly one writer wins), then the notification (only by the winner) and a `notified_at` mark,
then the message is deleted. A crash anywhere before the delete leaves the message to be delivered again; a
redelivered message of a finished task is dropped, after its notification is sent if `notified_at` is missing
(the agent stopped between the status write and the notification). So notifications are at least once: only a
crash between the publish and the mark sends a second one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from agent import cost, metrics
from agent.jobs import Job
from agent.runtimes import RuntimeResult
from agent.settings import AgentSettings
from sdlab import notify
from sdlab.contracts import (
    Notification,
    Receipt,
    TaskMessage,
    TaskStatus,
    Timings,
    image_key,
    output_prefix,
    preview_key,
    result_key,
)
from sdlab.taskstore import TaskExists, TaskStore, TransitionRefused

log = logging.getLogger(__name__)
UNENDED_ATTRIBUTE = "unended"  # on a DLQ message whose task the agent could not end: the sweeper ends it


@dataclass
class Clients:
    sqs: Any
    s3: Any
    sns: Any
    store: TaskStore


class Effects:
    def __init__(self, settings: AgentSettings, clients: Clients) -> None:
        self.settings = settings
        self.clients = clients
        self.node = cost.detect(settings.instance_type, settings.capacity_type, local=bool(settings.target.endpoint_url),
                                local_usd_per_hour=settings.local_usd_per_hour, region=settings.target.region)
        log.info("cost receipts: node %s (%s) at %s $/GPU-h (%s)", self.node.instance_type, self.node.capacity_type,
                 self.node.usd_per_gpu_hour, self.node.price_source)

    # -- outputs -----------------------------------------------------------------------------------
    def store_outputs(self, task: TaskMessage, result: RuntimeResult, run_s: float) -> list[str]:
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

    def discard_outputs(self, task: TaskMessage, count: int) -> None:
        """Remove what a task wrote when its result must not stand (it was cancelled meanwhile)."""
        # one DeleteObject per key (at most max_images_per_task + 1): a refused one raises, where DeleteObjects
        # answers 200 and lists its refusals in `Errors`
        for key in [image_key(task.prefix, task.id, n) for n in range(count)] + [result_key(task.prefix, task.id),
                                                                                preview_key(task.prefix, task.id)]:
            self.clients.s3.delete_object(Bucket=self.settings.bucket, Key=key)

    # -- status and notification -------------------------------------------------------------------
    def ensure_record(self, task: TaskMessage) -> None:
        """The record of a task published straight to SNS (the API writes one for every task it accepts)."""
        try:
            self.clients.store.create({"id": task.id, "runtime": task.runtime, "task_type": task.task_type,
                                       "prefix": task.prefix, "created_at": task.submitted_at})
        except TaskExists:
            pass  # a copy of the same message reached another agent at the same moment, and it created the record

    def end(self, task: TaskMessage, status: TaskStatus, *, images: list[str] | None = None, error: str | None = None,
            run_s: float | None = None, started_at: float | None = None, attempt: int | None = None,
            batch: int = 1, gpu_s: float | None = None) -> bool:
        """Move the task to `status` and notify; False when another writer ended it first (no second notification)."""
        fields = self.record_end(task, status, images=images, error=error, run_s=run_s, started_at=started_at,
                                 attempt=attempt, batch=batch, gpu_s=gpu_s)
        if fields is None:
            return False
        self.announce(task, status, fields)
        return True

    def record_end(self, task: TaskMessage, status: TaskStatus, *, images: list[str] | None = None,
                   error: str | None = None, run_s: float | None = None, started_at: float | None = None,
                   attempt: int | None = None, batch: int = 1, gpu_s: float | None = None) -> dict[str, Any] | None:
        """The conditional terminal write, with the task's cost receipt; returns the fields written, or None when
        another writer ended it first."""
        now = time.time()
        queued_s = max(0.0, (started_at or now) - task.submitted_at)
        fields: dict[str, Any] = {"finished_at": now, "queued_s": round(queued_s, 3)}
        if started_at is not None:
            fields["started_at"] = started_at
        if images is not None:
            fields |= {"images": images, "image_count": len(images)}
        if run_s is not None:
            fields["run_s"] = round(run_s, 3)
        if error:
            fields["error"] = error
        if attempt is not None:
            fields["attempts"] = attempt
        fields["receipt"] = cost.receipt(self.node, task.runtime, run_s=run_s, queued_s=fields["queued_s"],
                                         batch=batch, gpu_s=gpu_s).model_dump()
        try:
            self.clients.store.finish(task.id, status, **fields)
        except TransitionRefused as refused:
            current = refused.current.get("status") if refused.current else None
            log.info("task already %s; no second notification", current, extra={"task_id": task.id})
            return None
        metrics.TASKS.labels(status=status.value).inc()
        metrics.QUEUE_WAIT_SECONDS.observe(queued_s)
        if run_s is not None:
            metrics.RUN_SECONDS.observe(run_s)
        return fields

    def announce(self, task: TaskMessage, status: TaskStatus, fields: dict[str, Any]) -> None:
        """The notification of an ending `record_end` wrote, then the `notified_at` mark."""
        self.notify(task, status, fields.get("images") or [], fields.get("error"),
                    Timings(queued_s=fields.get("queued_s"), run_s=fields.get("run_s")), fields.get("receipt"))
        self._mark_notified(task)

    def notify(self, task: TaskMessage, status: TaskStatus, images: list[str], error: str | None, timings: Timings,
               receipt: dict[str, Any] | None = None) -> None:
        note = Notification(
            id=task.id, runtime=task.runtime, status=status, images=images, error=error, timings=timings,
            context=task.context, output_location=f"s3://{self.settings.bucket}/{output_prefix(task.prefix, task.id)}",
            receipt=Receipt.model_validate(receipt) if receipt else None,
        )
        if task.notification_format == "guidance" and status.terminal:
            note = note.with_guidance_fields(f"s3://{self.settings.bucket}/{result_key(task.prefix, task.id)}")
        notify.publish(self.clients.sns, self.settings.results_topic_arn, note)

    def announce_running(self, task: TaskMessage) -> None:
        """The `running` notification, for tasks that asked for it (notify_events)."""
        if "running" in task.notify_events:
            self.notify(task, TaskStatus.RUNNING, [], None, Timings(queued_s=round(max(0.0, time.time() - task.submitted_at), 3)))

    def renotify(self, task: TaskMessage, record: dict[str, Any]) -> None:
        """Send the notification of a task that ended without one, from its record (it holds what `record_end` wrote)."""
        self.announce(task, TaskStatus(record["status"]), record)

    def _mark_notified(self, task: TaskMessage) -> None:
        try:
            self.clients.store.mark_notified(task.id)
        except ClientError:  # the notification is out: deleting the message matters more than the mark
            log.warning("could not mark the task notified; a redelivery would notify again", extra={"task_id": task.id})

    # -- messages ----------------------------------------------------------------------------------
    # Each settles the job under its lock, so the heartbeat can never extend a message after it was let go.
    def delete(self, job: Job) -> None:
        with job.lock:
            if not job.settled:
                self.clients.sqs.delete_message(QueueUrl=job.queue_url, ReceiptHandle=job.receipt)
                job.settled = True

    def release(self, job: Job, delay_seconds: int = 0) -> None:
        """Make the message visible again after `delay_seconds` (0: at once, for another agent)."""
        with job.lock:
            if not job.settled:
                self.clients.sqs.change_message_visibility(QueueUrl=job.queue_url, ReceiptHandle=job.receipt,
                                                           VisibilityTimeout=max(0, min(delay_seconds, 43200)))
                job.settled = True

    def dead_letter(self, job: Job, reason: str, *, unended: bool = False) -> None:
        """`to_dlq` for a held job. `unended`: its task could not be ended here; the DLQ sweeper ends it."""
        with job.lock:
            if not job.settled:
                self.to_dlq(job.message, job.queue_url, reason, unended=unended)
                job.settled = True

    def to_dlq(self, message: dict[str, Any], queue_url: str, reason: str, *, unended: bool = False) -> None:
        """Copy the message to the DLQ with its reason as an attribute, then delete it from its queue."""
        if not self.settings.dlq_url:
            log.error("no DLQ configured; leaving the message to the queue's redrive policy")
            return
        attrs = {k: v for k, v in (message.get("MessageAttributes") or {}).items() if k in ("runtime", "priority")}
        attrs["reason"] = {"DataType": "String", "StringValue": reason[:1000]}
        if unended:
            attrs[UNENDED_ATTRIBUTE] = {"DataType": "String", "StringValue": "1"}
        self.clients.sqs.send_message(QueueUrl=self.settings.dlq_url, MessageBody=message["Body"], MessageAttributes=attrs)
        metrics.DLQ_MOVES.inc()
        self.clients.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
