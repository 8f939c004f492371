"""Webhooks end to end: a real HTTPS server on 127.0.0.1 receives signed callbacks from the stack's dispatcher."""

from __future__ import annotations

import json
import time

import pytest

from sdlab.callbacks import verify

pytestmark = pytest.mark.integration


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_callback_is_signed_and_delivered_once(stack, client, webhook):
    url, calls, _ = webhook
    task = client.submit("rt-a", "webhook", payload={"steps": 4, "width": 64, "height": 64}, callback_url=url)
    client.wait(task.id, timeout=120)
    _wait(lambda: client.status(task.id).get("callback_status") == "delivered")
    mine = [(h, b) for h, b in calls if json.loads(b)["id"] == task.id]
    assert len(mine) == 1
    headers, body = mine[0]
    assert verify(stack["callback_secret"], headers, body)
    assert not verify("wrong-secret", headers, body)
    assert json.loads(body)["status"] == "completed"


def test_callback_retried_with_backoff_until_delivered(stack, client, webhook):
    url, calls, state = webhook
    state["fail_first"] = 1
    task = client.submit("rt-b", "webhook retry", payload={"steps": 4, "width": 64, "height": 64}, callback_url=url)
    _wait(lambda: client.status(task.id).get("callback_status") == "delivered", timeout=90)
    record = client.status(task.id)
    assert record["callback_attempts"] == 2
    assert sum(1 for _, b in calls if json.loads(b)["id"] == task.id) == 2


def test_callbacks_queue_parks_what_is_not_a_notification_in_its_dlq(stack):
    """The callbacks queue has a DLQ (redrive as the backstop); a message no attempt can deliver goes there at once,
    with its reason, instead of coming back forever."""
    import uuid

    from sdlab.aws import AwsTarget
    from sdlab.aws import client as aws_client

    sqs = aws_client("sqs", AwsTarget(stack["region"], stack["aws_endpoint_url"]))
    queue = sqs.get_queue_url(QueueName=f"{stack['stack']}-callbacks")["QueueUrl"]
    dlq = sqs.get_queue_url(QueueName=f"{stack['stack']}-callbacks-dlq")["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["RedrivePolicy"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(f"{stack['stack']}-callbacks-dlq")
    marker = f"not-json-{uuid.uuid4().hex}"
    sqs.send_message(QueueUrl=queue, MessageBody=marker)
    parked: dict = {}

    def found() -> bool:
        out = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"],
                                  VisibilityTimeout=0)
        parked.update({m["Body"]: m for m in out.get("Messages", [])})
        return marker in parked

    _wait(found, timeout=30)
    assert "not a notification" in parked[marker]["MessageAttributes"]["reason"]["StringValue"]
