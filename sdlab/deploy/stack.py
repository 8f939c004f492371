"""`sdlab aws deploy`, serverless layer: provision → IAM → Lambda → API Gateway → interruption queue → ECR.

Each step converges (idempotent, tagged `sdlab:stack=<name>`), so a failed deploy is fixed by running it again.
The same function deploys to the moto server (tests, notebook 13 with target="local") and to a real account.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdlab import envvars
from sdlab.aws import AwsTarget, client
from sdlab.config import Settings
from sdlab.deploy import apigw, ecr, interruption, lambda_pkg
from sdlab.deploy.iam import Arns, ensure_role, role_specs
from sdlab.deploy.names import REPOSITORIES, DeployNames
from sdlab.provision import StackResources, provision
from sdlab.wiring import api_environment, callback_environment

# The dispatcher's batch and time limit: each record may wait for one callback (10 s HTTP timeout), and the
# callbacks queue's visibility timeout (60 s) must be at least the function's, as Lambda requires.
CALLBACKS_BATCH = 5
CALLBACKS_TIMEOUT_S = 55

log = logging.getLogger(__name__)


@dataclass
class Deployment:
    """What the serverless layer consists of once deployed."""

    account: str
    region: str
    resources: StackResources
    roles: dict[str, str]  # role name -> ARN
    function_arn: str
    api: apigw.ApiInfo
    interruption_queue_url: str
    repositories: dict[str, str] = field(default_factory=dict)  # name -> URI
    callbacks_function_arn: str = ""
    callback_secret: str = ""  # HMAC key of the webhook signatures: give it to whoever verifies callbacks

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        out = asdict(self)
        out["resources"] = self.resources.to_dict()
        out["api"] = self.api.to_dict(redact=redact)
        if redact:
            out["callback_secret"] = self.callback_secret[:4] + "…"
        return out


def account_id(target: AwsTarget) -> str:
    return str(client("sts", target).get_caller_identity()["Account"])


def deploy_serverless(settings: Settings, target: AwsTarget, *, cluster: str | None = None, vendor: bool = True,
                      cache_dir: Path | None = None, limits: apigw.ApiLimits = apigw.ApiLimits()) -> Deployment:
    """Create or converge the whole serverless layer; returns its ARNs, URL, API key and callback secret."""
    names = DeployNames.of(settings, cluster)
    account = account_id(target)
    arns = Arns(account=account, region=target.region)

    log.info("1/7 messaging layer: bucket, topics, queues + DLQs, subscriptions, table")
    resources = provision(settings, target)

    log.info("2/7 IAM roles (least privilege)")
    iam = client("iam", target)
    roles = {spec.name: ensure_role(iam, spec) for spec in role_specs(settings, names, arns)}

    log.info("3/7 API function (reproducible package)")
    code = lambda_pkg.build_zip(vendor=vendor, cache_dir=cache_dir)
    lambda_pkg.ensure_log_group(client("logs", target), names.log_group, names.tags)
    lam = client("lambda", target)
    function_arn = lambda_pkg.ensure_function(
        lam, names.function, role_arn=roles[names.lambda_role], code=code, tags=names.tags,
        environment=api_environment(settings, resources, target))

    log.info("4/7 API Gateway: /{proxy+} with API key and usage plan")
    api = apigw.ensure_api(client("apigateway", target), lam, names, function_arn=function_arn, account=account,
                           limits=limits)

    log.info("5/7 callback dispatcher: function on the callbacks queue (partial batch responses)")
    secret = (lambda_pkg.current_environment(lam, names.callbacks_function).get(envvars.CALLBACK_SECRET)
              or secrets.token_urlsafe(32))  # generated once, kept by every later deploy
    lambda_pkg.ensure_log_group(client("logs", target), names.callbacks_log_group, names.tags)
    callbacks_arn = lambda_pkg.ensure_function(
        lam, names.callbacks_function, role_arn=roles[names.callbacks_role], code=code, tags=names.tags,
        environment=callback_environment(resources, target, secret), handler=lambda_pkg.CALLBACKS_HANDLER,
        timeout_seconds=CALLBACKS_TIMEOUT_S, description="sdlab callback dispatcher: signed POSTs to callback_url")
    queue_arn = arns.sqs(names.base.callbacks_queue)
    lambda_pkg.ensure_queue_trigger(lam, names.callbacks_function, queue_arn, batch_size=CALLBACKS_BATCH)

    log.info("6/7 Karpenter interruption queue and EventBridge rules")
    queue_url, _ = interruption.ensure_interruption_queue(client("sqs", target), client("events", target), names)

    log.info("7/7 ECR repositories (scan on push, immutable tags)")
    registry = client("ecr", target)
    repositories = {r: ecr.ensure_repository(registry, names.repository(r), names.tags) for r in REPOSITORIES}
    return Deployment(account=account, region=target.region, resources=resources, roles=roles, function_arn=function_arn,
                      api=api, interruption_queue_url=queue_url, repositories=repositories,
                      callbacks_function_arn=callbacks_arn, callback_secret=secret)
