"""The Lambda handler on recorded API Gateway events, against a real moto server with the stack's resources."""

import json
from pathlib import Path

import pytest

from sdlab.api import handlers
from sdlab.aws import AwsTarget, client
from sdlab.provision import provision
from sdlab.wiring import api_environment

EVENTS = Path(__file__).resolve().parents[1] / "events"


def event(name: str, **changes) -> dict:
    data = json.loads((EVENTS / name).read_text())
    data.update(changes)
    return data


@pytest.fixture()
def api(test_settings, moto_server, monkeypatch):
    target = AwsTarget(region="us-east-1", endpoint_url=moto_server)
    resources = provision(test_settings, target)
    for key, value in api_environment(test_settings, resources, target).items():
        monkeypatch.setenv(key, value)
    handlers._settings.cache_clear()
    yield resources, target
    handlers._settings.cache_clear()


def queued(target, url) -> int:
    attrs = client("sqs", target).get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def test_handler_submit_records_and_routes(api):
    resources, target = api
    out = handlers.handler(event("apigw_submit_txt2img.json"), None)
    assert out["statusCode"] == 202, out
    body = json.loads(out["body"])
    assert body["id"] == "evt-task-1"
    assert body["status_url"] == "https://abcdef1234.execute-api.us-east-1.amazonaws.com/v1/v1/tasks/evt-task-1"
    assert body["output_location"] == f"s3://{resources.bucket}/outputs/evt-task-1/"
    assert queued(target, resources.queues["rt-a"].url) == 1
    assert queued(target, resources.queues["rt-b"].url) == 0

    got = handlers.handler(event("apigw_get_task.json"), None)
    record = json.loads(got["body"])
    assert got["statusCode"] == 200 and record["status"] == "queued" and record["runtime"] == "rt-a"

    # `id` is an idempotency key: the identical request again is the same task, not a second run
    again = handlers.handler(event("apigw_submit_txt2img.json"), None)
    assert again["statusCode"] == 200 and json.loads(again["body"]) == {**body, "status": "queued"}
    assert queued(target, resources.queues["rt-a"].url) == 1
    # another body under the same id is refused
    other = json.loads(event("apigw_submit_txt2img.json")["body"])
    other["payload"]["seed"] = 12345
    refused = handlers.handler(event("apigw_submit_txt2img.json", body=json.dumps(other)), None)
    assert refused["statusCode"] == 409 and json.loads(refused["body"])["error"]["field"] == "id"
    assert queued(target, resources.queues["rt-a"].url) == 1


@pytest.mark.parametrize(("changes", "status", "field"), [
    ({"body": json.dumps({"runtime": "nope", "payload": {}})}, 404, "runtime"),
    ({"body": json.dumps({"runtime": "rt-a", "payload": {"steps": 9999}})}, 400, "payload.steps"),
    ({"body": "{oops"}, 400, "body"),
    ({"headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    ({"httpMethod": "PUT"}, 405, None),
    ({"path": "/v2/tasks"}, 404, None),
])
def test_handler_rejects_without_enqueueing(api, changes, status, field):
    resources, target = api
    out = handlers.handler(event("apigw_submit_txt2img.json", **changes), None)
    assert out["statusCode"] == status, out
    err = json.loads(out["body"])["error"]
    assert err.get("field") == field and err["message"]
    assert all(queued(target, q.url) == 0 for q in resources.queues.values())


def test_handler_get_unknown_and_bad_ids(api):
    out = handlers.handler(event("apigw_get_task.json", path="/v1/tasks/never-submitted"), None)
    assert out["statusCode"] == 404
    out = handlers.handler(event("apigw_get_task.json", path="/v1/tasks/..%2F..%2Fetc"), None)
    assert out["statusCode"] == 400 and json.loads(out["body"])["error"]["field"] == "id"


def test_v1alpha1_goes_to_the_runtime_with_its_model_else_to_the_configured_one(api, monkeypatch):
    from sdlab import envvars
    from sdlab.config import parse_config
    from sdlab.errors import ConfigError
    from tests.conftest import TEST_CONFIG

    resources, target = api

    def v1alpha1(task_id: str, model: str) -> dict:
        body = {"alwayson_scripts": {"task": "text-to-image", "sd_model_checkpoint": model, "id_task": task_id,
                                     "save_dir": "outputs"}, "prompt": "a dog", "steps": 4, "width": 64, "height": 64}
        return event("apigw_submit_txt2img.json", path="/v1alpha1", body=json.dumps(body))

    out = handlers.handler(v1alpha1("legacy-1", "tiny-b.safetensors [0123abcd]"), None)
    assert out["statusCode"] == 200 and json.loads(out["body"])["runtime"] == "rt-b"
    out = handlers.handler(v1alpha1("legacy-2", "v2-1_768-ema-pruned.safetensors"), None)
    assert out["statusCode"] == 404 and "shapes" in json.loads(out["body"])["error"]["message"]

    monkeypatch.setenv(envvars.V1ALPHA1_RUNTIME, "rt-a")  # compat.v1alpha1_runtime in sdlab.yaml
    handlers._settings.cache_clear()
    out = handlers.handler(v1alpha1("legacy-3", "v2-1_768-ema-pruned.safetensors"), None)
    assert out["statusCode"] == 200 and json.loads(out["body"])["runtime"] == "rt-a"
    assert queued(target, resources.queues["rt-a"].url) == 1 and queued(target, resources.queues["rt-b"].url) == 1
    with pytest.raises(ConfigError, match="v1alpha1_runtime 'rt-c' is not an sdwebui or diffusers runtime"):
        parse_config({**TEST_CONFIG, "compat": {"v1alpha1_runtime": "rt-c"}})
