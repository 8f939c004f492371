"""A runtime's pods: Deployment (runtime + queue agent), ServiceAccount, PodDisruptionBudget, model volume.

Container layout: the queue agent is the pod's main container and the SD runtime is a *native sidecar*
(`initContainers` with `restartPolicy: Always`). Kubernetes starts sidecars first and waits for their startup
probe before starting the main containers, and on termination stops the main containers first and sidecars last.
That is the order an async worker needs: the agent takes no message before the runtime has loaded its model, and on
SIGTERM (scale-in, Spot interruption, drain) the agent stops receiving and finishes its task while the runtime is
still serving it; only then does the runtime get SIGTERM. The upstream guidance starts both at once and signals
both at once, so in-flight generations fail on every scale-in.
"""

from __future__ import annotations

import copy
from typing import Any

from sdlab.aws import AwsTarget
from sdlab.config import RuntimeSettings, Settings
from sdlab.k8s.context import (
    AGENT_HEALTH_PORT,
    GPU_RESOURCE,
    RUNTIME_SPECS,
    RenderContext,
    grace_seconds,
    labels,
    object_name,
    selector_labels,
)
from sdlab.wiring import Endpoints, agent_environment, runtime_arguments

MODEL_VOLUME = "models"
MODEL_STORAGE = "1Ti"  # required by the API, ignored by the Mountpoint CSI driver
# Sized for the smallest GPU nodes (g4dn/g5/g6 .xlarge: 4 vCPU, 16 GiB) after system daemons.
RUNTIME_RESOURCES = {"requests": {"cpu": "2", "memory": "8Gi", GPU_RESOURCE: 1}, "limits": {"memory": "14Gi", GPU_RESOURCE: 1}}
AGENT_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


def models_name(stack: str, runtime: str) -> str:
    """Name of the runtime's model PersistentVolume and PersistentVolumeClaim."""
    return object_name(stack, f"{runtime}-models")


def _meta(name: str, namespace: str | None, lbls: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = lbls
    return meta


def service_account(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> dict[str, Any]:
    """The pods' identity; an EKS Pod Identity association (namespace + this name -> IAM role) grants AWS access."""
    stack = settings.stack.name
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(object_name(stack, runtime.name), ctx.namespace, labels(stack, "identity", runtime.name)),
        # Pod Identity injects its own projected token; the pods never call the Kubernetes API.
        "automountServiceAccountToken": False,
    }


def model_volume(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> list[dict[str, Any]]:
    """Static PersistentVolume + PersistentVolumeClaim: the bucket's model prefix through Mountpoint for S3, read-only."""
    stack = settings.stack.name
    name = models_name(stack, runtime.name)
    lbls = labels(stack, "storage", runtime.name)
    prefix = ctx.model_prefix or settings.stack.model_prefix
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": _meta(name, None, lbls),
        "spec": {
            "capacity": {"storage": MODEL_STORAGE},
            "accessModes": ["ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",  # static provisioning: no StorageClass may bind it
            "claimRef": {"namespace": ctx.namespace, "name": name},  # reserved for this claim only
            "mountOptions": [
                "read-only",  # a runtime can never delete or overwrite a model
                "allow-other",  # runtime images run as users other than Mountpoint's
                f"prefix {prefix}/",  # only the model prefix, never outputs or other data
                f"region {ctx.region or settings.stack.region}",
            ],
            "csi": {
                "driver": "s3.csi.aws.com",
                "volumeHandle": name,  # must be unique in the cluster
                "readOnly": True,
                "volumeAttributes": {"bucketName": ctx.bucket or settings.stack.bucket_name},
            },
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(name, ctx.namespace, lbls),
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "volumeName": name,
            "resources": {"requests": {"storage": MODEL_STORAGE}},
        },
    }
    return [pv, pvc]


def _agent_env(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> list[dict[str, str]]:
    spec = RUNTIME_SPECS[runtime.type]
    endpoints = Endpoints(
        queue_url=ctx.queue_urls[runtime.name], high_queue_url=ctx.high_queue_urls.get(runtime.name),
        dlq_url=ctx.dlq_urls.get(runtime.name), bucket=ctx.bucket or settings.stack.bucket_name,
        task_table=ctx.task_table, results_topic_arn=ctx.results_topic_arn)
    env = agent_environment(settings, runtime, endpoints, AwsTarget(ctx.region or settings.stack.region),
                            runtime_url=f"http://127.0.0.1:{spec.port}", health_port=AGENT_HEALTH_PORT,
                            health_host="0.0.0.0", log_level=ctx.log_level, pod_grace_seconds=ctx.grace_seconds)
    return [{"name": k, "value": v} for k, v in env.items()]


def _http_probe(path: str, port: str, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _runtime_container(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> dict[str, Any]:
    spec = RUNTIME_SPECS[runtime.type]
    container: dict[str, Any] = {
        "name": "runtime",
        "image": ctx.runtime_images[runtime.type],
        "restartPolicy": "Always",  # native sidecar: started before, stopped after the agent
    }
    if spec.ours:
        container["args"] = runtime_arguments(runtime, models_dir=spec.model_mount_path, host="0.0.0.0", port=spec.port)
    return container | {
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "resources": copy.deepcopy(RUNTIME_RESOURCES),
        # Loading a model from S3 onto the GPU can take minutes: allow 10 min before the first success.
        "startupProbe": _http_probe(spec.health_path, "http", period=5, failures=120),
        "readinessProbe": _http_probe(spec.health_path, "http", period=10, failures=3),
        # Lenient: a runtime busy generating may answer slowly; restart only after ~3 min of silence.
        "livenessProbe": _http_probe(spec.health_path, "http", period=30, failures=6, timeout=10),
        "volumeMounts": [{"name": MODEL_VOLUME, "mountPath": spec.model_mount_path, "readOnly": True}],
    }


def _agent_container(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> dict[str, Any]:
    return {
        "name": "agent",
        "image": ctx.agent_image,
        "ports": [{"name": "health", "containerPort": AGENT_HEALTH_PORT, "protocol": "TCP"}],
        "env": _agent_env(settings, runtime, ctx),
        "resources": copy.deepcopy(AGENT_RESOURCES),
        "startupProbe": _http_probe("/healthz", "health", period=2, failures=30),
        "readinessProbe": _http_probe("/readyz", "health", period=10, failures=3),
        "livenessProbe": _http_probe("/healthz", "health", period=20, failures=3),
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def deployment(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> dict[str, Any]:
    """The runtime's Deployment; KEDA owns its replica count, so `replicas` is deliberately absent."""
    stack = settings.stack.name
    name = object_name(stack, runtime.name)
    pod_labels = labels(stack, "worker", runtime.name)
    grace = grace_seconds(runtime, ctx)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, ctx.namespace, labels(stack, "worker", runtime.name)),
        "spec": {
            "selector": {"matchLabels": selector_labels(stack, runtime.name)},
            "revisionHistoryLimit": 3,
            # Never take a GPU worker down before its replacement is up; a rollout needs one spare GPU.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        # A pod with a task in flight must not be moved for cost or drift; see docs/kubernetes.md.
                        "karpenter.sh/do-not-disrupt": "true",
                        "kubectl.kubernetes.io/default-container": "agent",
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": grace,
                    "nodeSelector": {"karpenter.sh/nodepool": name, "kubernetes.io/arch": "amd64"},
                    "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
                    "initContainers": [_runtime_container(settings, runtime, ctx)],
                    "containers": [_agent_container(settings, runtime, ctx)],
                    "volumes": [
                        {
                            "name": MODEL_VOLUME,
                            "persistentVolumeClaim": {"claimName": models_name(stack, runtime.name), "readOnly": True},
                        }
                    ],
                },
            },
        },
    }


def pod_disruption_budget(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> dict[str, Any]:
    """At most one of the runtime's pods evicted at a time (node drains for drift, expiry, upgrades)."""
    stack = settings.stack.name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(object_name(stack, runtime.name), ctx.namespace, labels(stack, "worker", runtime.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(stack, runtime.name)},
            # A pod that never became ready holds no task; let drains evict it.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
