"""IAM: least-privilege policy documents built from the config, trust policies, and `ensure_role`.

Principals and what each may do (nothing else):
- the API function (Lambda): publish to the tasks topic, write/read its task records, read outputs to presign URLs;
- the callback dispatcher (Lambda): consume the callbacks queue, park given-up deliveries in its DLQ, note the outcome;
- each runtime's queue agent (EKS Pod Identity): consume its own queues, park poison messages in its DLQ, write and
  discard outputs (under the output prefix, where every per-task prefix lives), read input images and workflow
  templates (the stack's bucket and `stack.input_buckets`), publish results, move task records;
- the KEDA operator: read the depth of the work queues;
- the Mountpoint for S3 CSI driver: list and read the model prefix;
- the Karpenter controller: launch and terminate its own tagged GPU nodes, read its interruption queue;
- the GPU nodes: AWS managed node policies.

`Resource: "*"` appears only for actions that AWS does not scope to resources (REQUIRES_WILDCARD_RESOURCE).
tests/iam/ runs the API function, the agents and the callback dispatcher with exactly these policies against a
moto server that enforces them; removing any statement of theirs fails a test there.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from sdlab.config import RuntimeSettings, Settings
from sdlab.deploy.names import (
    KARPENTER_NAMESPACE,
    KARPENTER_SERVICE_ACCOUNT,
    KEDA_NAMESPACE,
    KEDA_SERVICE_ACCOUNT,
    MOUNTPOINT_NAMESPACE,
    MOUNTPOINT_SERVICE_ACCOUNT,
    WORKLOAD_NAMESPACE,
    DeployNames,
)
from sdlab.errors import ProvisionError
from sdlab.k8s.context import object_name

log = logging.getLogger(__name__)
VERSION = "2012-10-17"
INLINE_POLICY = "sdlab"
# Actions that support no resource-level permissions: AWS requires "Resource": "*" for them.
REQUIRES_WILDCARD_RESOURCE = frozenset({
    "ec2:DescribeAvailabilityZones", "ec2:DescribeImages", "ec2:DescribeInstances", "ec2:DescribeInstanceTypeOfferings",
    "ec2:DescribeInstanceTypes", "ec2:DescribeLaunchTemplates", "ec2:DescribeSecurityGroups",
    "ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets", "ec2:DescribeCapacityReservations", "pricing:GetProducts",
    "ecr:GetAuthorizationToken", "cloudwatch:PutMetricData",  # the latter scoped by a cloudwatch:namespace condition
})
NODE_MANAGED_POLICIES = (  # what EKS documents for a node role (kubelet, VPC CNI, image pulls, SSM access)
    "AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryPullOnly", "AmazonSSMManagedInstanceCore",
)


@dataclass(frozen=True)
class Arns:
    """ARNs of one account and region."""

    account: str
    region: str
    partition: str = "aws"

    def of(self, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
        return f"arn:{self.partition}:{service}:{self.region if region else ''}:{self.account if account else ''}:{resource}"

    def sqs(self, name: str) -> str:
        return self.of("sqs", name)

    def sns(self, name: str) -> str:
        return self.of("sns", name)

    def table(self, name: str) -> str:
        return self.of("dynamodb", f"table/{name}")

    def objects(self, bucket: str, prefix: str = "") -> str:
        return f"arn:{self.partition}:s3:::{bucket}/{prefix.strip('/') + '/' if prefix.strip('/') else ''}*"

    def bucket(self, bucket: str) -> str:
        return f"arn:{self.partition}:s3:::{bucket}"

    def role(self, path: str, name: str) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role{path}{name}"

    def managed_policy(self, name: str) -> str:
        return f"arn:{self.partition}:iam::aws:policy/{name}"


@dataclass(frozen=True)
class RoleSpec:
    """One role: who may assume it (trust), what it may do (one inline policy), which managed policies it has."""

    name: str
    principal: str  # "lambda", "agent:<runtime>", "keda", "karpenter", "mountpoint", "node"
    description: str
    trust: dict[str, Any]
    policy: dict[str, Any] | None
    managed_policies: tuple[str, ...] = ()
    pod_identity: tuple[str, str] | None = None  # (namespace, service account) for EKS Pod Identity
    path: str = "/"
    tags: dict[str, str] = field(default_factory=dict)


def _statement(sid: str, actions: list[str], resources: list[str], condition: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}
    if condition:
        out["Condition"] = condition
    return out


def _document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": VERSION, "Statement": list(statements)}


def service_trust(service: str, account: str) -> dict[str, Any]:
    """Trust policy for an AWS service principal, limited to calls made on behalf of this account."""
    return _document({
        "Effect": "Allow", "Principal": {"Service": service}, "Action": ["sts:AssumeRole"],
        "Condition": {"StringEquals": {"aws:SourceAccount": account}},
    })


def pod_identity_trust(account: str) -> dict[str, Any]:
    """EKS Pod Identity: the agent service assumes the role and tags the session (namespace, service account)."""
    return _document({
        "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"}, "Action": ["sts:AssumeRole", "sts:TagSession"],
        "Condition": {"StringEquals": {"aws:SourceAccount": account}},
    })


def ec2_trust() -> dict[str, Any]:
    return _document({"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": ["sts:AssumeRole"]})


def lambda_policy(settings: Settings, names: DeployNames, arns: Arns) -> dict[str, Any]:
    base, stack = names.base, settings.stack
    table = arns.table(base.table)
    return _document(
        # tasks: submit; results: cancel publishes the `cancelled` notification
        _statement("PublishTasksAndCancellations", ["sns:Publish"], [arns.sns(base.tasks_topic), arns.sns(base.results_topic)]),
        _statement("TaskRecords", ["dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
                                   "dynamodb:Query"], [table, f"{table}/index/*"]),
        _statement("PresignOutputs", ["s3:GetObject"], [arns.objects(base.bucket, stack.output_prefix)]),
        _statement("OwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                   [arns.of("logs", f"log-group:{names.log_group}:*")]),
    )


def input_object_arns(settings: Settings, arns: Arns) -> list[str]:
    """Where s3:// input images may come from: the stack's own bucket and `stack.input_buckets` (bare names), whole."""
    return [arns.objects(b) for b in dict.fromkeys((settings.stack.bucket_name, *settings.stack.input_buckets))]


def agent_policy(settings: Settings, runtime: RuntimeSettings, names: DeployNames, arns: Arns) -> dict[str, Any]:
    base, stack = names.base, settings.stack
    work = [arns.sqs(base.queue(runtime.name)), arns.sqs(base.high_queue(runtime.name))]
    dlq = arns.sqs(base.dlq(runtime.name))
    # input images (the stack's bucket and the allow-listed ones) and named workflows (the stack's bucket)
    reads = input_object_arns(settings, arns)
    return _document(
        _statement("ConsumeOwnQueues", ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                                        "sqs:GetQueueAttributes"], work),
        _statement("ParkInOwnDlq", ["sqs:SendMessage", "sqs:GetQueueAttributes"], [dlq]),
        # per-task prefixes live under the output prefix; DeleteObject: a cancel that wins discards the images
        _statement("WriteOutputs", ["s3:PutObject", "s3:DeleteObject"], [arns.objects(base.bucket, stack.output_prefix)]),
        _statement("ReadInputs", ["s3:GetObject"], reads),
        _statement("PublishResults", ["sns:Publish"], [arns.sns(base.results_topic)]),
        _statement("MoveTaskRecords", ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:PutItem"],
                   [arns.table(base.table)]),
    )


def callback_policy(settings: Settings, names: DeployNames, arns: Arns) -> dict[str, Any]:
    """The callback dispatcher: consume the callbacks queue, park given-up deliveries in its DLQ, note the outcome."""
    base = names.base
    return _document(
        _statement("ConsumeCallbacks", ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                                        "sqs:GetQueueAttributes"], [arns.sqs(base.callbacks_queue)]),
        _statement("ParkInCallbacksDlq", ["sqs:SendMessage"], [arns.sqs(base.callbacks_dlq)]),
        _statement("NoteDelivery", ["dynamodb:GetItem", "dynamodb:UpdateItem"], [arns.table(base.table)]),
        _statement("OwnLogs", ["logs:CreateLogStream", "logs:PutLogEvents"],
                   [arns.of("logs", f"log-group:{names.callbacks_log_group}:*")]),
    )


def keda_policy(settings: Settings, names: DeployNames, arns: Arns) -> dict[str, Any]:
    queues = [arns.sqs(q) for rt in settings.runtimes for q in (names.base.queue(rt.name), names.base.high_queue(rt.name))]
    return _document(_statement("ReadQueueDepth", ["sqs:GetQueueAttributes"], queues))


def mountpoint_policy(settings: Settings, names: DeployNames, arns: Arns) -> dict[str, Any]:
    prefix = settings.stack.model_prefix
    return _document(
        _statement("ListModelPrefix", ["s3:ListBucket"], [arns.bucket(names.base.bucket)],
                   {"StringLike": {"s3:prefix": [f"{prefix}/", f"{prefix}/*"]}}),
        _statement("ReadModels", ["s3:GetObject"], [arns.objects(names.base.bucket, prefix)]),
    )


def karpenter_policy(names: DeployNames, arns: Arns) -> dict[str, Any]:
    """Karpenter v1's controller policy (its getting-started CloudFormation), scoped to this cluster's tags."""
    cluster = names.cluster

    def ec2(resource: str) -> str:
        return arns.of("ec2", resource)

    owned = {f"aws:RequestTag/kubernetes.io/cluster/{cluster}": "owned", "aws:RequestTag/eks:eks-cluster-name": cluster}
    launched = [ec2(f"{r}/*") for r in ("fleet", "instance", "volume", "network-interface", "launch-template",
                                         "spot-instances-request")]
    profile = arns.of("iam", "instance-profile/*", region=False)
    profile_tags = {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned",
                    "aws:ResourceTag/topology.kubernetes.io/region": arns.region}
    return _document(
        _statement("LaunchFromSharedResources", ["ec2:RunInstances", "ec2:CreateFleet"],
                   [arns.of("ec2", f"{r}/*", account=False) for r in ("image", "snapshot")]
                   + [ec2(f"{r}/*") for r in ("security-group", "subnet", "capacity-reservation")]),
        _statement("LaunchFromOwnTemplates", ["ec2:RunInstances", "ec2:CreateFleet"], [ec2("launch-template/*")],
                   {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned"},
                    "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}),
        _statement("LaunchTagged", ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"], launched,
                   {"StringEquals": owned, "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}),
        _statement("TagOnLaunch", ["ec2:CreateTags"], launched,
                   {"StringEquals": {**owned, "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"]},
                    "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}),
        _statement("TagOwnInstances", ["ec2:CreateTags"], [ec2("instance/*")],
                   {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned"},
                    "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
                    "ForAllValues:StringEquals": {"aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name"]}}),
        _statement("DeleteOwn", ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
                   [ec2("instance/*"), ec2("launch-template/*")],
                   {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned"},
                    "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}),
        _statement("RegionalReads", sorted(a for a in REQUIRES_WILDCARD_RESOURCE if a.startswith("ec2:")), ["*"],
                   {"StringEquals": {"aws:RequestedRegion": arns.region}}),
        _statement("Prices", ["pricing:GetProducts"], ["*"]),
        _statement("AmiParameters", ["ssm:GetParameter"], [arns.of("ssm", "parameter/aws/service/*", account=False)]),
        _statement("InterruptionQueue", ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"],
                   [arns.sqs(names.interruption_queue)]),
        _statement("PassNodeRole", ["iam:PassRole"], [arns.role("/", names.node_role)],
                   {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}),
        _statement("OwnInstanceProfiles", ["iam:CreateInstanceProfile", "iam:TagInstanceProfile",
                                           "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile",
                                           "iam:DeleteInstanceProfile"], [profile],
                   {"StringEquals": profile_tags}),
        _statement("ReadInstanceProfiles", ["iam:GetInstanceProfile"], [profile]),
        _statement("FindApiServer", ["eks:DescribeCluster"], [arns.of("eks", f"cluster/{cluster}")]),
    )


def role_specs(settings: Settings, names: DeployNames, arns: Arns) -> list[RoleSpec]:
    """Every role the stack needs, serverless layer first."""
    pod = pod_identity_trust(arns.account)
    specs = [RoleSpec(names.lambda_role, "lambda", "sdlab API function", service_trust("lambda.amazonaws.com", arns.account),
                      lambda_policy(settings, names, arns)),
             RoleSpec(names.callbacks_role, "callbacks", "sdlab callback dispatcher function",
                      service_trust("lambda.amazonaws.com", arns.account), callback_policy(settings, names, arns))]
    for rt in settings.runtimes:  # the ServiceAccount is the one the manifests give the runtime's pods
        specs.append(RoleSpec(names.agent_role(rt.name), f"agent:{rt.name}", f"sdlab queue agent of {rt.name}", pod,
                              agent_policy(settings, rt, names, arns),
                              pod_identity=(WORKLOAD_NAMESPACE, object_name(names.stack, rt.name))))
    specs += [
        RoleSpec(names.keda_role, "keda", "KEDA operator: SQS queue depth", pod, keda_policy(settings, names, arns),
                 pod_identity=(KEDA_NAMESPACE, KEDA_SERVICE_ACCOUNT)),
        RoleSpec(names.mountpoint_role, "mountpoint", "Mountpoint for S3 CSI driver: read models", pod,
                 mountpoint_policy(settings, names, arns), pod_identity=(MOUNTPOINT_NAMESPACE, MOUNTPOINT_SERVICE_ACCOUNT)),
        RoleSpec(names.karpenter_role, "karpenter", "Karpenter controller", pod, karpenter_policy(names, arns),
                 pod_identity=(KARPENTER_NAMESPACE, KARPENTER_SERVICE_ACCOUNT)),
        RoleSpec(names.node_role, "node", "sdlab GPU nodes (Karpenter)", ec2_trust(), None,
                 tuple(arns.managed_policy(p) for p in NODE_MANAGED_POLICIES)),
    ]
    # The node role stays at "/": EKS access entries and instance profiles expect plain role ARNs.
    return [RoleSpec(**{**s.__dict__, "tags": names.tags, "path": "/" if s.principal == "node" else names.role_path})
            for s in specs]


def ensure_role(iam: Any, spec: RoleSpec) -> str:
    """Create or converge one role (trust, the one inline policy, managed policies, tags); returns its ARN."""
    trust = json.dumps(spec.trust, sort_keys=True)
    tags = [{"Key": k, "Value": v} for k, v in spec.tags.items()]
    try:
        arn = iam.create_role(RoleName=spec.name, Path=spec.path, AssumeRolePolicyDocument=trust,
                              Description=spec.description, Tags=tags)["Role"]["Arn"]
        log.info("created role %s", spec.name)
    except ClientError as err:
        if err.response["Error"]["Code"] != "EntityAlreadyExists":
            raise ProvisionError(f"role {spec.name}: {err}; check iam:CreateRole permission of the deploying identity") from err
        role = iam.get_role(RoleName=spec.name)["Role"]
        if role["Path"] != spec.path:
            raise ProvisionError(f"role {spec.name} exists outside {spec.path}; it belongs to something else: "
                                 "rename the stack") from None
        arn = role["Arn"]
        iam.update_assume_role_policy(RoleName=spec.name, PolicyDocument=trust)
        iam.tag_role(RoleName=spec.name, Tags=tags)
    if spec.policy is not None:
        iam.put_role_policy(RoleName=spec.name, PolicyName=INLINE_POLICY, PolicyDocument=json.dumps(spec.policy, sort_keys=True))
    attached = {p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=spec.name)["AttachedPolicies"]}
    for policy_arn in spec.managed_policies:
        if policy_arn not in attached:
            iam.attach_role_policy(RoleName=spec.name, PolicyArn=policy_arn)
    return str(arn)


def delete_role(iam: Any, name: str) -> bool:
    """Detach and delete a role and its inline policies; False when it does not exist."""
    try:
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=policy)
        for att in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=name, PolicyArn=att["PolicyArn"])
        for profile in iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]:
            iam.remove_role_from_instance_profile(InstanceProfileName=profile["InstanceProfileName"], RoleName=name)
        iam.delete_role(RoleName=name)
        return True
    except ClientError as err:
        if err.response["Error"]["Code"] == "NoSuchEntity":
            return False
        raise
