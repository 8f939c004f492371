"""Bad input over real HTTP against the whole local stack: every malformed request gets the right 4xx, an error
naming the field and saying how to fix it, and nothing reaches a queue, the task table or a dead-letter queue;
no process of the stack crashes.

The corpus is data (`CORPUS`): one `Case` per request. Requests go through `http.client`, which sends paths as
written (an HTTP library would normalise `../` away before the gateway ever saw it).
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from sdlab.aws import AwsTarget
from sdlab.aws import client as aws_client
from sdlab.local import stack as local_stack

pytestmark = pytest.mark.integration
OK = {"runtime": "rt-a", "payload": {"prompt": "a fox", "steps": 4, "width": 64, "height": 64}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
BIG_PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200_000).decode()  # 266,680 characters of base64
BUCKET = "{bucket}"  # replaced by the stack's bucket (the one allowed source of s3:// input images)


def with_payload(**fields: Any) -> dict[str, Any]:
    return {**OK, "payload": {**OK["payload"], **fields}}


def with_fields(**fields: Any) -> dict[str, Any]:
    return {**OK, **fields}


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    field: str | None  # None: the request's route or key is wrong, not a field (see `hint`)
    hint: str  # what the answer must say: the fix
    body: Any = None  # dict/list/str → JSON; bytes → sent as they are
    method: str = "POST"
    path: str = "/v1/tasks"
    headers: dict[str, str] = field(default_factory=dict)
    key: str | bytes | None = "valid"  # "valid", None (no header) or a literal wrong key (bytes: sent as they are)


CORPUS = [
    # -- the body itself ----------------------------------------------------------------------------
    Case("not_json", 400, "body", "send a JSON object", b"{not json"),
    Case("empty_body", 400, "body", "send a JSON object", b""),
    Case("json_array", 400, "body", "send a JSON object with `runtime` and `payload`", [OK]),
    Case("json_string", 400, "body", "send a JSON object", "hello"),
    Case("json_null", 400, "body", "send a JSON object", None),
    Case("not_utf8", 400, "body", "send a JSON object", b"\xff\xfe\xfa{\"runtime\": 1}"),
    Case("truncated_json", 400, "body", "send a JSON object", json.dumps(OK)[:-3].encode()),
    Case("wrong_content_type", 415, "Content-Type", "'Content-Type: application/json'", OK,
         headers={"Content-Type": "text/plain"}),
    Case("form_content_type", 415, "Content-Type", "'Content-Type: application/json'", b"runtime=rt-a",
         headers={"Content-Type": "application/x-www-form-urlencoded"}),
    Case("no_content_type", 415, "Content-Type", "'Content-Type: application/json'", OK, headers={"Content-Type": ""}),
    Case("body_over_sns_limit", 413, "body", "send init images as s3:// URIs", with_payload(init_images=[BIG_PNG])),
    # the body is under the limit; the message the API would publish (it adds id, prefix, timestamps) is not
    Case("message_over_sns_limit", 413, "body", "the task message would be", with_fields(context="x" * (262_144 - 130))),
    Case("utf16_body", 400, "body", "encoded as UTF-8", json.dumps(OK).encode("utf-16")),
    Case("utf8_bom", 400, "body", "send a JSON object", b"\xef\xbb\xbf" + json.dumps(OK).encode()),
    Case("latin1_body", 400, "body", "encoded as UTF-8", json.dumps(with_payload(prompt="caf\u00e9"), ensure_ascii=False)
         .encode("latin-1")),
    Case("lone_surrogate", 400, "body", "send valid Unicode text", b'{"runtime": "rt-a", "payload": {"prompt": "\\ud800"}}'),
    Case("nested_too_deep_for_the_parser", 400, "body", "send a flatter JSON object",
         b'{"runtime": "rt-a", "payload": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"),
    Case("nested_deeper_than_allowed", 400, "body", "send a flatter JSON object",
         b'{"runtime": "rt-a", "payload": {"x": ' + b"[" * 70 + b"]" * 70 + b"}}"),
    Case("huge_integer", 400, "body", "keep integers under 20 digits",
         b'{"runtime": "rt-a", "payload": {"steps": ' + b"9" * 5000 + b"}}"),
    Case("huge_float", 400, "body", "send finite numbers", b'{"runtime": "rt-a", "payload": {"cfg_scale": 1e999}}'),
    Case("nan", 400, "body", "send finite numbers", b'{"runtime": "rt-a", "payload": {"cfg_scale": NaN}}'),
    Case("duplicate_key", 400, "body", "appears twice in one object; send it once",
         b'{"runtime": "rt-a", "runtime": "rt-b", "payload": {}}'),
    Case("huge_body_at_gateway", 413, None, "Request Too Long", b"{" + b" " * (10 * 1024 * 1024 + 1) + b"}"),
    # -- the envelope -------------------------------------------------------------------------------
    Case("missing_runtime", 400, "runtime", "required; add it", {"payload": OK["payload"]}),
    Case("missing_payload", 400, "payload", "required; add it", {"runtime": "rt-a"}),
    Case("runtime_not_string", 400, "runtime", "should be a valid string", with_fields(runtime=123)),
    Case("runtime_empty", 400, "runtime", "at least 1 character", with_fields(runtime="")),
    Case("runtime_absurdly_long", 400, "runtime", "at most 40 characters", with_fields(runtime="r" * 500)),
    Case("unknown_runtime", 404, "runtime", "does not exist; use one of", with_fields(runtime="rt-zzz")),
    Case("unknown_field", 400, "colour", "unknown field; remove it", with_fields(colour="red")),
    Case("payload_not_object", 400, "payload", "should be a valid dictionary", with_fields(payload=["a fox"])),
    Case("unknown_task_type", 400, "task_type", "should be 'text-to-image'", with_fields(task_type="video")),
    Case("task_type_not_served", 400, "task_type", "use one of", with_fields(task_type="pipeline")),
    Case("unknown_priority", 400, "priority", "should be 'normal' or 'high'", with_fields(priority="urgent")),
    Case("negative_ttl", 400, "ttl_seconds", "greater than or equal to 1", with_fields(ttl_seconds=-5)),
    Case("absurd_ttl", 400, "ttl_seconds", "less than or equal to 1209600", with_fields(ttl_seconds=10**12)),
    Case("ttl_not_number", 400, "ttl_seconds", "valid integer", with_fields(ttl_seconds="soon")),
    Case("context_wrong_type", 400, "context", "valid dictionary", with_fields(context=[1, 2])),
    # -- ids and prefixes that try to leave their place ----------------------------------------------
    Case("id_dot_dot_slash", 400, "id", "letters, digits, '-' or '_'", with_fields(id="../../etc/passwd")),
    Case("id_url_encoded_traversal", 400, "id", "letters, digits, '-' or '_'", with_fields(id="%2e%2e%2fetc")),
    Case("id_200_chars", 400, "id", "must be 1-64", with_fields(id="a" * 200)),
    Case("id_not_string", 400, "id", "valid string", with_fields(id=42)),
    Case("id_with_nul_and_spaces", 400, "id", "letters, digits, '-' or '_'", with_fields(id="a b\x00c")),
    Case("prefix_traversal", 400, "prefix", "no '..'", with_fields(prefix="../outputs")),
    Case("prefix_absolute", 400, "prefix", "no leading or trailing '/'", with_fields(prefix="/etc")),
    Case("prefix_into_models", 400, "prefix", "outside the output prefix; use 'outputs' or outputs/<sub-prefix>",
         with_fields(prefix="models/tiny-a")),
    Case("prefix_into_workflows", 400, "prefix", "outside the output prefix", with_fields(prefix="workflows")),
    Case("prefix_sibling_of_outputs", 400, "prefix", "outside the output prefix", with_fields(prefix="outputs-other/x")),
    Case("prefix_dot_dot_inside", 400, "prefix", "no '..'", with_fields(prefix="outputs/../models")),
    Case("callback_metadata_http", 400, "callback_url", "must be an https:// URL",
         with_fields(callback_url="http://169.254.169.254/latest/meta-data/")),
    Case("callback_file_url", 400, "callback_url", "must be an https:// URL", with_fields(callback_url="file:///etc/passwd")),
    # -- the runtime payload: types, ranges, absurd sizes ------------------------------------------
    Case("steps_absurd", 400, "payload.steps", "use 1..50", with_payload(steps=10_000)),
    Case("steps_negative", 400, "payload.steps", "use 1..50", with_payload(steps=-1)),
    Case("steps_string", 400, "payload.steps", "must be an integer", with_payload(steps="20")),
    Case("steps_float", 400, "payload.steps", "must be an integer", with_payload(steps=20.5)),
    Case("steps_bool", 400, "payload.steps", "must be an integer", with_payload(steps=True)),
    Case("width_not_multiple_of_8", 400, "payload.width", "use 96 or 104", with_payload(width=100)),
    Case("width_absurd", 400, "payload.width", "use 64..1024", with_payload(width=100_000)),
    Case("height_negative", 400, "payload.height", "use 64..1024", with_payload(height=-512)),
    Case("too_many_pixels", 400, "payload.width", "lower width or height", with_payload(width=1024, height=1024)),
    Case("batch_absurd", 400, "payload.batch_size", "use 1..4", with_payload(batch_size=1000)),
    Case("batch_times_iter", 400, "payload.batch_size", "keep it at most 4", with_payload(batch_size=4, n_iter=4)),
    Case("seed_below_minus_one", 400, "payload.seed", "use -1..4294967295", with_payload(seed=-2)),
    Case("cfg_not_number", 400, "payload.cfg_scale", "must be a number", with_payload(cfg_scale="high")),
    Case("cfg_absurd", 400, "payload.cfg_scale", "use 0..30", with_payload(cfg_scale=1e9)),
    Case("sampler_not_string", 400, "payload.sampler_name", "must be a string", with_payload(sampler_name=["Euler"])),
    Case("prompt_not_string", 400, "payload.prompt", "must be a string", with_payload(prompt=123)),
    Case("prompt_too_long", 400, "payload.prompt", "keep it under 20000", with_payload(prompt="x" * 25_000)),
    Case("override_settings_string", 400, "payload.override_settings", "must be an object",
         with_payload(override_settings="fast")),
    # -- input images: bad base64, not images, URLs the service must never fetch ----------------------
    Case("img2img_without_images", 400, "payload.init_images", "needs a non-empty list",
         with_fields(task_type="image-to-image")),
    Case("init_images_not_list", 400, "payload.init_images", "must be a list", with_payload(init_images=PNG)),
    Case("init_image_bad_base64", 400, "payload.init_images.0", "encode the image bytes with base64",
         with_payload(init_images=["!!!not base64!!!"])),
    Case("init_image_not_an_image", 400, "payload.init_images.0", "not a PNG, JPEG, WebP or GIF",
         with_payload(init_images=[base64.b64encode(b"hello world").decode()])),
    Case("init_image_metadata_url", 400, "payload.init_images.0", "URLs are not fetched by the service",
         with_payload(init_images=["http://169.254.169.254/latest/meta-data/iam/security-credentials/"])),
    Case("init_image_file_url", 400, "payload.init_images.0", "URLs are not fetched by the service",
         with_payload(init_images=["file:///etc/passwd"])),
    Case("init_image_other_bucket", 400, "payload.init_images.0", "is not allowed for input images; use one of",
         with_payload(init_images=["s3://someone-elses-bucket/secret.png"])),
    Case("init_image_bucket_without_key", 400, "payload.init_images.0", "names no object",
         with_payload(init_images=[f"s3://{BUCKET}/"])),
    Case("extra_without_image", 400, "payload.image", "base64", with_fields(task_type="extra-single-image")),
    Case("mask_bad_base64", 400, "payload.mask", "encode the image bytes with base64", with_payload(mask="%%%")),
    # -- the guidance's v1alpha2 shape ----------------------------------------------------------------
    Case("legacy_metadata_not_object", 400, "task.metadata", "give {id, runtime, tasktype, prefix}",
         {"task": {"metadata": "x", "content": {}}}),
    Case("legacy_missing_content", 400, "task.content", "put the runtime's native request body there",
         {"task": {"metadata": {"id": "x", "runtime": "rt-a", "tasktype": "text-to-image"}}}),
    Case("legacy_unknown_runtime", 404, "runtime", "use one of",
         {"task": {"metadata": {"id": "x", "runtime": "sdruntime", "tasktype": "text-to-image"}, "content": {}}}),
    # -- GET /v1/tasks: bad query parameters --------------------------------------------------------
    Case("list_without_runtime", 400, "runtime", "tasks are listed per runtime", method="GET"),
    Case("list_unknown_param", 400, "sort", "use runtime, status, limit, next_token", method="GET",
         path="/v1/tasks?runtime=rt-a&sort=desc"),
    Case("list_unknown_runtime", 404, "runtime", "use one of", method="GET", path="/v1/tasks?runtime=rt-zzz"),
    Case("list_bad_status", 400, "status", "use one of", method="GET", path="/v1/tasks?runtime=rt-a&status=done"),
    Case("list_limit_zero", 400, "limit", "must be an integer 1..200", method="GET", path="/v1/tasks?runtime=rt-a&limit=0"),
    Case("list_limit_absurd", 400, "limit", "must be an integer 1..200", method="GET",
         path="/v1/tasks?runtime=rt-a&limit=99999999999999999999"),
    Case("list_limit_not_number", 400, "limit", "must be an integer 1..200", method="GET",
         path="/v1/tasks?runtime=rt-a&limit=ten"),
    Case("list_next_token_garbage", 400, "next_token", "drop it to start over", method="GET",
         path="/v1/tasks?runtime=rt-a&next_token=%25%25not-a-token"),
    Case("list_next_token_not_object", 400, "next_token", "drop it to start over", method="GET",
         path="/v1/tasks?runtime=rt-a&next_token=" + base64.urlsafe_b64encode(b"[1, 2]").decode()),
    # -- task ids in the path ------------------------------------------------------------------------
    Case("get_id_200_chars", 400, "id", "must be 1-64", method="GET", path="/v1/tasks/" + "a" * 200),
    Case("get_id_encoded_dot_dot", 400, "id", "letters, digits, '-' or '_'", method="GET", path="/v1/tasks/%2e%2e"),
    Case("get_id_encoded_nul", 400, "id", "letters, digits, '-' or '_'", method="GET", path="/v1/tasks/a%00b"),
    Case("get_id_encoded_traversal", 404, None, "the API serves /v1/tasks and /v1/tasks/{id}", method="GET",
         path="/v1/tasks/..%2F..%2Fetc%2Fpasswd"),
    Case("get_id_raw_traversal", 404, None, "the API serves /v1/tasks and /v1/tasks/{id}", method="GET",
         path="/v1/tasks/../../etc/passwd"),
    Case("get_unknown_id", 404, "id", "check the id returned by POST /v1/tasks", method="GET",
         path="/v1/tasks/never-submitted"),
    Case("delete_bad_id", 400, "id", "letters, digits, '-' or '_'", method="DELETE", path="/v1/tasks/%2e%2e%2f"),
    Case("delete_unknown_id", 404, "id", "no task with id", method="DELETE", path="/v1/tasks/never-submitted"),
    # -- methods, routes and keys: not a field; the answer names the fix (Allow header, routes) or is API Gateway's
    Case("put_tasks", 405, None, "use POST or GET", OK, method="PUT"),
    Case("patch_task", 405, None, "use GET or DELETE", OK, method="PATCH", path="/v1/tasks/abc"),
    Case("post_task", 405, None, "use GET or DELETE", OK, path="/v1/tasks/abc"),
    Case("unknown_route", 404, None, "the API serves /v1/tasks and /v1/tasks/{id}", OK, path="/v2/tasks"),
    Case("no_api_key", 403, None, "Forbidden", OK, key=None),
    Case("wrong_api_key", 403, None, "Forbidden", OK, key="not-the-key"),
    Case("key_in_wrong_header", 403, None, "Forbidden", OK, key=None, headers={"Authorization": "Bearer {key}"}),
    Case("key_non_ascii", 403, None, "Forbidden", OK, key="cl\u00e9-\u00fc"),
    Case("key_utf8_and_odd_bytes", 403, None, "Forbidden", OK, key=b"\xd0\xba\xd0\xbb\xff\xfe"),
]


def send(stack: dict[str, Any], case: Case) -> tuple[int, dict[str, str], Any]:
    """One request as written; returns (status, headers, JSON body)."""
    url = urlsplit(stack["api_url"])
    headers = {"Content-Type": "application/json"}
    if case.key == "valid":
        headers["x-api-key"] = stack["api_key"]
    elif case.key is not None:
        headers["x-api-key"] = case.key
    for name, value in case.headers.items():
        headers[name] = value.replace("{key}", stack["api_key"])
    headers = {k: v for k, v in headers.items() if v}
    body = case.body
    if isinstance(body, bytes):
        raw = body
    elif case.method in ("GET", "DELETE") and body is None:
        raw = b""
    else:
        raw = json.dumps(body).replace(BUCKET, stack["bucket"]).encode()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(case.method, case.path, body=raw, headers=headers)
        reply = conn.getresponse()
        content = reply.read()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, json.loads(content)
    finally:
        conn.close()


def _target(stack: dict[str, Any]) -> AwsTarget:
    return AwsTarget(stack["region"], stack["aws_endpoint_url"])


def footprint(stack: dict[str, Any]) -> dict[str, int]:
    """Messages in every runtime queue and DLQ (visible, in flight, delayed) and items in the task table."""
    sqs = aws_client("sqs", _target(stack))
    counts = {}
    for name, rt in stack["runtimes"].items():
        for kind in ("queue_url", "high_queue_url", "dlq_url"):
            attrs = sqs.get_queue_attributes(QueueUrl=rt[kind], AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed"])["Attributes"]
            counts[f"{name}.{kind}"] = sum(int(v) for v in attrs.values())
    db = aws_client("dynamodb", _target(stack))
    counts["task_table"] = db.scan(TableName=stack["task_table"], Select="COUNT")["Count"]
    return counts


@pytest.fixture(scope="module")
def baseline(stack) -> dict[str, int]:
    """The stack's footprint once work left by earlier tests has drained (nothing in flight in the work queues)."""
    deadline = time.monotonic() + 120
    while True:
        counts = footprint(stack)
        if all(v == 0 for k, v in counts.items() if k.endswith(("queue_url", "high_queue_url"))):
            return counts
        assert time.monotonic() < deadline, f"work queues never drained: {counts}"
        time.sleep(0.5)


def check_answer(case: Case, status: int, headers: dict[str, str], body: Any) -> None:
    assert status == case.status, (case.name, status, body)
    if case.status == 403 or (case.field is None and case.status == 413):
        assert body == {"message": case.hint}, body  # API Gateway's own answer, before the function runs
        return
    err = body["error"]
    assert err.get("field") == case.field, (case.name, err)
    assert case.hint in err["message"], (case.name, err["message"])
    if case.status == 405:
        assert headers["allow"] in ("GET, POST", "GET, DELETE") and headers["allow"].split(", ")[0] in err["message"]


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_bad_input_answered_with_field_and_fix_and_enqueues_nothing(stack, baseline, case):
    status, headers, body = send(stack, case)
    check_answer(case, status, headers, body)
    assert footprint(stack) == baseline


def test_bad_input_whole_corpus_leaves_queues_table_and_processes_untouched(stack, baseline):
    assert len(CORPUS) >= 40
    statuses = [send(stack, case)[0] for case in CORPUS]
    assert statuses == [case.status for case in CORPUS]
    assert footprint(stack) == baseline
    processes = local_stack.status(stack["home"])
    assert processes and [(p["name"], p["alive"], p["healthy"]) for p in processes if not p["healthy"]] == []
