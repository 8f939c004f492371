"""Fixtures for the adapter tests: one runtime server process (SD WebUI + ComfyUI APIs) and a moto S3."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

INPUTS_BUCKET = "agent-test-inputs"  # allow-listed for input images
STACK_BUCKET = "agent-test-data"  # the stack's own bucket: always allowed, holds the workflow templates
OTHER_BUCKET = "agent-test-other"  # not allowed


@pytest.fixture(scope="session")
def runtime_url(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m sdlab.runtime` serving tiny-a (startup model), tiny-b (built into the shared cache) and shapes (the
    bundled model, which the named workflow templates name)."""
    from sdlab.config import ModelSettings
    from sdlab.local.processes import free_port, http_ok, spawn, stop, wait_until
    from sdlab.models import build_or_locate

    models = tmp_path_factory.mktemp("agent-models")
    for model in (ModelSettings(name="tiny-a", source="build", variant="tiny", seed=1),
                  ModelSettings(name="tiny-b", source="build", variant="tiny-wide", seed=2)):
        (models / model.name).symlink_to(build_or_locate(model, model_cache))
    (models / "shapes").symlink_to(build_or_locate(ModelSettings(name="shapes"), model_cache))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("agent-runtime") / "runtime.log"
    proc, popen = spawn("runtime", ["-m", "sdlab.runtime", "--models-dir", str(models), "--model", "tiny-a",
                                    "--port", str(port), "--threads", "2"], {"HF_HUB_OFFLINE": "1"}, log, url)
    try:
        wait_until(http_ok(f"{url}/healthz"), popen, proc, 120)
        yield url
    finally:
        stop([proc])


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A boto3 S3 client on a moto server of its own, with the three test buckets."""
    from sdlab.aws import AwsTarget, client
    from sdlab.local.processes import free_port, http_ok, spawn, stop, wait_until

    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"sdlab-agent-moto-{port}.log"
    proc, popen = spawn("moto", ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], {}, log)
    try:
        wait_until(http_ok(f"http://127.0.0.1:{port}/moto-api/"), popen, proc, 60)
        s3 = client("s3", AwsTarget("us-east-1", f"http://127.0.0.1:{port}"))
        for bucket in (INPUTS_BUCKET, STACK_BUCKET, OTHER_BUCKET):
            s3.create_bucket(Bucket=bucket)
        yield s3
    finally:
        stop([proc])
        log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def inputs(s3):
    from agent.inputs import TaskInputs
    from sdlab.workflows import upload_workflows

    upload_workflows(s3, STACK_BUCKET, "workflows")
    return TaskInputs(s3, STACK_BUCKET, (INPUTS_BUCKET,), "workflows")


def png_bytes(size: tuple[int, int] = (96, 64), colour: tuple[int, int, int] = (30, 160, 90)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()
