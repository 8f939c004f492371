"""Publishing a task's notification on the `results` topic, from the agent or the API (cancel)."""

from __future__ import annotations

from typing import Any

from sdlab.contracts import Notification


def publish(sns: Any, topic_arn: str, note: Notification) -> None:
    """One SNS message with attributes `runtime` and `status`, so subscribers can filter their own."""
    sns.publish(
        TopicArn=topic_arn,
        Message=note.model_dump_json(),
        MessageAttributes={
            "runtime": {"DataType": "String", "StringValue": note.runtime},
            "status": {"DataType": "String", "StringValue": note.status.value},
        },
    )
