"""The cluster layer: the eksctl ClusterConfig, Helm values for KEDA, Karpenter and the Mountpoint for S3 CSI driver,
the commands that install them, and a look at what exists.

Identities use EKS Pod Identity (no OIDC provider, no service-account annotations): each association names a
namespace + ServiceAccount and one of the roles `sdlab.deploy.iam.role_specs` creates. Karpenter finds subnets and
security groups by the `karpenter.sh/discovery` tag that eksctl puts on the cluster's VPC resources.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from typing import Any

from botocore.exceptions import ClientError

from sdlab.config import Settings
from sdlab.deploy.iam import Arns, RoleSpec, role_specs
from sdlab.deploy.names import (
    KARPENTER_NAMESPACE,
    KEDA_NAMESPACE,
    KEDA_SERVICE_ACCOUNT,
    MOUNTPOINT_SERVICE_ACCOUNT,
    DeployNames,
)

log = logging.getLogger(__name__)
K8S_VERSION = "1.33"  # the version sdlab.k8s.validate checks the manifests against
KEDA_CHART_VERSION = "2.17.2"
KARPENTER_CHART_VERSION = "1.6.3"  # the version the upstream guidance pins
SYSTEM_INSTANCE_TYPE = "m7g.large"  # controllers only (KEDA, Karpenter, CoreDNS); arm64, the upstream's choice
INFRA_FILES = {
    "cluster": "infra/eksctl/cluster.yaml",
    "keda": "infra/helm/keda-values.yaml",
    "karpenter": "infra/helm/karpenter-values.yaml",
    "mountpoint": "infra/helm/mountpoint-s3-csi-values.yaml",
}
_SYSTEM_LABEL = {"sdlab/role": "system"}
_MOUNTPOINT_CONFIG = {"node": {"tolerateAllTaints": True}}  # its DaemonSet must run on the tainted GPU nodes


def _role_arn(arns: Arns, spec: RoleSpec) -> str:
    return arns.role(spec.path, spec.name)


def cluster_config(settings: Settings, names: DeployNames, arns: Arns, *, system_nodes: int = 2) -> dict[str, Any]:
    """eksctl's ClusterConfig (eksctl.io/v1alpha5) for the stack's cluster."""
    specs = {s.principal: s for s in role_specs(settings, names, arns)}
    associations = [
        {"namespace": s.pod_identity[0], "serviceAccountName": s.pod_identity[1], "roleARN": _role_arn(arns, s)}
        for s in specs.values() if s.pod_identity and s.principal != "mountpoint"
    ]
    mountpoint = specs["mountpoint"]
    return {
        "apiVersion": "eksctl.io/v1alpha5",
        "kind": "ClusterConfig",
        "metadata": {"name": names.cluster, "region": arns.region, "version": K8S_VERSION,
                     "tags": {**names.tags, "karpenter.sh/discovery": names.cluster}},
        "iam": {"withOIDC": False, "podIdentityAssociations": associations},
        "accessConfig": {"authenticationMode": "API", "accessEntries": [
            {"principalARN": _role_arn(arns, specs["node"]), "type": "EC2_LINUX"},  # Karpenter's GPU nodes join
        ]},
        "addons": [
            {"name": "vpc-cni"}, {"name": "coredns"}, {"name": "kube-proxy"},
            {"name": "eks-pod-identity-agent"},
            {"name": "aws-mountpoint-s3-csi-driver", "configurationValues": json.dumps(_MOUNTPOINT_CONFIG),
             "podIdentityAssociations": [{"serviceAccountName": MOUNTPOINT_SERVICE_ACCOUNT,
                                          "roleARN": _role_arn(arns, mountpoint)}]},
        ],
        "vpc": {"nat": {"gateway": "Single"}},  # one NAT gateway: the cheapest layout that gives private nodes egress
        "managedNodeGroups": [{
            "name": "system", "instanceType": SYSTEM_INSTANCE_TYPE, "amiFamily": "AmazonLinux2023",
            "minSize": system_nodes, "maxSize": system_nodes + 1, "desiredCapacity": system_nodes,
            "privateNetworking": True, "labels": dict(_SYSTEM_LABEL), "tags": dict(names.tags),
        }],
    }


def keda_values(names: DeployNames) -> dict[str, Any]:
    """KEDA chart values: the operator's ServiceAccount is the one the KEDA role's Pod Identity association names."""
    return {
        "serviceAccount": {"operator": {"create": True, "name": KEDA_SERVICE_ACCOUNT}},
        "podIdentity": {"aws": {"irsa": {"enabled": False}}},
        "nodeSelector": dict(_SYSTEM_LABEL),
        "resources": {"operator": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}},
    }


def karpenter_values(names: DeployNames) -> dict[str, Any]:
    return {
        "settings": {"clusterName": names.cluster, "interruptionQueue": names.interruption_queue},
        "serviceAccount": {"create": True, "name": "karpenter"},
        "nodeSelector": dict(_SYSTEM_LABEL),
        "controller": {"resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}},
    }


def mountpoint_values(names: DeployNames) -> dict[str, Any]:
    """For installing the driver with Helm instead of the EKS add-on (the ClusterConfig uses the add-on)."""
    return {"node": {**_MOUNTPOINT_CONFIG["node"], "serviceAccount": {"create": True, "name": MOUNTPOINT_SERVICE_ACCOUNT}}}


def install_commands(names: DeployNames) -> list[list[str]]:
    """Create the cluster, then install KEDA and Karpenter from their official charts with the rendered values."""
    return [
        ["eksctl", "create", "cluster", "-f", INFRA_FILES["cluster"]],
        ["helm", "upgrade", "--install", "keda", "keda", "--repo", "https://kedacore.github.io/charts", "--version",
         KEDA_CHART_VERSION, "--namespace", KEDA_NAMESPACE, "--create-namespace", "-f", INFRA_FILES["keda"], "--wait"],
        ["helm", "upgrade", "--install", "karpenter", "oci://public.ecr.aws/karpenter/karpenter", "--version",
         KARPENTER_CHART_VERSION, "--namespace", KARPENTER_NAMESPACE, "-f", INFRA_FILES["karpenter"], "--wait"],
    ]


def uninstall_commands(names: DeployNames) -> list[list[str]]:
    """After the manifests are deleted (so Karpenter has terminated its GPU nodes): the charts, then the cluster."""
    return [
        ["helm", "uninstall", "karpenter", "--namespace", KARPENTER_NAMESPACE, "--wait"],
        ["helm", "uninstall", "keda", "--namespace", KEDA_NAMESPACE, "--wait"],
        ["eksctl", "delete", "cluster", "-f", INFRA_FILES["cluster"], "--disable-nodegroup-eviction", "--wait"],
    ]


def run_or_print(commands: list[list[str]], *, run: bool | None = None, cwd: str | None = None) -> list[str]:
    """Run each command whose tool is installed (`run=None`) or print all of them; returns them as shell lines.

    Stops at the first command whose tool is missing: the later ones depend on it.
    """
    lines = [" ".join(c) for c in commands]
    for cmd, line in zip(commands, lines, strict=True):
        if run is False or (run is None and not shutil.which(cmd[0])):
            print("run:", line)
            continue
        log.info("running %s", line)
        subprocess.run(cmd, check=True, cwd=cwd)
    return lines


def cluster_status(eks: Any, cluster: str) -> dict[str, Any] | None:
    """The cluster's status, endpoint, version and node groups; None when it does not exist."""
    try:
        info = eks.describe_cluster(name=cluster)["cluster"]
    except ClientError as err:
        if err.response["Error"]["Code"] == "ResourceNotFoundException":
            return None
        raise
    groups = eks.list_nodegroups(clusterName=cluster).get("nodegroups", [])
    return {"name": cluster, "status": info.get("status"), "endpoint": info.get("endpoint"),
            "version": info.get("version"), "nodegroups": groups}
