"""Provisioning against a real moto server process: idempotent, tagged, routed, with DLQs."""

import json

import pytest

from sdlab.aws import AwsTarget, client
from sdlab.provision import STACK_TAG, Names, provision, teardown


@pytest.fixture()
def target(moto_server):
    return AwsTarget(region="us-east-1", endpoint_url=moto_server)


def test_provision_is_idempotent_and_tagged(test_settings, target):
    first = provision(test_settings, target)
    second = provision(test_settings, target)
    assert first.to_dict() == second.to_dict()
    sqs = client("sqs", target)
    names = Names.of(test_settings)
    queues = sqs.list_queues(QueueNamePrefix=f"{names.stack}-rt-")["QueueUrls"]
    assert len(queues) == 3 * len(test_settings.runtimes), queues  # normal + high + DLQ each, no duplicates
    for info in first.queues.values():
        tags = sqs.list_queue_tags(QueueUrl=info.url)["Tags"]
        assert tags[STACK_TAG] == test_settings.stack.name
        attrs = sqs.get_queue_attributes(QueueUrl=info.url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == info.dlq_arn and int(redrive["maxReceiveCount"]) == 2
        assert attrs["VisibilityTimeout"] == "30"
    s3_tags = client("s3", target).get_bucket_tagging(Bucket=first.bucket)["TagSet"]
    assert {"Key": STACK_TAG, "Value": test_settings.stack.name} in s3_tags


def test_provision_routes_by_runtime_attribute(test_settings, target):
    res = provision(test_settings, target)
    sns, sqs = client("sns", target), client("sqs", target)
    sns.publish(TopicArn=res.tasks_topic_arn, Message='{"hello": "a"}',
                MessageAttributes={"runtime": {"DataType": "String", "StringValue": "rt-a"}})
    sns.publish(TopicArn=res.tasks_topic_arn, Message='{"hello": "nobody"}',
                MessageAttributes={"runtime": {"DataType": "String", "StringValue": "rt-zzz"}})
    got_a = sqs.receive_message(QueueUrl=res.queues["rt-a"].url, WaitTimeSeconds=1, MaxNumberOfMessages=10,
                                MessageAttributeNames=["All"]).get("Messages", [])
    sns.publish(TopicArn=res.tasks_topic_arn, Message='{"hello": "a-high"}', MessageAttributes={
        "runtime": {"DataType": "String", "StringValue": "rt-a"}, "priority": {"DataType": "String", "StringValue": "high"}})
    got_high = sqs.receive_message(QueueUrl=res.queues["rt-a"].high_url, WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in got_high] == ['{"hello": "a-high"}']
    got_b = sqs.receive_message(QueueUrl=res.queues["rt-b"].url, WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in got_a] == ['{"hello": "a"}']  # raw delivery: the body is the message itself
    assert got_a[0]["MessageAttributes"]["runtime"]["StringValue"] == "rt-a"
    assert got_b == []


def test_teardown_removes_everything(test_settings, target):
    res = provision(test_settings, target)
    client("s3", target).put_object(Bucket=res.bucket, Key="outputs/x/0.png", Body=b"x")
    removed = teardown(test_settings, target)
    assert f"s3://{res.bucket}" in removed and res.table in removed
    assert client("sqs", target).list_queues(QueueNamePrefix=test_settings.stack.name).get("QueueUrls", []) == []
    assert client("sns", target).list_topics()["Topics"] == []
    assert teardown(test_settings, target) == []  # nothing left the second time
