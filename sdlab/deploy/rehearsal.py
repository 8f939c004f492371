"""A moto server of its own for rehearsing the AWS deployment without an account (notebook 13, tests).

It answers IAM, Lambda, API Gateway, ECR, EKS (describe), EventBridge, SageMaker and Application Auto Scaling
besides the messaging services, and loads AWS managed policies so node roles can attach them as on AWS.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from sdlab.aws import AwsTarget
from sdlab.local import motoserver
from sdlab.local.processes import Proc, stop

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
    log = Path(tempfile.mkdtemp(prefix="sdlab-rehearsal-", dir=log_dir)) / "moto.log"
    server = motoserver.start(log, MOTO_ENV, timeout_seconds)
    return Rehearsal(AwsTarget(region=region, endpoint_url=server.url), server.proc)
