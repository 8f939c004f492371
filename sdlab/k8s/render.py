"""Render the Kubernetes objects of a stack from `sdlab.yaml` and a RenderContext.

Same input, same output: objects are plain dicts built in a fixed order, with no timestamps or random names, so
rendering twice gives byte-identical files (see files.write_manifests).

Per runtime, in apply order: ServiceAccount, PersistentVolume, PersistentVolumeClaim, EC2NodeClass, NodePool,
Deployment, PodDisruptionBudget, TriggerAuthentication, ScaledObject. The stack adds its Namespace first.
"""

from __future__ import annotations

from typing import Any

from sdlab.config import RuntimeSettings, Settings
from sdlab.errors import ConfigError
from sdlab.k8s.context import RenderContext, check_context, labels
from sdlab.k8s.nodes import ec2_node_class, node_pool
from sdlab.k8s.scaling import scaled_object, trigger_authentication
from sdlab.k8s.workload import deployment, model_volume, pod_disruption_budget, service_account

__all__ = ["RenderContext", "render_namespace", "render_runtime", "render_stack"]


def render_namespace(settings: Settings, ctx: RenderContext) -> dict[str, Any]:
    """The namespace every runtime's namespaced objects live in."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ctx.namespace, "labels": labels(settings.stack.name, "namespace")},
    }


def render_runtime(settings: Settings, runtime: RuntimeSettings, ctx: RenderContext) -> list[dict[str, Any]]:
    """Every object one runtime needs on EKS, in apply order."""
    if runtime not in settings.runtimes:
        raise ConfigError([f"runtime {runtime.name!r} is not in this config; configured: {[r.name for r in settings.runtimes]}"])
    check_context(settings, ctx, only=runtime)
    return [
        service_account(settings, runtime, ctx),
        *model_volume(settings, runtime, ctx),
        ec2_node_class(settings, runtime, ctx),
        node_pool(settings, runtime, ctx),
        deployment(settings, runtime, ctx),
        pod_disruption_budget(settings, runtime, ctx),
        trigger_authentication(settings, runtime, ctx),
        scaled_object(settings, runtime, ctx),
    ]


def render_stack(settings: Settings, ctx: RenderContext) -> list[dict[str, Any]]:
    """The Namespace, then each runtime's objects in config order."""
    check_context(settings, ctx)
    objects = [render_namespace(settings, ctx)]
    for runtime in settings.runtimes:
        objects.extend(render_runtime(settings, runtime, ctx))
    return objects
