"""Send a task through a deployed serverless layer (notebook 13).

On AWS: `POST /v1/tasks` to the deployed API Gateway URL with its key. Against the moto rehearsal, where API
Gateway cannot run a function: the deployed function's handler runs as Lambda would run it, in a fresh process
with the function's own environment (read back from its configuration) and an API Gateway proxy event, so the
code path, the configuration and the resources are the deployed ones. Either way the task message is then read
from the runtime's deployed queue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx

from sdlab.aws import AwsTarget, client

_RUN_HANDLER = ("import importlib, json, sys; module, name = sys.argv[1].rsplit('.', 1); "
                "print(json.dumps(getattr(importlib.import_module(module), name)(json.load(sys.stdin), None)))")


def proxy_event(method: str, path: str, body: Any, api_key: str) -> dict[str, Any]:
    """An API Gateway REST proxy event, as `/{proxy+}` delivers it."""
    return {"resource": "/{proxy+}", "path": path, "httpMethod": method,
            "headers": {"content-type": "application/json", "x-api-key": api_key, "Host": "rehearsal.local"},
            "multiValueHeaders": {}, "queryStringParameters": None, "multiValueQueryStringParameters": None,
            "pathParameters": {"proxy": path.lstrip("/")}, "stageVariables": None,
            "requestContext": {"stage": "v1", "identity": {"apiKey": api_key}, "httpMethod": method, "path": path},
            "body": json.dumps(body), "isBase64Encoded": False}


def invoke_function(target: AwsTarget, function: str, event: dict[str, Any]) -> dict[str, Any]:
    """Run the deployed function's handler on `event` in a fresh process with the function's environment."""
    config = client("lambda", target).get_function_configuration(FunctionName=function)
    env = {**os.environ, **config.get("Environment", {}).get("Variables", {}), **target.env()}
    done = subprocess.run([sys.executable, "-c", _RUN_HANDLER, config["Handler"]], input=json.dumps(event), env=env,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"the function's handler failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def send_task(target: AwsTarget, deployment: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Submit `body` through the deployment; returns (HTTP status, answer)."""
    if target.endpoint_url:  # the rehearsal: run the function itself
        function = deployment.function_arn.rsplit(":", 1)[-1]
        reply = invoke_function(target, function, proxy_event("POST", "/v1/tasks", body, deployment.api.key_value))
        return int(reply["statusCode"]), json.loads(reply["body"])
    answer = httpx.post(f"{deployment.api.url.rstrip('/')}/v1/tasks", json=body, headers={"x-api-key": deployment.api.key_value},
                        timeout=30)
    return answer.status_code, answer.json()


def take_message(target: AwsTarget, queue_url: str, task_id: str, timeout_s: int = 10) -> dict[str, Any] | None:
    """The task's message from the queue (deleted: with no cluster, nothing would run it), or None."""
    sqs = client("sqs", target)
    for _ in range(max(1, timeout_s // 2)):
        out = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=2, MessageAttributeNames=["All"])
        for m in out.get("Messages", []):
            body = json.loads(m["Body"])
            if body.get("id") == task_id:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
                return {"body": body, "attributes": {k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}}
    return None
