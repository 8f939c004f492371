"""One task, seen in every resource it passes through: the SNS message and its `runtime` attribute, the queue its
subscription's filter policy routes it to, the task record in DynamoDB, the S3 objects, the notification.

`Tap` subscribes a queue of its own to the tasks topic (as the runtimes' queues are, raw delivery), so the notebook
reads a copy of the real message without taking it from the agent that runs it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sdlab.aws import AwsTarget, client
from sdlab.provision import allow_topic_to_send, ensure_queue, ensure_subscription
from sdlab.taskstore import TaskStore


def target_of(stack: dict[str, Any]) -> AwsTarget:
    return AwsTarget(stack["region"], stack["aws_endpoint_url"])


@dataclass
class Tap:
    """A copy of every message published to the tasks topic, on a queue of the notebook's own."""

    stack: dict[str, Any]
    queue_url: str
    subscription_arn: str

    @classmethod
    def open(cls, stack: dict[str, Any], topic: str = "tasks") -> Tap:
        """A tap on the `tasks` topic (task messages) or the `results` topic (notifications)."""
        target = target_of(stack)
        topic_arn = stack[f"{topic}_topic_arn"]
        sqs = client("sqs", target)
        url, arn = ensure_queue(sqs, f"{stack['stack']}-tap-{uuid.uuid4().hex[:8]}", {}, stack["stack"])
        allow_topic_to_send(sqs, url, arn, topic_arn)
        sub = ensure_subscription(client("sns", target), topic_arn, arn, None)
        return cls(stack, url, sub)

    def take(self, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The message published for `task_id`: its body (the task message) and its attributes."""
        sqs = client("sqs", target_of(self.stack))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                      MessageAttributeNames=["All"])
            for msg in out.get("Messages", []):
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
                body = json.loads(msg["Body"])
                if body.get("id") == task_id:
                    attributes = {k: v["StringValue"] for k, v in msg.get("MessageAttributes", {}).items()}
                    return {"body": body, "attributes": attributes}
        raise TimeoutError(f"no message for task {task_id} on the tasks topic within {timeout:.0f} s")

    def counts(self, seconds: float = 3.0) -> Counter[str]:
        """How many messages arrived per task id, reading (and deleting) for `seconds`."""
        sqs = client("sqs", target_of(self.stack))
        seen: Counter[str] = Counter()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            out = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for msg in out.get("Messages", []):
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
                seen[json.loads(msg["Body"]).get("id", "?")] += 1
        return seen

    def close(self) -> None:
        target = target_of(self.stack)
        client("sns", target).unsubscribe(SubscriptionArn=self.subscription_arn)
        client("sqs", target).delete_queue(QueueUrl=self.queue_url)


def routes(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each queue subscribed to the tasks topic and its filter policy: how a message finds its runtime's queue."""
    sns = client("sns", target_of(stack))
    out = {}
    for sub in sns.list_subscriptions_by_topic(TopicArn=stack["tasks_topic_arn"])["Subscriptions"]:
        attrs = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
        if "FilterPolicy" in attrs:
            out[sub["Endpoint"].rsplit(":", 1)[-1]] = json.loads(attrs["FilterPolicy"])
    return out


def queue(stack: dict[str, Any], runtime: str) -> dict[str, Any]:
    """The runtime's queue: name, depth, visibility timeout and where poison messages go (its redrive policy)."""
    sqs = client("sqs", target_of(stack))
    url = stack["runtimes"][runtime]["queue_url"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs.get("RedrivePolicy", "{}"))
    return {"queue": url.rsplit("/", 1)[-1], "visible": int(attrs["ApproximateNumberOfMessages"]),
            "in_flight": int(attrs["ApproximateNumberOfMessagesNotVisible"]),
            "visibility_timeout_s": int(attrs["VisibilityTimeout"]),
            "dead_letter_queue": redrive.get("deadLetterTargetArn", "").rsplit(":", 1)[-1],
            "max_receive_count": redrive.get("maxReceiveCount")}


def record(stack: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The task's record, read from the DynamoDB table itself (not through the API)."""
    found = TaskStore(client("dynamodb", target_of(stack)), stack["task_table"]).get(task_id)
    if found is None:
        raise KeyError(f"no record for task {task_id} in table {stack['task_table']}")
    return found


def objects(stack: dict[str, Any], task_id: str) -> list[dict[str, Any]]:
    """The S3 objects the agent wrote for the task: key, size, content type."""
    s3 = client("s3", target_of(stack))
    prefix = f"{stack['output_prefix']}/{task_id}/"
    listed = s3.list_objects_v2(Bucket=stack["bucket"], Prefix=prefix).get("Contents", [])
    return [{"key": o["Key"], "bytes": o["Size"],
             "content_type": s3.head_object(Bucket=stack["bucket"], Key=o["Key"])["ContentType"]} for o in listed]


def result_json(stack: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The task's result.json as the agent stored it (parameters, the runtime's `info`, run time)."""
    s3 = client("s3", target_of(stack))
    key = f"{stack['output_prefix']}/{task_id}/result.json"
    return dict(json.loads(s3.get_object(Bucket=stack["bucket"], Key=key)["Body"].read()))


def models(stack: dict[str, Any], model_prefix: str) -> Any:
    """The models in the bucket (what runtimes sync or mount): a DataFrame of model, files, megabytes."""
    import pandas as pd

    s3 = client("s3", target_of(stack))
    sizes: dict[str, list[int]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack["bucket"], Prefix=f"{model_prefix}/"):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(model_prefix) + 1:].split("/", 1)[0]
            sizes.setdefault(name, []).append(obj["Size"])
    return pd.DataFrame([{"model": m, "files": len(s), "megabytes": round(sum(s) / 1e6, 2)} for m, s in sorted(sizes.items())])
