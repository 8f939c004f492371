"""SageMaker Asynchronous Inference (comparison path): the boto3 calls the SDK makes and the scale-to-zero policies,
against moto; the container's /ping + /invocations adapter over real HTTP in front of a stub runtime."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from sdlab.aws import client
from sdlab.deploy import sagemaker_async as sma
from sdlab.local.processes import free_port, http_ok, spawn, stop, wait_until


def _spec(aws) -> sma.AsyncEndpointSpec:
    sns = client("sns", aws)
    return sma.AsyncEndpointSpec(
        name="sdlabtest-async", image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/sdlab-runtime:0.1.0",
        model_data_url="s3://sdlabtest-data/models/tiny-a.tar.gz", role_arn="arn:aws:iam::123456789012:role/sm",
        output_path="s3://sdlabtest-data/outputs/sagemaker-async/ok", failure_path="s3://sdlabtest-data/outputs/sagemaker-async/err",
        success_topic_arn=sns.create_topic(Name="sdlabtest-async-success")["TopicArn"],
        error_topic_arn=sns.create_topic(Name="sdlabtest-async-error")["TopicArn"],
        instance_type="ml.g4dn.xlarge")  # moto's instance list predates ml.g5; the default is ml.g5.xlarge


@pytest.mark.integration
def test_async_endpoint_scales_from_zero_with_both_policies(aws, names):
    spec = _spec(aws)
    sm, aas, cw = client("sagemaker", aws), client("application-autoscaling", aws), client("cloudwatch", aws)
    sma.deploy_with_boto(sm, spec, names.tags)
    arns = sma.ensure_autoscaling(aas, cw, spec)
    state = sma.describe(sm, aas, spec)
    notify = state["async"]["OutputConfig"]["NotificationConfig"]
    assert notify == {"SuccessTopic": spec.success_topic_arn, "ErrorTopic": spec.error_topic_arn}
    assert state["async"]["ClientConfig"]["MaxConcurrentInvocationsPerInstance"] == 1
    assert state["policies"] == ["StepScaling", "TargetTrackingScaling"]
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[spec.resource_id])["ScalableTargets"][0]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, spec.max_instances)
    tracking = next(p for p in aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
                    if p["PolicyType"] == "TargetTrackingScaling")["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    alarm = cw.describe_alarms(AlarmNames=[f"{spec.name}-backlog-without-capacity"])["MetricAlarms"][0]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity" and alarm["AlarmActions"] == [arns["step"]]
    removed = sma.delete_async_endpoint(sm, aas, cw, spec)
    assert len(removed) == 4 and sma.delete_async_endpoint(sm, aas, cw, spec) == []
    assert cw.describe_alarms(AlarmNames=[f"{spec.name}-backlog-without-capacity"])["MetricAlarms"] == []


class _StubRuntime(BaseHTTPRequestHandler):
    healthy = False

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(200 if type(self).healthy else 503, {})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._reply(200, {"images": ["aW1n"], "parameters": body, "path": self.path})

    def log_message(self, *args: object) -> None:
        pass


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code in (200, 503)
    except httpx.HTTPError:
        return False


def test_container_adapter_answers_ping_and_forwards_invocations(tmp_path):
    runtime = ThreadingHTTPServer(("127.0.0.1", 0), _StubRuntime)
    threading.Thread(target=runtime.serve_forever, daemon=True).start()
    port = free_port()
    proc, popen = spawn("sagemaker-serve", ["-m", "sdlab.deploy.sagemaker_serve", "serve", "--host", "127.0.0.1", "--port",
                                            str(port), "--runtime-url", f"http://127.0.0.1:{runtime.server_port}"],
                        {}, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/ping"), popen, proc, 30)
        assert httpx.get(f"{url}/ping").status_code == 503, "not ready while the runtime loads its model"
        _StubRuntime.healthy = True
        wait_until(http_ok(f"{url}/ping"), popen, proc, 10)
        answer = httpx.post(f"{url}/invocations", json={"prompt": "a fox", "steps": 4}).json()
        assert answer == {"images": ["aW1n"], "parameters": {"prompt": "a fox", "steps": 4}, "path": "/sdapi/v1/txt2img"}
        assert httpx.get(f"{url}/other").status_code == 404
    finally:
        stop([proc])
        runtime.shutdown()
