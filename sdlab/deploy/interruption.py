"""Karpenter's interruption queue and the EventBridge rules that feed it.

With `settings.interruptionQueue` set, Karpenter reads Spot interruption warnings (2-minute notice), rebalance
recommendations, instance state changes and AWS Health scheduled changes from this queue and drains the node
ahead of time, as Karpenter's getting-started CloudFormation sets it up.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from botocore.exceptions import ClientError

from sdlab.deploy.names import INTERRUPTION_RULES, DeployNames
from sdlab.errors import ProvisionError
from sdlab.provision import ensure_queue

log = logging.getLogger(__name__)
TARGET_ID = "karpenter-interruption-queue"
EVENT_PATTERNS: dict[str, dict[str, list[str]]] = {
    "spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "state-change": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
    "scheduled-change": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
}


def queue_policy(queue_arn: str) -> dict[str, Any]:
    """EventBridge (and SQS itself) may send; nothing may use plain HTTP."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "EventBridgeSends", "Effect": "Allow", "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
         "Action": "sqs:SendMessage", "Resource": queue_arn},
        {"Sid": "DenyHTTP", "Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": queue_arn,
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ]}


def ensure_interruption_queue(sqs: Any, events: Any, names: DeployNames) -> tuple[str, str]:
    """The queue (5-minute retention: stale interruption notices are useless) and its four rules; (url, arn)."""
    url, arn = ensure_queue(sqs, names.interruption_queue,
                            {"MessageRetentionPeriod": "300", "SqsManagedSseEnabled": "true"}, names.stack)
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(queue_policy(arn))})
    tags = [{"Key": k, "Value": v} for k, v in names.tags.items()]
    for kind, pattern in EVENT_PATTERNS.items():
        rule = names.interruption_rule(kind)
        rule_arn = events.put_rule(Name=rule, EventPattern=json.dumps(pattern), State="ENABLED",
                                   Description=f"Karpenter interruption handling for {names.cluster}: {kind}")["RuleArn"]
        events.tag_resource(ResourceARN=rule_arn, Tags=tags)
        failed = events.put_targets(Rule=rule, Targets=[{"Id": TARGET_ID, "Arn": arn}]).get("FailedEntryCount", 0)
        if failed:
            raise ProvisionError(f"EventBridge refused the target of rule {rule}; check the queue policy of {url}")
    log.info("interruption queue %s with %d rules", names.interruption_queue, len(EVENT_PATTERNS))
    return url, arn


def delete_interruption_queue(sqs: Any, events: Any, names: DeployNames) -> list[str]:
    """Rules (targets first), then the queue; returns what was deleted."""
    removed = []
    for kind in (*INTERRUPTION_RULES, *sorted(set(EVENT_PATTERNS) - set(INTERRUPTION_RULES))):
        rule = names.interruption_rule(kind)
        try:
            targets = [t["Id"] for t in events.list_targets_by_rule(Rule=rule)["Targets"]]
        except ClientError as err:
            if err.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            continue
        if targets:
            events.remove_targets(Rule=rule, Ids=targets)
        events.delete_rule(Name=rule)
        removed.append(f"EventBridge rule {rule}")
    try:
        url = sqs.get_queue_url(QueueName=names.interruption_queue)["QueueUrl"]
    except ClientError:
        return removed
    sqs.delete_queue(QueueUrl=url)
    removed.append(url)
    return removed
