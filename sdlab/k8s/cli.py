"""`sdlab k8s render`: the manifests for the configured stack, one file per object, validated before writing."""

from __future__ import annotations

import argparse

from sdlab import __version__
from sdlab.config import Settings, load_config
from sdlab.errors import ConfigError
from sdlab.k8s.files import write_manifests
from sdlab.k8s.render import RenderContext, render_stack
from sdlab.k8s.validate import crds_dir, validate_all
from sdlab.provision import Names

# AWS's documentation account id: a visible placeholder until `--account-id` gives the real one.
PLACEHOLDER_ACCOUNT = "111122223333"


def context_for(settings: Settings, *, account_id: str, registry: str, cluster: str,
                images: dict[str, str] | None = None) -> RenderContext:
    """A render context whose AWS names follow `sdlab.provision.Names` (what provisioning creates)."""
    names = Names.of(settings)
    region = settings.stack.region
    sqs = f"https://sqs.{region}.amazonaws.com/{account_id}"
    runtime_image = f"{registry}/sdlab-runtime:{__version__}"
    return RenderContext(
        cluster_name=cluster,
        agent_image=f"{registry}/sdlab-agent:{__version__}",
        runtime_images={"diffusers": runtime_image, "sdwebui": f"{registry}/sdwebui:latest",
                        "comfyui": f"{registry}/comfyui:latest", **(images or {})},
        queue_urls={rt.name: f"{sqs}/{names.queue(rt.name)}" for rt in settings.runtimes},
        high_queue_urls={rt.name: f"{sqs}/{names.high_queue(rt.name)}" for rt in settings.runtimes},
        dlq_urls={rt.name: f"{sqs}/{names.dlq(rt.name)}" for rt in settings.runtimes},
        results_topic_arn=f"arn:aws:sns:{region}:{account_id}:{names.results_topic}",
        task_table=names.table,
        node_role_name=f"{settings.stack.name}-gpu-node",
    )


def render_command(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    account = args.account_id or PLACEHOLDER_ACCOUNT
    registry = args.registry or f"{account}.dkr.ecr.{settings.stack.region}.amazonaws.com"
    images = dict(item.split("=", 1) for item in args.image or [])
    ctx = context_for(settings, account_id=account, registry=registry, cluster=args.cluster or settings.stack.name,
                      images=images)
    objects = render_stack(settings, ctx)
    problems = validate_all(objects)
    if problems:
        raise ConfigError(problems, "rendered manifests")
    paths = write_manifests(objects, args.out)
    checked = "the Kubernetes schemas and the KEDA/Karpenter CRDs" if crds_dir().is_dir() else (
        f"the Kubernetes schemas; KEDA/Karpenter CRDs NOT checked, {crds_dir()} is absent")
    print(f"wrote {len(paths)} manifest(s) to {args.out} (all valid against {checked})")
    if account == PLACEHOLDER_ACCOUNT:
        print(f"note: account id {PLACEHOLDER_ACCOUNT} is a placeholder; pass --account-id for a real deployment")
    return 0
