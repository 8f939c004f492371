"""Karpenter objects: the runtime's GPU NodePool (`karpenter.sh/v1`) and its EC2NodeClass (`karpenter.k8s.aws/v1`)."""

from __future__ import annotations

from typing import Any

from sdlab.config import RuntimeSettings, Settings
from sdlab.k8s.context import (
    GPU_RESOURCE,
    RUNTIME_LABEL,
    STACK_LABEL,
    RenderContext,
    grace_seconds,
    labels,
    object_name,
)

OS_VOLUME_GIB = 4  # Bottlerocket's root volume holds only the OS
NODE_DRAIN_MARGIN_SECONDS = 300


def node_pool(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> dict[str, Any]:
    """GPU nodes for one runtime: its instance types and capacity types, tainted so only GPU pods land there."""
    stack = settings.stack.name
    name = object_name(stack, runtime.name)
    nodes = runtime.nodes
    # Karpenter stops waiting for do-not-disrupt pods and PDBs this long after it starts draining a node
    # (expiry, interruption); longer than the pods' own grace, so a task in flight can finish first.
    drain_seconds = grace_seconds(runtime, ctx) + NODE_DRAIN_MARGIN_SECONDS
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": name, "labels": labels(stack, "nodes", runtime.name)},
        "spec": {
            "template": {
                "metadata": {"labels": {STACK_LABEL: stack, RUNTIME_LABEL: runtime.name}},
                "spec": {
                    "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": name},
                    "requirements": [
                        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(nodes.instance_types)},
                        # With both allowed, Karpenter tries Spot first and falls back to On-Demand.
                        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": list(nodes.capacity_types)},
                        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                    ],
                    "taints": [{"key": GPU_RESOURCE, "effect": "NoSchedule"}],
                    "expireAfter": ctx.expire_after,
                    "terminationGracePeriod": f"{drain_seconds}s",
                },
            },
            "limits": {GPU_RESOURCE: nodes.gpu_limit},  # a cost ceiling: no node beyond this many GPUs
            "disruption": {
                # Only empty nodes are consolidated: a GPU node running a task is never replaced to save cost.
                "consolidationPolicy": "WhenEmpty",
                "consolidateAfter": ctx.consolidate_after,
            },
        },
    }


def _block_devices(ctx: RenderContext) -> list[dict[str, Any]]:
    data: dict[str, Any] = {
        "volumeSize": f"{ctx.data_volume_gib}Gi",
        "volumeType": "gp3",
        "iops": 3000,
        "throughput": 125,
        "encrypted": True,
        "deleteOnTermination": True,
    }
    if ctx.snapshot_id:
        data["snapshotID"] = ctx.snapshot_id  # container images already pulled: no multi-GB pull on a cold node
    os_volume = {"volumeSize": f"{OS_VOLUME_GIB}Gi", "volumeType": "gp3", "encrypted": True, "deleteOnTermination": True}
    return [
        {"deviceName": "/dev/xvda", "ebs": os_volume},
        {"deviceName": "/dev/xvdb", "ebs": data},  # Bottlerocket's data volume: images, logs, ephemeral storage
    ]


def ec2_node_class(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> dict[str, Any]:
    """How the runtime's GPU nodes are launched: pinned Bottlerocket (NVIDIA variant picked by Karpenter), IMDSv2."""
    stack = settings.stack.name
    name = object_name(stack, runtime.name)
    discovery = {"karpenter.sh/discovery": ctx.cluster_name}
    spec: dict[str, Any] = {
        "amiSelectorTerms": [{"alias": f"bottlerocket@{ctx.bottlerocket_version}"}],
        "role": ctx.node_role_name,
        "subnetSelectorTerms": [{"tags": dict(discovery)}],
        "securityGroupSelectorTerms": [{"tags": dict(discovery)}],
        # IMDSv2 only; hop limit 2 lets containers that need instance metadata reach it through the pod network.
        "metadataOptions": {
            "httpEndpoint": "enabled",
            "httpProtocolIPv6": "disabled",
            "httpPutResponseHopLimit": 2,
            "httpTokens": "required",
        },
        "blockDeviceMappings": _block_devices(ctx),
        "tags": {STACK_LABEL: stack, RUNTIME_LABEL: runtime.name},
    }
    if not ctx.snapshot_id:
        # RAID0 moves kubelet and containerd onto the local NVMe disks (g4dn/g5/g6 have them): faster pulls and
        # scratch space. Not with a snapshot: the pre-pulled images live on the data volume and would be bypassed.
        spec["instanceStorePolicy"] = "RAID0"
    return {
        "apiVersion": "karpenter.k8s.aws/v1",
        "kind": "EC2NodeClass",
        "metadata": {"name": name, "labels": labels(stack, "nodes", runtime.name)},
        "spec": spec,
    }
