"""The receiving side of the agent, on its own thread, so the next task is ready before the runtime is free.

For each message: parse it (unparseable → DLQ with the reason), drop it if its task has expired (`expired`) or
already ended (a redelivery; its notification is sent first if the agent that ended it stopped before sending
it), mark the task `running` (conditional), and hand it to the worker through a small buffer. High-priority
messages are taken before normal ones. The buffer is bounded by free slots, so the agent never holds more
messages than it can start soon (held messages are kept invisible by `Inflight`).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from agent import metrics
from agent.effects import Effects
from agent.jobs import Inflight, Job
from agent.settings import AgentSettings
from agent.supervise import Supervisor
from sdlab.contracts import TaskMessage, TaskStatus, check_task_prefix
from sdlab.taskstore import TransitionRefused

log = logging.getLogger(__name__)
MAX_POLL_SECONDS = 5  # bounds how long a shutdown waits for an in-flight long poll
HIGH_FIRST_POLL_SECONDS = 2  # with a high-priority queue, the normal queue is polled briefly so high work is not kept waiting
AGENT_ENDED = {TaskStatus.COMPLETED.value, TaskStatus.FAILED.value, TaskStatus.EXPIRED.value}  # `cancelled`: the API notifies


class Receiver:
    def __init__(self, settings: AgentSettings, effects: Effects, inflight: Inflight, capacity: int,
                 supervisor: Supervisor | None = None) -> None:
        self.settings = settings
        self.supervisor = supervisor or Supervisor(unhealthy_after_seconds=float("inf"))
        self.effects = effects
        self.inflight = inflight
        self.buffer: queue.Queue[Job] = queue.Queue()
        self.slots = threading.Semaphore(capacity)
        self.stopping = threading.Event()
        self.idle = threading.Event()  # set after a poll of every queue came back empty
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = self.supervisor.start("receiver", self._run)

    def stop(self, timeout: float = MAX_POLL_SECONDS + 2) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def take(self, timeout: float) -> Job | None:
        """The next buffered job (frees its slot), or None after `timeout`."""
        try:
            job = self.buffer.get(timeout=timeout)
        except queue.Empty:
            return None
        self.slots.release()
        return job

    def take_nowait(self) -> Job | None:
        return self.take(0) if not self.buffer.empty() else None

    def drain(self) -> list[Job]:
        """Everything still buffered (for release at shutdown)."""
        jobs = []
        while (job := self.take_nowait()) is not None:
            jobs.append(job)
        return jobs

    # -- the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopping.is_set():
            if not self.slots.acquire(timeout=0.5):
                continue
            free = 1
            while free < 10 and self.slots.acquire(blocking=False):
                free += 1
            try:
                messages = self._receive(free)
            except Exception as err:  # AWS errors, botocore connection/read errors, a bug: back off, retry
                for _ in range(free):
                    self.slots.release()
                self.stopping.wait(self.supervisor.failed("receiver", err))
                continue
            self.supervisor.ok("receiver")
            for _ in range(free - len(messages)):
                self.slots.release()
            self.idle.clear() if messages else self.idle.set()
            for queue_url, message in messages:
                try:
                    job = self._admit(queue_url, message)
                except Exception as err:  # the message returns after its visibility timeout
                    self.supervisor.failed("receiver", err)
                    job = None
                if job is None:
                    self.slots.release()
                else:
                    self.buffer.put(job)

    def _receive(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        polls = [(self.settings.queue_url, min(self.settings.wait_time_seconds, MAX_POLL_SECONDS))]
        if self.settings.high_queue_url:
            polls = [(self.settings.high_queue_url, 0),
                     (self.settings.queue_url, min(self.settings.wait_time_seconds, HIGH_FIRST_POLL_SECONDS))]
        for url, wait in polls:
            out = self.effects.clients.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=count, WaitTimeSeconds=wait,
                VisibilityTimeout=self.settings.visibility_timeout_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount"], MessageAttributeNames=["All"],
            )
            if out.get("Messages"):
                return [(url, m) for m in out["Messages"]]
        return []

    def _admit(self, queue_url: str, message: dict[str, Any]) -> Job | None:
        mid = message["MessageId"]
        attempt = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            task = TaskMessage.model_validate_json(message["Body"])
            check_task_prefix(task.prefix, self.settings.output_prefix)  # a message can bypass the API
        except (PydanticValidationError, ValueError) as err:
            self.effects.to_dlq(message, queue_url, f"unparseable message: {str(err)[:500]}")
            metrics.TASKS.labels(status="poison").inc()
            log.error("message cannot be parsed; moved to the DLQ", extra={"message_id": mid})
            return None
        job = Job(message=message, queue_url=queue_url, task=task, attempt=attempt)
        self.inflight.add(job)
        try:
            if task.expired():
                self.effects.end(task, TaskStatus.EXPIRED, error=f"not started within ttl_seconds={task.ttl_seconds}")
                self._drop(job)
                return None
            ended = self._start(job)
            if ended is not None:
                self._settle_ended(job, ended)
                return None
            if "running" in task.notify_events and job.attempt == 1:
                try:
                    self.effects.announce_running(task)
                except Exception as err:  # best effort: the task runs whether or not its `running` event went out
                    log.warning("running notification not sent: %s", err, extra=job.log_extra)
        except Exception:  # AWS errors, or a bug: either way the message must not stay held, nor this thread die
            log.exception("could not start the task; the message will be delivered again", extra=job.log_extra)
            self.inflight.remove(job)
            return None
        return job

    def _start(self, job: Job) -> dict[str, Any] | None:
        """queued|running → running; creates the record of a task published straight to SNS.
        Returns None once started, or the record of a task that already ended."""
        store = self.effects.clients.store
        task = job.task
        try:
            store.start(task.id, started_at=time.time(), attempts=job.attempt)
            return None
        except TransitionRefused as refused:
            if refused.current is not None:
                return refused.current
        self.effects.ensure_record(task)
        try:
            store.start(task.id, started_at=time.time(), attempts=job.attempt)
        except TransitionRefused as refused:  # that copy already ended it
            return refused.current or {"id": task.id}
        return None

    def _settle_ended(self, job: Job, record: dict[str, Any]) -> None:
        """A message of a task that already ended: a redelivery, or a copy. If the agent that ended the task
        stopped before publishing its notification (killed, or SNS failed), the notification is sent now."""
        if record.get("status") in AGENT_ENDED and "notified_at" not in record:
            settle = self.settings.visibility_timeout_seconds / 3
            if time.time() - float(record.get("finished_at") or 0) < settle:
                # its writer may be publishing this very moment: look again once it surely published or died
                self.effects.release(job, math.ceil(settle))
                self.inflight.remove(job)
                return
            self.effects.renotify(job.task, record)
            metrics.ENDED_REDELIVERIES.labels("renotified").inc()
            log.warning("task had ended without its notification; sent it now", extra=job.log_extra)
        else:
            metrics.ENDED_REDELIVERIES.labels("dropped").inc()
            log.info("task already ended; dropping the redelivered message", extra=job.log_extra)
        self._drop(job)

    def _drop(self, job: Job) -> None:
        self.effects.delete(job)
        self.inflight.remove(job)
