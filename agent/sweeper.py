"""The DLQ sweeper: every task whose message reaches the dead-letter queue ends, with its reason.

Messages reach a runtime's DLQ two ways: the agent moves them there itself (a poison message, a task that failed
on its last allowed attempt: the task is already ended, the message carries a `reason`), or SQS's redrive policy
moves them after `max_receive_count` receives without a delete — an agent killed, or stopped by the kubelet, on the
last allowed receive. The record of such a task still says `queued` or `running`. The sweeper, a thread of every
agent, looks through its runtime's DLQ every `sweep_interval_seconds` and:

- ends a task that has not ended `failed`, with the message's `reason` or, for a redriven message, the number of
  receives it had, and sends its notification (a task published straight to SNS gets its record first);
- sends the notification of a task that ended without one;
- leaves every message in the DLQ, visible, for an operator to inspect or redrive (a redriven message of an ended
  task is dropped by the agent that receives it).

An agent is running whenever a message can be redriven (redrive happens on a receive), and KEDA keeps it for the
cooldown after the queue empties, so the sweep runs before a scale-in to zero.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from agent.effects import UNENDED_ATTRIBUTE, Effects
from agent.settings import AgentSettings
from agent.supervise import Supervisor
from sdlab.contracts import TaskMessage, TaskStatus

log = logging.getLogger(__name__)
MAX_BATCHES_PER_SWEEP = 10  # up to 100 messages looked at per sweep


class Sweeper:
    def __init__(self, settings: AgentSettings, effects: Effects, supervisor: Supervisor) -> None:
        self.settings = settings
        self.effects = effects
        self.supervisor = supervisor
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.settings.dlq_url:
            self._thread = self.supervisor.start("sweeper", self._run)

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        pause = self.settings.sweep_interval_seconds
        while not self.stopping.wait(pause):
            try:
                self.sweep()
            except Exception as err:  # botocore errors or a bug: try again, never die
                pause = min(self.supervisor.failed("sweeper", err), self.settings.sweep_interval_seconds)
            else:
                self.supervisor.ok("sweeper")
                pause = self.settings.sweep_interval_seconds

    def sweep(self) -> int:
        """One pass over the DLQ; returns how many tasks it ended or notified."""
        sqs = self.effects.clients.sqs
        seen: list[dict[str, Any]] = []
        settled = 0
        try:
            for _ in range(MAX_BATCHES_PER_SWEEP):
                out = sqs.receive_message(QueueUrl=self.settings.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                          VisibilityTimeout=60, MessageAttributeNames=["All"],
                                          MessageSystemAttributeNames=["ApproximateReceiveCount"])
                batch = out.get("Messages", [])
                if not batch:
                    break
                seen += batch
                for message in batch:
                    settled += self._settle(message)
        finally:  # every message stays in the DLQ, visible again at once
            for i in range(0, len(seen), 10):
                sqs.change_message_visibility_batch(QueueUrl=self.settings.dlq_url, Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for n, m in enumerate(seen[i:i + 10])])
        return settled

    def _settle(self, message: dict[str, Any]) -> int:
        attrs = message.get("MessageAttributes") or {}
        reason = attrs.get("reason", {}).get("StringValue")
        if reason and UNENDED_ATTRIBUTE not in attrs:
            return 0  # moved here by an agent that had ended its task
        try:
            task = TaskMessage.model_validate_json(message["Body"])
        except (PydanticValidationError, ValueError):
            return 0  # a poison message has no task to end
        store = self.effects.clients.store
        record = store.get(task.id)
        if record is None:  # published straight to SNS and never started
            self.effects.ensure_record(task)
            record = store.get(task.id) or {}
        if TaskStatus(record.get("status", TaskStatus.QUEUED.value)).terminal:
            if "notified_at" in record or record.get("status") == TaskStatus.CANCELLED.value:
                return 0
            self.effects.renotify(task, record)
            log.warning("dead-lettered task had ended without its notification; sent it", extra={"task_id": task.id})
            return 1
        if not reason:
            receives = message.get("Attributes", {}).get("ApproximateReceiveCount", "?")
            reason = (f"dead-lettered by the queue's redrive policy after {self.settings.max_receive_count} receive(s) "
                      f"without an ending (the agent holding it stopped, crashed or lost its lease each time); "
                      f"DLQ receives so far: {receives}")
        if self.effects.end(task, TaskStatus.FAILED, error=reason, attempt=self.settings.max_receive_count):
            log.error("dead-lettered task ended failed: %s", reason, extra={"task_id": task.id})
            return 1
        return 0
