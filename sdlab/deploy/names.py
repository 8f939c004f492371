"""Names of the AWS resources the deploy layer adds to `sdlab.provision.Names`: roles, function, API, repositories.

One place, so deploy, plan, teardown, the rendered cluster files and the tests agree on every name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sdlab.config import Settings
from sdlab.provision import STACK_TAG, Names

ROLE_PATH_PREFIX = "/sdlab/"  # every role lives under /sdlab/<stack>/ so listing and teardown find them by path
ROLE_NAME_MAX = 64
INTERRUPTION_RULES = ("spot-interruption", "rebalance", "state-change", "scheduled-change")
WORKLOAD_NAMESPACE = "sdlab"  # RenderContext.namespace's default: where the runtimes' pods run
KEDA_NAMESPACE, KEDA_SERVICE_ACCOUNT = "keda", "keda-operator"
KARPENTER_NAMESPACE, KARPENTER_SERVICE_ACCOUNT = "kube-system", "karpenter"
MOUNTPOINT_NAMESPACE, MOUNTPOINT_SERVICE_ACCOUNT = "kube-system", "s3-csi-driver-sa"
REPOSITORIES = ("sdlab-agent", "sdlab-runtime")


def _fit(name: str, limit: int = ROLE_NAME_MAX) -> str:
    """`name`, shortened with a stable hash suffix when over `limit` characters (IAM role names stop at 64)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


@dataclass(frozen=True)
class DeployNames:
    """The messaging layer's names (`base`) plus everything the AWS deployment adds."""

    base: Names
    cluster: str

    @classmethod
    def of(cls, settings: Settings, cluster: str | None = None) -> DeployNames:
        return cls(base=Names.of(settings), cluster=cluster or settings.stack.name)

    @property
    def stack(self) -> str:
        return self.base.stack

    @property
    def tags(self) -> dict[str, str]:
        return {STACK_TAG: self.stack}

    @property
    def role_path(self) -> str:
        return f"{ROLE_PATH_PREFIX}{self.stack}/"

    @property
    def function(self) -> str:
        return f"{self.stack}-api"

    @property
    def log_group(self) -> str:
        return f"/aws/lambda/{self.function}"

    @property
    def rest_api(self) -> str:
        return f"{self.stack}-api"

    @property
    def api_key(self) -> str:
        return f"{self.stack}-key"

    @property
    def usage_plan(self) -> str:
        return f"{self.stack}-plan"

    @property
    def lambda_role(self) -> str:
        return _fit(f"{self.stack}-api-lambda")

    @property
    def callbacks_role(self) -> str:
        return _fit(f"{self.stack}-callbacks-lambda")

    @property
    def callbacks_function(self) -> str:
        return f"{self.stack}-callbacks"

    @property
    def callbacks_log_group(self) -> str:
        return f"/aws/lambda/{self.callbacks_function}"

    def agent_role(self, runtime: str) -> str:
        return _fit(f"{self.stack}-{runtime}-agent")

    @property
    def keda_role(self) -> str:
        return _fit(f"{self.stack}-keda")

    @property
    def karpenter_role(self) -> str:
        return _fit(f"{self.stack}-karpenter")

    @property
    def node_role(self) -> str:
        """The GPU nodes' role; `sdlab.k8s.cli.context_for` names the same one in the EC2NodeClass."""
        return _fit(f"{self.stack}-gpu-node")

    @property
    def mountpoint_role(self) -> str:
        return _fit(f"{self.stack}-mountpoint-s3")

    @property
    def interruption_queue(self) -> str:
        return f"{self.cluster}-karpenter-interruption"

    def interruption_rule(self, kind: str) -> str:
        return f"{self.cluster}-karpenter-{kind}"

    def repository(self, name: str) -> str:
        """ECR repository names match `sdlab.k8s.cli.context_for` (`<registry>/sdlab-agent`), one per account:
        teardown deletes a repository only when it carries this stack's tag."""
        return name
