"""Publishing a task's notification on the `results` topic, from the agent or the API (cancel)."""

from __future__ import annotations

from typing import Any

from sdlab.contracts import Notification


def publish(sns: Any, topic_arn: str, note: Notification) -> None:
    """One SNS message with attributes `runtime` and `status`, so subscribers can filter their own."""
    sns.publish(
        TopicArn=topic_arn,
        # the guidance's fields and the receipt only when set: they are for the consumers that asked for them
        Message=note.model_dump_json(exclude={k for k in ("receipt", "result", "image_url", "output_url")
                                              if getattr(note, k) is None}),
        MessageAttributes={
            "runtime": {"DataType": "String", "StringValue": note.runtime},
            "status": {"DataType": "String", "StringValue": note.status.value},
        },
    )
