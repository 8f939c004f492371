"""`sdlab aws teardown`: remove everything tagged `sdlab:stack=<name>`, in dependency order, then say what remains.

Order: API Gateway (usage plan, key, API) → Lambda (function, log group) → IAM roles → messaging layer (topics and
subscriptions, queues, table, bucket; `sdlab.provision.teardown`) → ECR repositories → interruption queue and rules.
The cluster goes first, separately (`cluster_teardown_commands`): its manifests are deleted so Karpenter terminates
its GPU nodes, then the charts and the cluster.

`remaining` lists what is left: per-service listings for what sdlab creates, plus the Resource Groups Tagging API
for anything else carrying the stack's tag (moto answers it for Lambda, SQS, SNS, DynamoDB, SageMaker, EventBridge;
IAM, API Gateway and ECR are listed per service on AWS too).
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from sdlab.aws import AwsTarget, client
from sdlab.config import Settings
from sdlab.deploy import apigw, ecr, eks, interruption, lambda_pkg
from sdlab.deploy.iam import Arns, delete_role, role_specs
from sdlab.deploy.names import INTERRUPTION_RULES, REPOSITORIES, DeployNames
from sdlab.provision import STACK_TAG
from sdlab.provision import teardown as teardown_messaging

log = logging.getLogger(__name__)
_LISTED_SERVICES = {"s3", "sns", "sqs", "dynamodb", "lambda", "logs", "events", "ecr", "apigateway", "iam"}


def _missing(err: ClientError) -> bool:
    code = err.response["Error"]["Code"]
    return code in ("ResourceNotFoundException", "NoSuchEntity", "NotFoundException", "NoSuchBucket",
                    "RepositoryNotFoundException", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "404")


def teardown_stack(settings: Settings, target: AwsTarget, *, cluster: str | None = None,
                   delete_bucket: bool = True) -> list[str]:
    """Delete the serverless layer; returns what was deleted. Running it again deletes nothing and fails nowhere."""
    names = DeployNames.of(settings, cluster)
    account = client("sts", target).get_caller_identity()["Account"]
    removed = apigw.delete_api(client("apigateway", target), names)
    lam = client("lambda", target)
    if lambda_pkg.delete_queue_triggers(lam, names.callbacks_function):
        removed.append(f"event source mapping of {names.callbacks_function}")
    for function in (names.function, names.callbacks_function):
        if lambda_pkg.delete_function(lam, function):
            removed.append(f"Lambda function {function}")
    logs = client("logs", target)
    for group in (names.log_group, names.callbacks_log_group):
        try:
            logs.delete_log_group(logGroupName=group)
            removed.append(f"log group {group}")
        except ClientError as err:
            if not _missing(err):
                raise
    iam = client("iam", target)
    role_names = {s.name for s in role_specs(settings, names, Arns(account, target.region))}
    role_names |= {r["RoleName"] for page in iam.get_paginator("list_roles").paginate(PathPrefix=names.role_path)
                   for r in page["Roles"]}  # roles of runtimes since dropped from the config
    removed += [f"IAM role {n}" for n in sorted(role_names) if delete_role(iam, n)]
    removed += teardown_messaging(settings, target, delete_bucket=delete_bucket)
    registry = client("ecr", target)
    removed += [f"ECR repository {r}" for r in REPOSITORIES if ecr.delete_repository(registry, names.repository(r), names.tags)]
    removed += interruption.delete_interruption_queue(client("sqs", target), client("events", target), names)
    return removed


def cluster_teardown_commands(names: DeployNames) -> list[list[str]]:
    return eks.uninstall_commands(names)


def remaining(settings: Settings, target: AwsTarget, *, cluster: str | None = None) -> list[str]:
    """Everything of the stack that still exists, one line each (empty: all gone)."""
    names, base = DeployNames.of(settings, cluster), DeployNames.of(settings, cluster).base
    left: list[str] = []

    def probe(label: str, call: Any, **kwargs: Any) -> None:
        try:
            call(**kwargs)
            left.append(label)
        except ClientError as err:
            if not _missing(err):
                raise

    iam = client("iam", target)
    pages = iam.get_paginator("list_roles").paginate(PathPrefix=names.role_path)
    roles = {r["RoleName"] for page in pages for r in page["Roles"]}
    left += [f"IAM role {r}" for r in sorted(roles)]
    probe(f"IAM role {names.node_role}", iam.get_role, RoleName=names.node_role)
    gw = client("apigateway", target)
    left += [f"REST API {a['name']} ({a['id']})" for a in gw.get_rest_apis(limit=500)["items"] if a["name"] == names.rest_api]
    left += [f"API key {k['name']}" for k in gw.get_api_keys(nameQuery=names.api_key)["items"] if k["name"] == names.api_key]
    left += [f"usage plan {p['name']}" for p in gw.get_usage_plans()["items"] if p["name"] == names.usage_plan]
    for function in (names.function, names.callbacks_function):
        probe(f"Lambda function {function}", client("lambda", target).get_function, FunctionName=function)
    for group in (names.log_group, names.callbacks_log_group):
        groups = client("logs", target).describe_log_groups(logGroupNamePrefix=group)["logGroups"]
        left += [f"log group {g['logGroupName']}" for g in groups if g["logGroupName"] == group]
    sqs = client("sqs", target)
    for prefix in {names.stack, names.interruption_queue}:
        left += [f"SQS queue {u}" for u in sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])]
    own_topics = {base.tasks_topic, base.results_topic}
    left += [f"SNS topic {t['TopicArn']}" for t in client("sns", target).list_topics()["Topics"]
             if t["TopicArn"].rsplit(":", 1)[-1] in own_topics]
    probe(f"DynamoDB table {base.table}", client("dynamodb", target).describe_table, TableName=base.table)
    probe(f"S3 bucket {base.bucket}", client("s3", target).head_bucket, Bucket=base.bucket)
    registry = client("ecr", target)
    for repo in REPOSITORIES:
        probe(f"ECR repository {names.repository(repo)}", registry.describe_repositories,
              repositoryNames=[names.repository(repo)])
    events = client("events", target)
    left += [f"EventBridge rule {r['Name']}" for r in events.list_rules(NamePrefix=f"{names.cluster}-karpenter-")["Rules"]
             if r["Name"] in {names.interruption_rule(k) for k in INTERRUPTION_RULES}]
    if eks.cluster_status(client("eks", target), names.cluster):
        left.append(f"EKS cluster {names.cluster}")
    left += _tagged_elsewhere(target, names)
    return sorted(set(left))


def _tagged_elsewhere(target: AwsTarget, names: DeployNames) -> list[str]:
    """Resources with the stack's tag in services sdlab does not list itself (e.g. SageMaker, EC2 GPU nodes)."""
    tagging = client("resourcegroupstaggingapi", target)
    out = []
    for page in tagging.get_paginator("get_resources").paginate(TagFilters=[{"Key": STACK_TAG, "Values": [names.stack]}]):
        for item in page["ResourceTagMappingList"]:
            if item["ResourceARN"].split(":")[2] not in _LISTED_SERVICES:
                out.append(f"tagged {item['ResourceARN']}")
    ec2 = client("ec2", target)
    reservations = ec2.describe_instances(Filters=[{"Name": "tag:sdlab/stack", "Values": [names.stack]},
                                                   {"Name": "instance-state-name", "Values": ["pending", "running", "stopping"]}])
    out += [f"EC2 instance {i['InstanceId']} ({i['InstanceType']})" for r in reservations["Reservations"] for i in r["Instances"]]
    return out
