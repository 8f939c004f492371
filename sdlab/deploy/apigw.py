"""API Gateway (REST): `/{proxy+}` ANY → the API function (Lambda proxy), API key required, usage plan.

The local gateway (`sdlab.api.gateway`) does what this API does: refuse requests without a valid `x-api-key`
and hand the proxy event to the unchanged handler. Every function here converges; `ensure_api` twice changes
nothing and creates no second deployment.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from sdlab.deploy.names import DeployNames

log = logging.getLogger(__name__)
PROXY_PATH = "{proxy+}"


@dataclass(frozen=True)
class ApiLimits:
    """Usage-plan throttling and quota for the stack's API key (the upstream guidance: 30 rps, burst 50)."""

    rate_per_second: float = 30.0
    burst: int = 50
    quota_per_day: int = 100_000
    stage: str = "v1"


@dataclass(frozen=True)
class ApiInfo:
    api_id: str
    url: str
    stage: str
    key_id: str
    key_value: str
    usage_plan_id: str

    def to_dict(self, *, redact: bool = True) -> dict[str, str]:
        out = asdict(self)
        if redact:
            out["key_value"] = out["key_value"][:4] + "…"
        return out


def _find(pages: Any, name: str, key: str = "name") -> dict[str, Any] | None:
    for page in pages:
        for item in page.get("items", []):
            if item.get(key) == name:
                return dict(item)
    return None


def ensure_rest_api(apigw: Any, names: DeployNames) -> str:
    found = _find(apigw.get_paginator("get_rest_apis").paginate(), names.rest_api)
    if found:  # tagged when created (moto has no TagResource for API Gateway; AWS keeps create-time tags)
        return str(found["id"])
    api = apigw.create_rest_api(name=names.rest_api, description=f"sdlab stack {names.stack}", apiKeySource="HEADER",
                                endpointConfiguration={"types": ["REGIONAL"]}, tags=names.tags)
    log.info("created REST API %s (%s)", names.rest_api, api["id"])
    return str(api["id"])


def ensure_proxy_route(apigw: Any, api_id: str, function_arn: str, region: str) -> bool:
    """`/{proxy+}` ANY with an API key, Lambda proxy integration; True when something changed (redeploy)."""
    resources = [r for page in apigw.get_paginator("get_resources").paginate(restApiId=api_id) for r in page["items"]]
    root = next(r for r in resources if r["path"] == "/")
    proxy = next((r for r in resources if r.get("pathPart") == PROXY_PATH and r.get("parentId") == root["id"]), None)
    changed = proxy is None
    if proxy is None:
        proxy = apigw.create_resource(restApiId=api_id, parentId=root["id"], pathPart=PROXY_PATH)
    try:
        method = apigw.get_method(restApiId=api_id, resourceId=proxy["id"], httpMethod="ANY")
    except ClientError as err:
        if err.response["Error"]["Code"] != "NotFoundException":
            raise
        method = None
    if method is None:
        apigw.put_method(restApiId=api_id, resourceId=proxy["id"], httpMethod="ANY", authorizationType="NONE",
                         apiKeyRequired=True)
        changed = True
    elif not method.get("apiKeyRequired"):
        apigw.update_method(restApiId=api_id, resourceId=proxy["id"], httpMethod="ANY",
                            patchOperations=[{"op": "replace", "path": "/apiKeyRequired", "value": "true"}])
        changed = True
    uri = f"arn:aws:apigateway:{region}:lambda:path/2015-03-31/functions/{function_arn}/invocations"
    if ((method or {}).get("methodIntegration") or {}).get("uri") != uri:
        apigw.put_integration(restApiId=api_id, resourceId=proxy["id"], httpMethod="ANY", type="AWS_PROXY",
                              integrationHttpMethod="POST", uri=uri)
        changed = True
    return changed


def allow_api_to_invoke(lam: Any, function_name: str, api_id: str, region: str, account: str) -> None:
    """Resource policy on the function: only this API (any stage, method, path) may invoke it."""
    try:
        lam.add_permission(FunctionName=function_name, StatementId=f"apigw-{api_id}", Action="lambda:InvokeFunction",
                           Principal="apigateway.amazonaws.com",
                           SourceArn=f"arn:aws:execute-api:{region}:{account}:{api_id}/*/*/*")
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceConflictException":
            raise


def ensure_stage(apigw: Any, api_id: str, limits: ApiLimits, redeploy: bool) -> None:
    """A deployment on the stage (a new one only when the routes changed) with method throttling."""
    try:
        apigw.get_stage(restApiId=api_id, stageName=limits.stage)
        exists = True
    except ClientError as err:
        if err.response["Error"]["Code"] != "NotFoundException":
            raise
        exists = False
    if redeploy or not exists:
        apigw.create_deployment(restApiId=api_id, stageName=limits.stage, description="sdlab deploy")
    apigw.update_stage(restApiId=api_id, stageName=limits.stage, patchOperations=[
        {"op": "replace", "path": "/*/*/throttling/rateLimit", "value": f"{limits.rate_per_second:g}"},
        {"op": "replace", "path": "/*/*/throttling/burstLimit", "value": str(limits.burst)},
    ])


def ensure_key_and_plan(apigw: Any, names: DeployNames, api_id: str, limits: ApiLimits) -> tuple[str, str, str]:
    """The stack's API key and its usage plan (throttle + daily quota); returns (key id, key value, plan id)."""
    keys = [k for k in apigw.get_api_keys(nameQuery=names.api_key, includeValues=True)["items"] if k["name"] == names.api_key]
    key = keys[0] if keys else apigw.create_api_key(name=names.api_key, enabled=True, tags=names.tags,
                                                    description=f"sdlab stack {names.stack}")
    throttle = {"rateLimit": limits.rate_per_second, "burstLimit": limits.burst}
    quota = {"limit": limits.quota_per_day, "period": "DAY"}
    stage = {"apiId": api_id, "stage": limits.stage}
    plan = _find(apigw.get_paginator("get_usage_plans").paginate(), names.usage_plan)
    if plan is None:
        plan = apigw.create_usage_plan(name=names.usage_plan, apiStages=[stage], throttle=throttle, quota=quota, tags=names.tags)
    else:
        ops = [{"op": "replace", "path": "/throttle/rateLimit", "value": f"{limits.rate_per_second:g}"},
               {"op": "replace", "path": "/throttle/burstLimit", "value": str(limits.burst)},
               {"op": "replace", "path": "/quota/limit", "value": str(limits.quota_per_day)}]
        if not any(s.get("apiId") == api_id and s.get("stage") == limits.stage for s in plan.get("apiStages", [])):
            ops.append({"op": "add", "path": "/apiStages", "value": f"{api_id}:{limits.stage}"})
        apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=ops)
    plan_keys = apigw.get_usage_plan_keys(usagePlanId=plan["id"])["items"]
    if not any(k["id"] == key["id"] for k in plan_keys):
        apigw.create_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY")
    return str(key["id"]), str(key["value"]), str(plan["id"])


def ensure_api(apigw: Any, lam: Any, names: DeployNames, *, function_arn: str, account: str,
               limits: ApiLimits = ApiLimits()) -> ApiInfo:
    """The whole API in front of the function; returns its URL and key."""
    region = apigw.meta.region_name
    api_id = ensure_rest_api(apigw, names)
    changed = ensure_proxy_route(apigw, api_id, function_arn, region)
    allow_api_to_invoke(lam, names.function, api_id, region, account)
    ensure_stage(apigw, api_id, limits, changed)
    key_id, key_value, plan_id = ensure_key_and_plan(apigw, names, api_id, limits)
    url = f"https://{api_id}.execute-api.{region}.amazonaws.com/{limits.stage}"
    return ApiInfo(api_id=api_id, url=url, stage=limits.stage, key_id=key_id, key_value=key_value, usage_plan_id=plan_id)


def delete_api(apigw: Any, names: DeployNames) -> list[str]:
    """Usage plan (after detaching its key and stages), API key, REST API; returns what was deleted."""
    removed = []
    plan = _find(apigw.get_paginator("get_usage_plans").paginate(), names.usage_plan)
    if plan:
        for key in apigw.get_usage_plan_keys(usagePlanId=plan["id"])["items"]:
            apigw.delete_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"])
        ops = [{"op": "remove", "path": "/apiStages", "value": f"{s['apiId']}:{s['stage']}"} for s in plan.get("apiStages", [])]
        if ops:
            apigw.update_usage_plan(usagePlanId=plan["id"], patchOperations=ops)
        apigw.delete_usage_plan(usagePlanId=plan["id"])
        removed.append(f"usage plan {names.usage_plan}")
    for key in apigw.get_api_keys(nameQuery=names.api_key)["items"]:
        if key["name"] == names.api_key:
            apigw.delete_api_key(apiKey=key["id"])
            removed.append(f"API key {names.api_key}")
    api = _find(apigw.get_paginator("get_rest_apis").paginate(), names.rest_api)
    if api:
        apigw.delete_rest_api(restApiId=api["id"])
        removed.append(f"REST API {names.rest_api} ({api['id']})")
    return removed
