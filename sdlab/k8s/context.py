"""What rendering needs besides `sdlab.yaml`: cluster facts and provisioned resource names, plus object naming.

`RenderContext` carries values that only exist once AWS resources are provisioned (queue URLs, topic ARN, node role)
or that are deployment choices (images, pinned Bottlerocket version). `check_context` lists every missing or
inconsistent value at once, as `ConfigError` does for the config file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sdlab.config import RuntimeSettings, Settings
from sdlab.errors import ConfigError
from sdlab.wiring import EXIT_MARGIN_SECONDS, timing

PART_OF = "sdlab"
STACK_LABEL = "sdlab/stack"
RUNTIME_LABEL = "sdlab/runtime"
GPU_RESOURCE = "nvidia.com/gpu"
AGENT_HEALTH_PORT = 8081
DEFAULT_BOTTLEROCKET_VERSION = "v1.63.0"  # pinned: `@latest` drifts (replaces) every node on each AMI release

_NAME_MAX = 63  # NodePool names become node label values (`karpenter.sh/nodepool`), which are limited to 63
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class RuntimeSpec:
    """How to reach one runtime type inside the pod: HTTP port, health endpoint, where the model bucket is mounted."""

    port: int
    health_path: str
    model_mount_path: str
    ours: bool = False  # the project's server: its arguments come from sdlab.wiring.runtime_arguments


# sdwebui/comfyui: the upstream images (their own entrypoints) listen on 8080 and read models under
# /opt/ml/code/models; `/sdapi/v1/memory` and `/system_stats` are the endpoints the upstream chart probes.
# diffusers: the project's server (`python -m sdlab.runtime`); /healthz answers 503 until the model is loaded.
# Probes come from the kubelet to the pod IP, so every runtime must listen on 0.0.0.0, not loopback.
RUNTIME_SPECS: Mapping[str, RuntimeSpec] = {
    "sdwebui": RuntimeSpec(8080, "/sdapi/v1/memory", "/opt/ml/code/models"),
    "comfyui": RuntimeSpec(8080, "/system_stats", "/opt/ml/code/models"),
    "diffusers": RuntimeSpec(7860, "/healthz", "/models", ours=True),
}


@dataclass(frozen=True)
class RenderContext:
    """Cluster facts and provisioned names that `sdlab.yaml` does not hold.

    Optional values fall back to the config file's `stack:` section (bucket, prefixes, region).
    `grace_seconds` overrides the pod's terminationGracePeriodSeconds, which by default follows from the queue's
    visibility timeout (sdlab.wiring.timing); the agent's own grace moves with it, so it must stay above the
    visibility timeout plus the agent's exit margin.
    """

    cluster_name: str
    agent_image: str
    runtime_images: Mapping[str, str]  # runtime type (sdwebui/comfyui/diffusers) -> image
    queue_urls: Mapping[str, str]  # runtime name -> its (normal priority) queue URL
    results_topic_arn: str
    task_table: str
    node_role_name: str  # IAM role of the GPU nodes (Karpenter creates the instance profile)
    high_queue_urls: Mapping[str, str] = field(default_factory=dict)  # runtime name -> high-priority queue URL
    dlq_urls: Mapping[str, str] = field(default_factory=dict)  # runtime name -> its dead-letter queue URL
    namespace: str = "sdlab"
    bucket: str | None = None
    model_prefix: str | None = None
    output_prefix: str | None = None
    region: str | None = None
    snapshot_id: str | None = None  # EBS snapshot of a Bottlerocket data volume with pre-pulled images
    grace_seconds: int | None = None
    bottlerocket_version: str = DEFAULT_BOTTLEROCKET_VERSION
    keda_role_arn: str | None = None  # role KEDA assumes to read queue depth; None: KEDA operator's own identity
    data_volume_gib: int = 100
    consolidate_after: str = "60s"  # how long an empty GPU node waits before Karpenter removes it
    expire_after: str = "720h"  # nodes are replaced after this age (fresh AMI, no long-lived drift)
    log_level: str = "INFO"


def object_name(stack: str, runtime: str) -> str:
    """`<stack>-<runtime>`, shortened with a stable hash suffix when longer than 63 characters."""
    base = f"{stack}-{runtime}"
    if len(base) <= _NAME_MAX:
        return base
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    return f"{base[: _NAME_MAX - 9].rstrip('-')}-{digest}"


def labels(stack: str, component: str, runtime: str | None = None) -> dict[str, str]:
    """Recommended labels plus the two sdlab keys that select a runtime's pods."""
    out = {
        "app.kubernetes.io/name": runtime or stack,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": PART_OF,
        STACK_LABEL: stack,
    }
    if runtime:
        out[RUNTIME_LABEL] = runtime
    return out


def selector_labels(stack: str, runtime: str) -> dict[str, str]:
    """The labels a runtime's Deployment, PDB select on; never change them (Deployment selectors are immutable)."""
    return {STACK_LABEL: stack, RUNTIME_LABEL: runtime}


def grace_seconds(runtime: RuntimeSettings, ctx: RenderContext) -> int:
    """terminationGracePeriodSeconds: the agent's grace (which covers the longest task) plus its exit margin."""
    return timing(runtime, ctx.grace_seconds).pod_grace_seconds


def check_context(settings: Settings, ctx: RenderContext, only: RuntimeSettings | None = None) -> None:
    """Raise ConfigError listing every value the context lacks for the config's runtimes (or just `only`)."""
    problems: list[str] = []
    for key in ("cluster_name", "agent_image", "results_topic_arn", "task_table", "node_role_name"):
        if not getattr(ctx, key):
            problems.append(f"{key}: required; set it from the provisioned stack")
    if not _DNS_LABEL_RE.match(ctx.namespace or ""):
        problems.append(f"namespace: {ctx.namespace!r} is not a DNS label; use lowercase letters, digits and '-'")
    names = {rt.name for rt in settings.runtimes}
    for rt in [only] if only else settings.runtimes:
        if not ctx.queue_urls.get(rt.name):
            problems.append(f"queue_urls[{rt.name!r}]: missing; pass the URL of runtime {rt.name!r}'s queue")
        if not ctx.runtime_images.get(rt.type):
            problems.append(f"runtime_images[{rt.type!r}]: missing; runtime {rt.name!r} needs an image for {rt.type}")
        least = rt.queue.visibility_timeout_seconds + EXIT_MARGIN_SECONDS
        if ctx.grace_seconds is not None and ctx.grace_seconds <= least:
            problems.append(
                f"grace_seconds: {ctx.grace_seconds} is not above runtime {rt.name!r}'s visibility timeout "
                f"({rt.queue.visibility_timeout_seconds} s, the longest task) plus the agent's exit margin "
                f"({EXIT_MARGIN_SECONDS} s); raise it above {least} or leave it unset"
            )
    for key in ("high_queue_urls", "dlq_urls", "queue_urls"):
        for name in sorted(set(getattr(ctx, key)) - names):
            problems.append(f"{key}[{name!r}]: no such runtime; configured: {sorted(names)}")
    if not re.fullmatch(r"v?\d+\.\d+\.\d+", ctx.bottlerocket_version):
        problems.append(f"bottlerocket_version: {ctx.bottlerocket_version!r} is not a pinned version such as 'v1.63.0'")
    if ctx.data_volume_gib < 20:
        problems.append(f"data_volume_gib: {ctx.data_volume_gib} is too small for GPU images; use 20 or more")
    if problems:
        raise ConfigError(problems, "render context")
