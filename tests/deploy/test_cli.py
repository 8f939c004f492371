"""`sdlab aws …` end to end as a user runs it: a real process against a moto server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.integration


def _sdlab(args: list[str], config, home, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sdlab", "--config", str(config), "--home", str(home), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_plan_deploy_teardown_rehearsal(aws, tmp_path):
    from tests.conftest import TEST_CONFIG

    config = tmp_path / "sdlab.yaml"
    config.write_text(yaml.safe_dump(TEST_CONFIG))
    home = tmp_path / "home"
    plan = _sdlab(["aws", "plan"], config, home)
    assert plan.returncode == 0 and "Karpenter NodePool" in plan.stdout and "idle cost $" in plan.stdout
    deploy = _sdlab(["aws", "deploy", "--endpoint-url", aws.endpoint_url, "--no-vendor", "--with-cluster", "--push-images"],
                    config, home)
    assert deploy.returncode == 0, deploy.stderr
    assert "run: eksctl create cluster -f infra/eksctl/cluster.yaml" in deploy.stdout, "a rehearsal never runs eksctl"
    assert "run: helm upgrade --install keda" in deploy.stdout and "run: docker buildx build" in deploy.stdout
    assert "run: kubectl apply --server-side" in deploy.stdout
    state = json.loads((home / "aws-sdlabtest.json").read_text())
    key = (home / "aws-sdlabtest.key").read_text().strip()
    assert key and key not in json.dumps(state) and oct((home / "aws-sdlabtest.key").stat().st_mode)[-3:] == "600"
    cluster_files = home / "aws" / "sdlabtest"
    assert "arn:aws:iam::123456789012:role/" in (cluster_files / "infra/eksctl/cluster.yaml").read_text()
    assert list((cluster_files / "manifests").rglob("scaledobject-*.yaml"))
    teardown = _sdlab(["aws", "teardown", "--endpoint-url", aws.endpoint_url, "--with-cluster"], config, home)
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr
    assert "nothing of the stack remains" in teardown.stdout and "run: eksctl delete cluster" in teardown.stdout
