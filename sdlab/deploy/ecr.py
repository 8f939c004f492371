"""ECR repositories for the agent and runtime images, and building/pushing them.

Repositories scan on push and have immutable tags (a tag names one image forever, so a rollout is reproducible);
untagged images expire after 7 days. `push_images` runs docker buildx where a Docker daemon answers and otherwise
returns the exact commands for the user to run.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from sdlab import __version__
from sdlab.errors import ProvisionError

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"sdlab-agent": "infra/docker/agent.Dockerfile", "sdlab-runtime": "infra/docker/runtime.Dockerfile"}
LIFECYCLE = {"rules": [{
    "rulePriority": 1, "description": "expire untagged images after 7 days",
    "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 7},
    "action": {"type": "expire"},
}]}


@dataclass(frozen=True)
class Image:
    repository: str
    uri: str  # <registry>/<repository>:<tag>
    dockerfile: str


def registry(account: str, region: str) -> str:
    return f"{account}.dkr.ecr.{region}.amazonaws.com"


def ensure_repository(ecr: Any, name: str, tags: dict[str, str]) -> str:
    """Create or converge one repository; returns its URI."""
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    try:
        repo = ecr.create_repository(repositoryName=name, imageTagMutability="IMMUTABLE", tags=tag_list,
                                     imageScanningConfiguration={"scanOnPush": True},
                                     encryptionConfiguration={"encryptionType": "AES256"})["repository"]
        log.info("created repository %s", name)
    except ClientError as err:
        if err.response["Error"]["Code"] != "RepositoryAlreadyExistsException":
            raise ProvisionError(f"repository {name}: {err}") from err
        repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        ecr.put_image_tag_mutability(repositoryName=name, imageTagMutability="IMMUTABLE")
        ecr.put_image_scanning_configuration(repositoryName=name, imageScanningConfiguration={"scanOnPush": True})
        ecr.tag_resource(resourceArn=repo["repositoryArn"], tags=tag_list)
    ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=json.dumps(LIFECYCLE, sort_keys=True))
    return str(repo["repositoryUri"])


def delete_repository(ecr: Any, name: str, stack_tags: dict[str, str]) -> bool:
    """Delete a repository and its images, only if it carries this stack's tags (repositories are per account)."""
    try:
        repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except ClientError as err:
        if err.response["Error"]["Code"] == "RepositoryNotFoundException":
            return False
        raise
    tags = {t["Key"]: t["Value"] for t in ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"]}
    if any(tags.get(k) != v for k, v in stack_tags.items()):
        log.warning("repository %s is not tagged %s; left in place", name, stack_tags)
        return False
    ecr.delete_repository(repositoryName=name, force=True)
    return True


def images(account: str, region: str, tag: str = __version__) -> list[Image]:
    reg = registry(account, region)
    return [Image(repo, f"{reg}/{repo}:{tag}", dockerfile) for repo, dockerfile in DOCKERFILES.items()]


def docker_works() -> bool:
    """A docker CLI with a daemon that answers (not just the binary)."""
    if not shutil.which("docker"):
        return False
    done = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=20)
    return done.returncode == 0


def push_commands(account: str, region: str, tag: str = __version__) -> list[str]:
    """The shell commands that log in to ECR and build and push both images (linux/amd64, the GPU nodes' arch)."""
    reg = registry(account, region)
    out = [f"aws ecr get-login-password --region {region} | docker login --username AWS --password-stdin {reg}"]
    out += [f"docker buildx build --platform linux/amd64 -f {img.dockerfile} -t {img.uri} --push ."
            for img in images(account, region, tag)]
    return out


def image_exists(ecr: Any, repository: str, tag: str) -> bool:
    try:
        return bool(ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])["imageDetails"])
    except ClientError as err:
        if err.response["Error"]["Code"] in ("ImageNotFoundException", "RepositoryNotFoundException"):
            return False
        raise


def push_images(ecr: Any, account: str, region: str, tag: str = __version__, *, run: bool | None = None) -> list[str]:
    """Build and push the images whose tag is not in ECR yet (tags are immutable). With `run=None`, run only where
    docker works. Returns the commands: run, or for the user to run."""
    commands = push_commands(account, region, tag)
    run = docker_works() if run is None else run
    todo = [img for img in images(account, region, tag) if not image_exists(ecr, img.repository, tag)]
    if not run or not todo:
        return commands if todo else []
    auth = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)
    subprocess.run(["docker", "login", "--username", user, "--password-stdin", registry(account, region)],
                   input=password.encode(), check=True, capture_output=True)
    for img in todo:
        cmd = ["docker", "buildx", "build", "--platform", "linux/amd64", "-f", img.dockerfile, "-t", img.uri, "--push", "."]
        log.info("building %s", img.uri)
        subprocess.run(cmd, cwd=ROOT, check=True)
    return commands
