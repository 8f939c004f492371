"""boto3 clients for one target: the moto server on loopback (local) or real AWS.

Every AWS call in the project goes through `client()`, so the endpoint comes from one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from sdlab import envvars

# moto accepts any credentials; these are not secrets, they only keep botocore from looking for real ones.
_LOCAL_CREDENTIALS = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}


def _config() -> Config:
    """Timeouts and retries: botocore's standard mode, 5 attempts, 30 s reads, unless the environment says otherwise."""
    return Config(retries={"max_attempts": int(os.environ.get(envvars.AWS_MAX_ATTEMPTS) or 5), "mode": "standard"},
                  connect_timeout=5, read_timeout=float(os.environ.get(envvars.AWS_READ_TIMEOUT_SECONDS) or 30))


@dataclass(frozen=True)
class AwsTarget:
    """Where AWS calls go. `endpoint_url` is set only for the local moto server."""

    region: str
    endpoint_url: str | None = None

    @classmethod
    def from_env(cls, region: str | None = None, endpoint_url: str | None = None,
                 env: Mapping[str, str] | None = None) -> AwsTarget:
        env = os.environ if env is None else env
        return cls(
            region=region or env.get(envvars.REGION) or env.get("AWS_REGION") or "us-east-1",
            endpoint_url=endpoint_url or env.get(envvars.AWS_ENDPOINT_URL) or None,
        )

    @property
    def local(self) -> bool:
        return self.endpoint_url is not None

    def env(self) -> dict[str, str]:
        """Environment for a child process that must reach the same target."""
        out = {envvars.REGION: self.region, "AWS_DEFAULT_REGION": self.region}
        if self.endpoint_url:
            out[envvars.AWS_ENDPOINT_URL] = self.endpoint_url
        return out


def client(service: str, target: AwsTarget, **kwargs: Any) -> Any:
    """A boto3 client for `service` on `target`. Against the moto server, placeholder credentials unless
    AWS_ACCESS_KEY_ID is set (the IAM-enforcing tests give each process the keys of its own IAM user)."""
    extra: dict[str, Any] = {}
    if target.endpoint_url:
        extra = {"endpoint_url": target.endpoint_url, **({} if os.environ.get("AWS_ACCESS_KEY_ID") else _LOCAL_CREDENTIALS)}
    return boto3.session.Session().client(service, region_name=target.region, config=_config(), **{**extra, **kwargs})
