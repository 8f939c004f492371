"""The local stack a notebook works with: the one already up (`make lab`, or the test suite's), else one it starts.

A notebook calls `open_stack(...)` near its top and `session.close()` at its end; `close` stops the stack only when
this session started it, so notebooks run one after another share one stack and leave the participant's running.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlab.client import Client
from sdlab.config import Settings, load_config
from sdlab.errors import SdlabError
from sdlab.local.processes import alive
from sdlab.local.stack import down, home_dir, read_stack, up
from sdlab.workshop.progress import UpBar

TARGETS = ("local", "aws")


class TargetError(SdlabError):
    """A notebook was asked for a target it does not drive."""


def check_target(target: str, supported: Iterable[str] = ("local",)) -> str:
    """`target` if this notebook supports it, else an error that names the notebook to use instead."""
    allowed = tuple(supported)
    if target not in TARGETS:
        raise TargetError(f'target = {target!r} is not a target; use one of {", ".join(map(repr, TARGETS))}')
    if target not in allowed:
        raise TargetError(f'target = {target!r}: this notebook runs on {" or ".join(map(repr, allowed))}; '
                          'the AWS walk-through is 13_deploy_to_aws.ipynb')
    return target


@dataclass
class Session:
    stack: dict[str, Any]
    home: Path
    started: bool  # True when this session started the stack (and so `close` stops it)
    _client: Client | None = None

    @property
    def client(self) -> Client:
        """The API client; after `close` a new one is made while the stack still runs (a form pressed after "Run all")."""
        if self._client is None:
            if running(self.home) is None:
                raise SdlabError(f"the stack in {self.home} is stopped; start it with `make lab` (or `sdlab up`) "
                                 "and run the notebook's first cells again")
            self._client = Client.from_stack(str(self.home))
        return self._client

    @property
    def runtimes(self) -> dict[str, dict[str, Any]]:
        return dict(self.stack["runtimes"])

    def runtime(self, *types: str) -> str:
        """The first runtime whose type is one of `types` (any runtime when none given)."""
        for name, spec in self.stack["runtimes"].items():
            if not types or spec["type"] in types:
                return str(name)
        have = ", ".join(f"{n} ({s['type']})" for n, s in self.stack["runtimes"].items())
        raise SdlabError(f"the stack has no runtime of type {' or '.join(types)}; it has {have}; add one to sdlab.yaml")

    def close(self) -> list[str]:
        """Delete the client's inbox; stop the stack if this session started it. Returns the processes stopped."""
        if self._client is not None:
            self._client.close()
            self._client = None
        return down(self.home) if self.started else []


def running(home: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The stack recorded in `<home>/stack.json` if its processes are alive."""
    stack = read_stack(home)
    if stack and all(alive(p["pid"]) for p in stack["processes"]):
        return stack
    return None


def open_stack(config: str | os.PathLike[str] | Settings, home: str | os.PathLike[str] | None = None, *,
               target: str = "local", progress: bool = True) -> Session:
    """Use the stack running from `home` (default `$SDLAB_HOME` or ./.sdlab), or bring one up from `config`."""
    check_target(target)
    root = home_dir(home)
    stack = running(root)
    started = stack is None
    if stack is None:
        settings = config if isinstance(config, Settings) else load_config(config)
        with UpBar(enabled=progress) as bar:
            stack = up(settings, root, progress=bar)
    return Session(stack=stack, home=root, started=started)


PACKAGES = ("sdlab", "boto3", "moto", "ipywidgets", "jupyterlab", "papermill", "tqdm", "matplotlib", "pandas", "torch",
            "diffusers")


def versions() -> Any:
    """A DataFrame of the packages the workshop uses and their installed versions ("missing" names what to install)."""
    from importlib import metadata

    import pandas as pd

    rows = []
    for name in PACKAGES:
        try:
            rows.append({"package": name, "version": metadata.version(name)})
        except metadata.PackageNotFoundError:
            rows.append({"package": name, "version": "missing: run `make env` (pip install -e '.[all]')"})
    return pd.DataFrame(rows)


# the quotas a GPU deployment needs (vCPUs): Service Quotas codes for EC2 G and VT instances
GPU_QUOTAS = {"L-DB2E81BA": "Running On-Demand G and VT instances", "L-3819A6DF": "All G and VT Spot Instance Requests"}


def aws_readiness(region: str) -> Any:
    """Who the credentials are (account redacted to its last 4 digits) and the GPU vCPU quotas of `region`."""
    import pandas as pd

    from sdlab.aws import AwsTarget, client

    target = AwsTarget.from_env(region)
    identity = client("sts", target).get_caller_identity()
    quotas = client("service-quotas", target)
    rows = [{"check": "credentials", "value": f"account …{identity['Account'][-4:]}"}]
    for code, name in GPU_QUOTAS.items():
        value = quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
        rows.append({"check": name, "value": f"{value:.0f} vCPUs" + ("  (ask for more: 4+ per GPU node)" if value < 4 else "")})
    return pd.DataFrame(rows)
