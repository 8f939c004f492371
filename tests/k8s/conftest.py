"""Fixtures for the Kubernetes rendering tests: a two-runtime config, a render context, the CRD folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlab.config import Settings, parse_config
from sdlab.k8s.render import RenderContext, render_stack
from sdlab.k8s.validate import CRDS_DIR_ENV, crds_dir

CONFIG = {
    "version": 1,
    "stack": {"name": "sdlab", "region": "us-west-2", "bucket": "sdlab-test-data"},
    "runtimes": [
        {
            "name": "webui-a",
            "type": "sdwebui",
            "model": {"name": "tiny-a"},
            "queue": {"visibility_timeout_seconds": 300},
            "scaling": {"max_replicas": 6, "queue_length": 3, "activation_queue_length": 1, "cooldown_seconds": 240},
            "nodes": {"instance_types": ["g6.xlarge", "g5.xlarge"], "capacity_types": ["spot", "on-demand"]},
        },
        {
            "name": "diff-b",
            "type": "diffusers",
            "model": {"name": "tiny-b"},
            "scaling": {"scale_on_in_flight": False},
            "nodes": {"instance_types": ["g6e.xlarge"], "capacity_types": ["on-demand"], "gpu_limit": 2},
        },
    ],
}


@pytest.fixture
def settings() -> Settings:
    return parse_config(CONFIG, "test config")


@pytest.fixture
def make_ctx():
    """Factory: a complete RenderContext, with any field overridden."""

    def make(**overrides) -> RenderContext:
        values = dict(
            cluster_name="sdlab-eks",
            agent_image="123456789012.dkr.ecr.us-west-2.amazonaws.com/sdlab-agent:0.1.0",
            runtime_images={
                "sdwebui": "123456789012.dkr.ecr.us-west-2.amazonaws.com/sd-webui:1.10.1",
                "diffusers": "123456789012.dkr.ecr.us-west-2.amazonaws.com/sdlab-runtime:0.1.0",
            },
            queue_urls={
                "webui-a": "https://sqs.us-west-2.amazonaws.com/123456789012/sdlab-webui-a",
                "diff-b": "https://sqs.us-west-2.amazonaws.com/123456789012/sdlab-diff-b",
            },
            high_queue_urls={"webui-a": "https://sqs.us-west-2.amazonaws.com/123456789012/sdlab-webui-a-high"},
            dlq_urls={"webui-a": "https://sqs.us-west-2.amazonaws.com/123456789012/sdlab-webui-a-dlq"},
            results_topic_arn="arn:aws:sns:us-west-2:123456789012:sdlab-results",
            task_table="sdlab-tasks",
            node_role_name="sdlab-eks-gpu-node",
        )
        values.update(overrides)
        return RenderContext(**values)

    return make


@pytest.fixture
def objects(settings, make_ctx) -> list[dict]:
    return render_stack(settings, make_ctx())


@pytest.fixture
def crds() -> Path:
    """The upstream CRD folder; tests that need it skip, saying why, where it is absent."""
    folder = crds_dir()
    if not folder.is_dir() or not any(folder.glob("*.yaml")):
        pytest.skip(f"CRD folder {folder} is absent: KEDA/Karpenter schema checks NOT run (set ${CRDS_DIR_ENV})")
    return folder


def find(objects: list[dict], kind: str, runtime: str | None = None) -> dict:
    """The one object of a kind (of a runtime, when given)."""
    found = [
        o for o in objects if o["kind"] == kind and (runtime is None or o["metadata"]["labels"].get("sdlab/runtime") == runtime)
    ]
    assert len(found) == 1, f"expected one {kind} for {runtime}, found {len(found)}"
    return found[0]
