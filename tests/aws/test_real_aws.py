"""Opt-in: the serverless layer on a real AWS account, a task through it where a cluster serves the runtime, and
teardown in a `finally`. Costs cents (requests) unless a cluster runs. Run:

    SDLAB_AWS_TESTS=1 AWS_PROFILE=... .venv/bin/python -m pytest -m aws tests/aws -q

Needs credentials allowed to manage IAM, Lambda, API Gateway, SNS, SQS, DynamoDB, S3, ECR, EventBridge (see
docs/aws.md). The stack gets a unique name, so it never touches another deployment.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

pytestmark = [
    pytest.mark.aws,
    pytest.mark.skipif(os.environ.get("SDLAB_AWS_TESTS") != "1",
                       reason="real AWS tier: set SDLAB_AWS_TESTS=1 (and credentials) and run with -m aws"),
]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Iterator[tuple]:
    from sdlab.aws import AwsTarget
    from sdlab.config import parse_config
    from sdlab.deploy.stack import deploy_serverless
    from sdlab.deploy.teardown import remaining, teardown_stack
    from tests.conftest import TEST_CONFIG

    suffix = secrets.token_hex(3)
    config = {**TEST_CONFIG, "stack": {"name": f"sdlabci{suffix}", "region": os.environ.get("AWS_REGION", "us-east-1"),
                                       "bucket": f"sdlabci-{suffix}-data"}}
    settings = parse_config(config, "tests/aws")
    target = AwsTarget(region=settings.stack.region)
    try:
        deployment = deploy_serverless(settings, target, cache_dir=tmp_path_factory.mktemp("cache"))
        yield settings, target, deployment
    finally:
        teardown_stack(settings, target)
        left = remaining(settings, target)
        assert left == [], f"teardown left {left}"


def _wait_for_api(url: str, key: str, timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds  # a new stage and key take a few seconds to answer
    while httpx.get(f"{url}/v1/tasks/none", headers={"x-api-key": key}).status_code in (403, 502, 503):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not start accepting the key")
        time.sleep(3)


def test_api_refuses_requests_without_a_key(deployed):
    _, _, deployment = deployed
    assert httpx.post(f"{deployment.api.url}/v1/tasks", json={}).status_code == 403


def test_submit_is_recorded_and_queued(deployed):
    settings, _, deployment = deployed
    api, key = deployment.api.url, deployment.api.key_value
    _wait_for_api(api, key)
    body = {"runtime": settings.runtimes[0].name, "payload": {"prompt": "a red fox", "steps": 4, "width": 64, "height": 64}}
    answer = httpx.post(f"{api}/v1/tasks", json=body, headers={"x-api-key": key})
    assert answer.status_code == 202, answer.text
    status = httpx.get(answer.json()["status_url"], headers={"x-api-key": key}).json()
    assert status["status"] == "queued"


def test_task_completes_where_a_cluster_serves_the_runtime():
    """On a stack deployed with `sdlab aws deploy --with-cluster` (its config in $SDLAB_AWS_CLUSTER_CONFIG, its state
    in $SDLAB_HOME or .sdlab): one task through API Gateway → SNS → SQS → GPU pod → S3 → notification."""
    import json
    from pathlib import Path

    from sdlab.aws import AwsTarget, client
    from sdlab.client import Client
    from sdlab.config import load_config
    from sdlab.deploy.eks import cluster_status
    from sdlab.local.stack import home_dir

    config = os.environ.get("SDLAB_AWS_CLUSTER_CONFIG")
    if not config:
        pytest.skip("no cluster stack: set SDLAB_AWS_CLUSTER_CONFIG to the sdlab.yaml deployed with --with-cluster")
    settings = load_config(config)
    target = AwsTarget(region=settings.stack.region)
    if not cluster_status(client("eks", target), settings.stack.name):
        pytest.skip(f"cluster {settings.stack.name} does not exist in {settings.stack.region}")
    home = home_dir()
    state = json.loads((home / f"aws-{settings.stack.name}.json").read_text())
    key = Path(home / f"aws-{settings.stack.name}.key").read_text().strip()
    res = state["resources"]
    with Client(state["api"]["url"], key, target, res["bucket"], res["results_topic_arn"], stack=settings.stack.name) as c:
        task = c.submit(settings.runtimes[0].name, "a lighthouse", payload={"steps": 10, "width": 256, "height": 256})
        note = c.wait(task.id, timeout=900)[task.id]  # includes a cold start: GPU node, image pull, model load
        assert note.status.value == "completed"
        assert len(c.image_bytes(note)) >= 1
