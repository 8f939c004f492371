"""A moto server of its own for rehearsing the AWS deployment without an account (notebook 02, tests).

It answers IAM, Lambda, API Gateway, ECR, EKS (describe), EventBridge, SageMaker and Application Auto Scaling
besides the messaging services, and loads AWS managed policies so node roles can attach them as on AWS.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from sdlab.aws import AwsTarget
from sdlab.local.processes import Proc, free_port, http_ok, spawn, stop, wait_until

MOTO_ENV = {"MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}


@dataclass
class Rehearsal:
    """A running moto server and the AwsTarget that points at it."""

    target: AwsTarget
    proc: Proc

    def stop(self) -> list[str]:
        return stop([self.proc])


def start(region: str = "us-east-1", log_dir: Path | None = None, timeout_seconds: float = 60.0) -> Rehearsal:
    """Start moto on a free loopback port and wait until it answers."""
    port = free_port()
    log = (log_dir or Path(tempfile.gettempdir())) / f"sdlab-rehearsal-moto-{port}.log"
    proc, popen = spawn("moto", ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], MOTO_ENV, log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(http_ok(f"{endpoint}/moto-api/"), popen, proc, timeout_seconds)
    except BaseException:
        stop([proc])
        raise
    return Rehearsal(AwsTarget(region=region, endpoint_url=endpoint), proc)
