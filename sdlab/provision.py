"""Messaging and storage layer: `ensure_*` functions (idempotent, tagged) and teardown.

The same functions build the local stack on the moto server and the real one on AWS; only the
`AwsTarget` differs. Each `ensure_*` converges: calling it twice changes nothing the second time.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from sdlab.api.callbacks import MAX_ATTEMPTS as CALLBACK_MAX_ATTEMPTS
from sdlab.aws import AwsTarget, client
from sdlab.config import QueueSettings, Settings
from sdlab.errors import ProvisionError

log = logging.getLogger(__name__)
STACK_TAG = "sdlab:stack"
# receives of one callbacks-queue message before SQS moves it to the DLQ: past the dispatcher's own attempts
CALLBACK_MAX_RECEIVE_COUNT = CALLBACK_MAX_ATTEMPTS + 2


@dataclass(frozen=True)
class Names:
    """Resource names derived from the config, in one place."""

    stack: str
    bucket: str

    @classmethod
    def of(cls, settings: Settings) -> Names:
        return cls(stack=settings.stack.name, bucket=settings.stack.bucket_name)

    @property
    def tasks_topic(self) -> str:
        return f"{self.stack}-tasks"

    @property
    def results_topic(self) -> str:
        return f"{self.stack}-results"

    @property
    def callbacks_queue(self) -> str:
        return f"{self.stack}-callbacks"

    @property
    def callbacks_dlq(self) -> str:
        return f"{self.stack}-callbacks-dlq"

    @property
    def table(self) -> str:
        return f"{self.stack}-tasks"

    def queue(self, runtime: str) -> str:
        return f"{self.stack}-{runtime}"

    def high_queue(self, runtime: str) -> str:
        return f"{self.stack}-{runtime}-high"

    def dlq(self, runtime: str) -> str:
        return f"{self.stack}-{runtime}-dlq"


@dataclass
class QueueInfo:
    """A runtime's queues: normal work, high-priority work (drained first), and their shared DLQ."""

    url: str
    arn: str
    high_url: str
    high_arn: str
    dlq_url: str
    dlq_arn: str


@dataclass
class StackResources:
    """What provisioning created; written into .sdlab/stack.json locally."""

    bucket: str
    tasks_topic_arn: str
    results_topic_arn: str
    table: str
    callbacks_queue_url: str = ""
    callbacks_dlq_url: str = ""
    queues: dict[str, QueueInfo] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tags(stack: str) -> dict[str, str]:
    return {STACK_TAG: stack}


def ensure_bucket(s3: Any, name: str, region: str, stack: str) -> str:
    """Private, tagged bucket for models and outputs."""
    try:
        kwargs: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
        log.info("created bucket %s", name)
    except ClientError as err:
        if err.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise ProvisionError(f"bucket {name}: {err}; choose another `stack.bucket` name") from err
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={k: True for k in (
            "BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")},
    )
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in _tags(stack).items()]})
    return name


def ensure_topic(sns: Any, name: str, stack: str) -> str:
    """SNS topic (CreateTopic is idempotent); returns its ARN."""
    arn = sns.create_topic(Name=name, Tags=[{"Key": k, "Value": v} for k, v in _tags(stack).items()])["TopicArn"]
    return arn


def _queue_arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def ensure_queue(sqs: Any, name: str, attributes: dict[str, str], stack: str) -> tuple[str, str]:
    """SQS queue with `attributes` converged; returns (url, arn)."""
    try:
        url = sqs.create_queue(QueueName=name, Attributes=attributes, tags=_tags(stack))["QueueUrl"]
    except ClientError as err:
        if err.response["Error"]["Code"] not in ("QueueAlreadyExists", "QueueNameExists"):
            raise ProvisionError(f"queue {name}: {err}") from err
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url, _queue_arn(sqs, url)


def ensure_runtime_queue(sqs: Any, names: Names, runtime: str, settings: QueueSettings) -> QueueInfo:
    """The runtime's normal and high-priority work queues and their dead-letter queue
    (redrive after `max_receive_count` receives)."""
    dlq_url, dlq_arn = ensure_queue(
        sqs, names.dlq(runtime), {"MessageRetentionPeriod": str(14 * 24 * 3600)}, names.stack
    )
    attributes = {
        "VisibilityTimeout": str(settings.visibility_timeout_seconds),
        "MessageRetentionPeriod": str(settings.message_retention_seconds),
        "ReceiveMessageWaitTimeSeconds": str(settings.receive_wait_seconds),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.max_receive_count}),
    }
    url, arn = ensure_queue(sqs, names.queue(runtime), attributes, names.stack)
    high_url, high_arn = ensure_queue(sqs, names.high_queue(runtime), attributes, names.stack)
    return QueueInfo(url=url, arn=arn, high_url=high_url, high_arn=high_arn, dlq_url=dlq_url, dlq_arn=dlq_arn)


def runtime_filter_policies(runtime: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(normal, high) subscription filters: high gets `priority=high`; normal gets the rest, including
    messages published straight to SNS without a `priority` attribute."""
    normal = {"$or": [
        {"runtime": [runtime], "priority": [{"anything-but": ["high"]}]},
        {"runtime": [runtime], "priority": [{"exists": False}]},
    ]}
    return normal, {"runtime": [runtime], "priority": ["high"]}


def allow_topic_to_send(sqs: Any, queue_url: str, queue_arn: str, topic_arn: str) -> None:
    """Queue policy: only this SNS topic may send to the queue."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "tasks-topic-to-queue",
            "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
        }],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})


def ensure_subscription(sns: Any, topic_arn: str, queue_arn: str, filter_policy: dict[str, Any] | None) -> str:
    """Raw-delivery SQS subscription, filtered on message attributes; returns the subscription ARN."""
    attributes = {"RawMessageDelivery": "true"}
    if filter_policy is not None:
        attributes |= {"FilterPolicy": json.dumps(filter_policy), "FilterPolicyScope": "MessageAttributes"}
    return sns.subscribe(
        TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes=attributes, ReturnSubscriptionArn=True
    )["SubscriptionArn"]


def ensure_table(dynamodb: Any, name: str, stack: str) -> str:
    """Task table: key `id`; index `by_runtime` (runtime, created_at) for listings; TTL on `expires_at`."""
    try:
        dynamodb.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "id", "AttributeType": "S"},
                {"AttributeName": "runtime", "AttributeType": "S"},
                {"AttributeName": "created_at", "AttributeType": "N"},
            ],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[{
                "IndexName": "by_runtime",
                "KeySchema": [
                    {"AttributeName": "runtime", "KeyType": "HASH"},
                    {"AttributeName": "created_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }],
            Tags=[{"Key": k, "Value": v} for k, v in _tags(stack).items()],
        )
        log.info("created table %s", name)
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceInUseException":
            raise ProvisionError(f"table {name}: {err}") from err
    dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})
    return name


def provision(settings: Settings, target: AwsTarget) -> StackResources:
    """Create (or converge) everything the messaging layer needs, for every runtime in the config."""
    names = Names.of(settings)
    s3, sns, sqs, ddb = (client(s, target) for s in ("s3", "sns", "sqs", "dynamodb"))
    resources = StackResources(
        bucket=ensure_bucket(s3, names.bucket, target.region, names.stack),
        tasks_topic_arn=ensure_topic(sns, names.tasks_topic, names.stack),
        results_topic_arn=ensure_topic(sns, names.results_topic, names.stack),
        table=ensure_table(ddb, names.table, names.stack),
    )
    # webhook deliveries: every notification also lands here, for tasks that asked for a callback_url
    # the dispatcher parks what it gives up on in the DLQ itself (with a reason); the redrive is the backstop for a
    # record that fails the dispatcher every time it is received
    cb_dlq_url, cb_dlq_arn = ensure_queue(sqs, names.callbacks_dlq, {"MessageRetentionPeriod": str(14 * 24 * 3600)},
                                          names.stack)
    redrive = json.dumps({"deadLetterTargetArn": cb_dlq_arn, "maxReceiveCount": CALLBACK_MAX_RECEIVE_COUNT})
    cb_url, cb_arn = ensure_queue(sqs, names.callbacks_queue, {"VisibilityTimeout": "60", "RedrivePolicy": redrive}, names.stack)
    allow_topic_to_send(sqs, cb_url, cb_arn, resources.results_topic_arn)
    ensure_subscription(sns, resources.results_topic_arn, cb_arn, None)
    resources.callbacks_queue_url, resources.callbacks_dlq_url = cb_url, cb_dlq_url
    for rt in settings.runtimes:
        info = ensure_runtime_queue(sqs, names, rt.name, rt.queue)
        normal, high = runtime_filter_policies(rt.name)
        for url, arn, policy in ((info.url, info.arn, normal), (info.high_url, info.high_arn, high)):
            allow_topic_to_send(sqs, url, arn, resources.tasks_topic_arn)
            ensure_subscription(sns, resources.tasks_topic_arn, arn, policy)
        resources.queues[rt.name] = info
        log.info("runtime %s: queue %s (DLQ after %d receives)", rt.name, info.url, rt.queue.max_receive_count)
    return resources


def _ignore_missing(fn: Any, **kwargs: Any) -> bool:
    try:
        fn(**kwargs)
        return True
    except ClientError as err:
        code = err.response["Error"]["Code"]
        if code in ("NoSuchBucket", "ResourceNotFoundException", "NotFound", "NonExistentQueue",
                    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            return False
        raise


def empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every object (and version) in `bucket`; returns how many."""
    count = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        versions = page.get("Versions", []) + page.get("DeleteMarkers", [])
        objects = [{"Key": o["Key"], "VersionId": o["VersionId"]} for o in versions]
        for i in range(0, len(objects), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": objects[i:i + 1000], "Quiet": True})
        count += len(objects)
    return count


def teardown(settings: Settings, target: AwsTarget, *, delete_bucket: bool = True) -> list[str]:
    """Remove what `provision` made, in dependency order; returns what was deleted."""
    names = Names.of(settings)
    s3, sns, sqs, ddb = (client(s, target) for s in ("s3", "sns", "sqs", "dynamodb"))
    removed: list[str] = []
    for topic in (names.tasks_topic, names.results_topic):
        arn = f"arn:aws:sns:{target.region}:{_account(target)}:{topic}"
        try:
            subs = sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]
        except ClientError as err:
            if err.response["Error"]["Code"] != "NotFound":
                raise
            continue  # DeleteTopic succeeds on a missing topic, so look first to report honestly
        for sub in subs:
            if sub["SubscriptionArn"].startswith("arn:"):
                sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"])
                removed.append(sub["SubscriptionArn"])
        if _ignore_missing(sns.delete_topic, TopicArn=arn):
            removed.append(arn)
    queues = [names.callbacks_queue, names.callbacks_dlq]
    for rt in settings.runtimes:
        queues += [names.queue(rt.name), names.high_queue(rt.name), names.dlq(rt.name)]
    for queue in queues:
        try:
            url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        except ClientError:
            continue
        sqs.delete_queue(QueueUrl=url)
        removed.append(url)
    if _ignore_missing(ddb.delete_table, TableName=names.table):
        removed.append(names.table)
    if delete_bucket:
        try:
            empty_bucket(s3, names.bucket)
        except ClientError as err:
            if err.response["Error"]["Code"] != "NoSuchBucket":
                raise
        if _ignore_missing(s3.delete_bucket, Bucket=names.bucket):
            removed.append(f"s3://{names.bucket}")
    return removed


def _account(target: AwsTarget) -> str:
    return client("sts", target).get_caller_identity()["Account"]
