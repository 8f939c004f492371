"""KEDA objects: a ScaledObject on the runtime's SQS queue(s) and the TriggerAuthentication it uses.

KEDA's formula, per trigger: desired = ceil(messages / queueLength), where messages = visible + in flight
(`scaleOnInFlight: "true"`). From zero, the first replica starts only when messages > activationQueueLength.
With a high-priority queue as well, a `scalingModifiers` formula adds both queues' counts, so replicas follow the
total backlog, not the larger of the two.

Every trigger setting sits in `triggers[].metadata`, where the aws-sqs-queue scaler reads it; the upstream guidance
put `scaleOnInFlight` at `spec` level, where the API server silently drops it.
"""

from __future__ import annotations

from typing import Any

from sdlab.config import HpaRules, RuntimeSettings, ScalingSettings, Settings
from sdlab.k8s.context import RenderContext, labels, object_name
from sdlab.scaling import scale_down_rules, scale_up_rules


def trigger_authentication(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> dict[str, Any]:
    """How KEDA reads queue depth: pod identity provider `aws` (`aws-eks` is deprecated, removed in KEDA v3).

    Without `keda_role_arn`, KEDA uses the KEDA operator's own identity (an EKS Pod Identity association on
    keda/keda-operator with sqs:GetQueueAttributes); with it, KEDA assumes that role.
    """
    stack = settings.stack.name
    pod_identity: dict[str, str] = {"provider": "aws"}
    if ctx.keda_role_arn:
        pod_identity["roleArn"] = ctx.keda_role_arn
    else:
        pod_identity["identityOwner"] = "keda"
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {
            "name": object_name(stack, runtime.name),
            "namespace": ctx.namespace,
            "labels": labels(stack, "autoscaling", runtime.name),
        },
        "spec": {"podIdentity": pod_identity},
    }


def _sqs_trigger(name: str, queue_url: str, runtime: RuntimeSettings, region: str, auth: str) -> dict[str, Any]:
    scaling = runtime.scaling
    return {
        "type": "aws-sqs-queue",
        "name": name,
        "metadata": {  # all values are strings: the CRD types metadata as map[string]string
            "queueURL": queue_url,
            "queueLength": str(scaling.queue_length),
            "activationQueueLength": str(scaling.activation_queue_length),
            "scaleOnInFlight": "true" if scaling.scale_on_in_flight else "false",
            "awsRegion": region,
        },
        "authenticationRef": {"name": auth, "kind": "TriggerAuthentication"},
    }


def _rules(rules: HpaRules) -> dict[str, Any]:
    out: dict[str, Any] = {
        "stabilizationWindowSeconds": rules.stabilization_window_seconds,
        "policies": [{"type": p.type, "value": p.value, "periodSeconds": p.period_seconds} for p in rules.policies or ()],
    }
    if rules.select_policy != "Max":  # Max is the API's default
        out["selectPolicy"] = rules.select_policy
    return out


def hpa_behavior(scaling: ScalingSettings) -> dict[str, Any]:
    """`advanced.horizontalPodAutoscalerConfig.behavior` from `scaling.hpa` (the rules `sdlab.scaling` simulates).

    Scale-down keeps the highest recommendation of its window (default min(cooldown, 3600) s) and removes GPU workers
    gently (default 1 pod a minute), so a short lull between bursts does not stop (and later cold-start) a worker.
    Scale-up is rendered only when `scaling.hpa.scale_up` is set; otherwise Kubernetes' defaults apply.
    """
    behavior: dict[str, Any] = {"scaleDown": _rules(scale_down_rules(scaling))}
    if scaling.hpa.scale_up is not None:
        behavior["scaleUp"] = _rules(scale_up_rules(scaling))
    return behavior


def scaled_object(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> dict[str, Any]:
    """Scale the runtime's Deployment between min and max replicas (to zero by default) on queue depth."""
    stack = settings.stack.name
    name = object_name(stack, runtime.name)
    region = ctx.region or settings.stack.region
    scaling = runtime.scaling
    triggers = [_sqs_trigger("normal", ctx.queue_urls[runtime.name], runtime, region, name)]
    high_url = ctx.high_queue_urls.get(runtime.name)
    if high_url:
        triggers.insert(0, _sqs_trigger("high", high_url, runtime, region, name))
    advanced: dict[str, Any] = {"horizontalPodAutoscalerConfig": {"behavior": hpa_behavior(scaling)}}
    if high_url:
        advanced["scalingModifiers"] = {
            "formula": "high + normal",
            "target": str(scaling.queue_length),
            "activationTarget": str(scaling.activation_queue_length),
            "metricType": "AverageValue",
        }
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": ctx.namespace, "labels": labels(stack, "autoscaling", runtime.name)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "pollingInterval": scaling.polling_interval_seconds,
            "cooldownPeriod": scaling.cooldown_seconds,
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "advanced": advanced,
            "triggers": triggers,
        },
    }
