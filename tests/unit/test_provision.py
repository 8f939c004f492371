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


def test_retention_outputs_expire_records_have_ttl_idle_inboxes_are_pruned(test_settings, target):
    import time

    from sdlab.client import LAST_USED_TAG, Client, prune_inboxes
    from sdlab.config import parse_config
    from tests.conftest import TEST_CONFIG

    settings = parse_config({**TEST_CONFIG, "retention": {"outputs_days": 3, "records_days": 2}})
    resources = provision(settings, target)
    s3 = client("s3", target)
    s3.put_bucket_lifecycle_configuration(Bucket=resources.bucket, LifecycleConfiguration={"Rules": [
        {"ID": "someone-elses", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 90}}]})
    provision(settings, target)  # converges: the stack's rule is set once, another rule on the bucket is kept
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=resources.bucket)["Rules"]}
    assert set(rules) == {"someone-elses", "sdlab-outputs-expire"}
    ours = rules["sdlab-outputs-expire"]
    assert ours["Expiration"]["Days"] == 3 and ours["Filter"]["Prefix"] == "outputs/" and ours["Status"] == "Enabled"
    ttl = client("dynamodb", target).describe_time_to_live(TableName=resources.table)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "expires_at"

    stack = settings.stack.name
    old = Client("http://127.0.0.1:9", "k", target, resources.bucket, resources.results_topic_arn, stack)
    fresh = Client("http://127.0.0.1:9", "k", target, resources.bucket, resources.results_topic_arn, stack)
    old_url, fresh_url = old._ensure_inbox(), fresh._ensure_inbox()
    sqs, sns = client("sqs", target), client("sns", target)
    sqs.tag_queue(QueueUrl=old_url, Tags={LAST_USED_TAG: str(int(time.time()) - 3 * 3600)})  # a client that crashed
    assert prune_inboxes(target, stack, resources.results_topic_arn, idle_seconds=3600) == [old_url]
    assert sqs.list_queues(QueueNamePrefix=f"{stack}-inbox-")["QueueUrls"] == [fresh_url]
    endpoints = {s["Endpoint"] for s in sns.list_subscriptions_by_topic(TopicArn=resources.results_topic_arn)["Subscriptions"]}
    assert not any(e.endswith(old_url.rsplit("/", 1)[1]) for e in endpoints)
    fresh.close()
    old._inbox = None
    old.close()
