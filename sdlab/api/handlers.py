"""Lambda handler behind API Gateway (REST, proxy integration): `POST|GET /v1/tasks`, `GET|DELETE /v1/tasks/{id}`,
`GET /v1/usage`, and the public guidance's `POST /v1alpha2` and `/v1alpha1` (sdlab/api/compat.py).
The whole contract: `sdlab api openapi` (sdlab/api/openapi.py).

`handler` is the Lambda entry point (API Gateway `/{proxy+}` ANY → this function). It takes a proxy event and
returns a proxy response, on AWS and behind the local gateway alike. Settings come from SDLAB_* environment
variables, read once per cold start; clients are built on first use and reused across invocations.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdlab import envvars, notify
from sdlab.api import compat, validation
from sdlab.aws import AwsTarget, client
from sdlab.config import Limits
from sdlab.contracts import (
    Notification,
    Receipt,
    SubmitRequest,
    TaskMessage,
    TaskStatus,
    Timings,
    check_task_id,
    check_task_prefix,
    image_key,
    new_task_id,
    output_prefix,
)
from sdlab.errors import ConfigError, ValidationError
from sdlab.taskstore import RECORD_RETENTION_SECONDS, TaskExists, TaskStore, TransitionRefused

log = logging.getLogger(__name__)
PRESIGN_SECONDS = 3600
_TASK_PATH = re.compile(r"^/v1/tasks/(?P<id>[^/]+)/?$")
USAGE_DEFAULT_DAYS = 30


@dataclass(frozen=True)
class ApiSettings:
    """What the API function needs to know, from its environment."""

    target: AwsTarget
    table: str
    tasks_topic_arn: str
    bucket: str
    output_prefix: str
    runtimes: Mapping[str, str]  # name -> runtime type
    limits: Limits
    results_topic_arn: str | None = None  # cancel publishes the `cancelled` notification
    status_base_url: str | None = None
    input_buckets: tuple[str, ...] = ()  # besides `bucket`, where s3:// input images may come from
    runtime_models: Mapping[str, str] | None = None  # name -> model name (v1alpha1 routing)
    v1alpha1_runtime: str | None = None
    record_retention_seconds: int = RECORD_RETENTION_SECONDS

    @property
    def allowed_input_buckets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.bucket, *self.input_buckets)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ApiSettings:
        missing = [n for n in (envvars.TASK_TABLE, envvars.TASKS_TOPIC_ARN, envvars.BUCKET, envvars.RUNTIMES) if not env.get(n)]
        if missing:
            raise ConfigError([f"environment variable {n} is not set" for n in missing], "API function")
        try:
            specs = json.loads(env[envvars.RUNTIMES])
            runtimes = {name: spec["type"] for name, spec in specs.items()}
            models = {name: spec.get("model", "") for name, spec in specs.items()}
            retention_days = int(env.get(envvars.RECORD_RETENTION_DAYS) or RECORD_RETENTION_SECONDS // 86400)
            limits = Limits.model_validate_json(env.get(envvars.LIMITS) or "{}")
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError([f"{envvars.RUNTIMES}/{envvars.LIMITS} is not valid JSON of the expected shape: {err}"]) from err
        return cls(
            target=AwsTarget.from_env(),
            table=env[envvars.TASK_TABLE],
            tasks_topic_arn=env[envvars.TASKS_TOPIC_ARN],
            bucket=env[envvars.BUCKET],
            output_prefix=env.get(envvars.OUTPUT_PREFIX, "outputs"),
            runtimes=runtimes,
            limits=limits,
            results_topic_arn=env.get(envvars.RESULTS_TOPIC_ARN) or None,
            status_base_url=env.get(envvars.STATUS_BASE_URL) or None,
            input_buckets=tuple(b.strip() for b in env.get(envvars.INPUT_BUCKETS, "").split(",") if b.strip()),
            runtime_models=models,
            v1alpha1_runtime=env.get(envvars.V1ALPHA1_RUNTIME) or None,
            record_retention_seconds=retention_days * 86400,
        )


@functools.cache
def _settings() -> ApiSettings:
    return ApiSettings.from_env()


_CLIENTS: dict[int, tuple[TaskStore, Any, Any]] = {}


def _clients(settings: ApiSettings) -> tuple[TaskStore, Any, Any]:
    """Clients for these settings, built once per container and reused (Lambda keeps them warm)."""
    if id(settings) not in _CLIENTS:
        _CLIENTS[id(settings)] = (
            TaskStore(client("dynamodb", settings.target), settings.table, settings.record_retention_seconds),
            client("sns", settings.target),
            client("s3", settings.target),
        )
    return _CLIENTS[id(settings)]


def response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": json.dumps(body),
    }


def error(status: int, code: str, message: str, field: str | None = None,
          headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if field:
        body["error"]["field"] = field
    return response(status, body, headers)


def _header(event: Mapping[str, Any], name: str) -> str | None:
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def _base_url(event: Mapping[str, Any], settings: ApiSettings) -> str:
    if settings.status_base_url:
        return settings.status_base_url.rstrip("/")
    ctx = event.get("requestContext") or {}
    host = ctx.get("domainName") or _header(event, "Host") or "localhost"
    stage = ctx.get("stage")
    return f"https://{host}" + (f"/{stage}" if stage and stage != "$default" else "")


def _body(event: Mapping[str, Any], settings: ApiSettings) -> dict[str, Any]:
    body = event.get("body")
    if event.get("isBase64Encoded") and body:
        body = base64.b64decode(body)
    return validation.parse_body(body, _header(event, "Content-Type"), settings.limits)


def api_key_id(event: Mapping[str, Any]) -> str:
    """A non-reversible id of the caller's API key (never the key itself): usage is rolled up by it."""
    key = ((event.get("requestContext") or {}).get("identity") or {}).get("apiKey")
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16] if key else "anonymous"


def request_hash(request: SubmitRequest) -> str:
    """Fingerprint of a submit, for idempotency: the same id with the same body is the same task."""
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()


def submit(event: Mapping[str, Any], settings: ApiSettings) -> dict[str, Any]:
    """Validate, record as `queued`, publish with the `runtime` attribute, answer 202 (200 for a repeat)."""
    return accept(validation.parse_request(_body(event, settings)), event, settings)


def accept(request: SubmitRequest, event: Mapping[str, Any], settings: ApiSettings) -> dict[str, Any]:
    """Queue a validated envelope. `id` is an idempotency key: an identical repeat answers 200 with the task
    already accepted (nothing runs twice); a different body under the same id is refused (409)."""
    if request.runtime not in settings.runtimes:
        return error(404, "unknown_runtime",
                     f"runtime {request.runtime!r} does not exist; use one of {sorted(settings.runtimes)}", "runtime")
    validation.validate_payload(request, settings.runtimes[request.runtime], settings.limits,
                                input_buckets=settings.allowed_input_buckets)
    prefix = request.prefix or settings.output_prefix
    try:
        check_task_prefix(prefix, settings.output_prefix)
    except ValueError as err:
        raise ValidationError("prefix", str(err)) from err

    # 1. the message that would be published, measured as SNS measures it
    task_id = request.id or new_task_id()
    now = time.time()
    message = TaskMessage(
        id=task_id, runtime=request.runtime, task_type=request.task_type, prefix=prefix, priority=request.priority,
        payload=request.payload, context=request.context, submitted_at=now, ttl_seconds=request.ttl_seconds,
        callback_url=request.callback_url, notify_events=request.notify_events,
        notification_format=request.notification_format, preview=request.preview,
    )
    body = message.model_dump_json(exclude_none=True)
    attributes = {"runtime": {"DataType": "String", "StringValue": request.runtime},
                  "priority": {"DataType": "String", "StringValue": request.priority}}
    validation.check_message_size(body, attributes, settings.limits)

    # 2. the record first: a message must never exist for a task the status API cannot find
    store, sns, _ = _clients(settings)
    location = f"s3://{settings.bucket}/{output_prefix(prefix, task_id)}"
    fingerprint = request_hash(request)
    status_url = f"{_base_url(event, settings)}/v1/tasks/{task_id}"
    try:
        store.create({
            "id": task_id, "runtime": request.runtime, "task_type": request.task_type, "prefix": prefix,
            "priority": request.priority, "created_at": now, "output_location": location,
            "ttl_seconds": request.ttl_seconds, "context": request.context, "callback_url": request.callback_url,
            "api_key_id": api_key_id(event), "request_hash": fingerprint,
        })
    except TaskExists:
        existing = store.get(task_id) or {}
        if existing.get("request_hash") == fingerprint:
            return response(200, {"id": task_id, "status": existing.get("status"), "status_url": status_url,
                                  "output_location": existing.get("output_location", location)})
        return error(409, "task_exists", f"a task with id {task_id!r} was already submitted with another body; "
                     "repeat it unchanged to get that task, or choose a new id", "id")

    # 3. publish; if that fails nothing was accepted, so the record goes too
    try:
        sns.publish(TopicArn=settings.tasks_topic_arn, Message=body, MessageAttributes=attributes)
    except Exception:  # any publish failure: undo and tell the client to retry
        log.exception("publish failed for task %s", task_id)
        store.delete(task_id)
        return error(503, "publish_failed", "the task could not be queued; retry the request")
    log.info("accepted task %s for runtime %s", task_id, request.runtime)
    return response(202, {"id": task_id, "status": "queued", "status_url": status_url, "output_location": location})


def submit_v1alpha2(event: Mapping[str, Any], settings: ApiSettings) -> dict[str, Any]:
    """The guidance's v1alpha2 submit: its body, its answer (200 {id, runtime, output_location}) plus status_url."""
    request = validation.parse_request(compat.from_v1alpha2(_body(event, settings), settings.output_prefix))
    answer = accept(request, event, settings)
    if answer["statusCode"] >= 300:
        return answer
    body = json.loads(answer["body"])
    return response(200, {"id": body["id"], "runtime": request.runtime, "output_location": body["output_location"],
                          "status_url": body["status_url"]})


def submit_v1alpha1(event: Mapping[str, Any], settings: ApiSettings) -> dict[str, Any]:
    """The guidance's legacy v1alpha1 submit, routed by model; answers {id_task, sd_model_checkpoint, output_location}."""
    data = _body(event, settings)
    upgraded = compat.from_v1alpha1(data, {n: {"type": t, "model": (settings.runtime_models or {}).get(n, "")}
                                           for n, t in settings.runtimes.items()}, settings.v1alpha1_runtime,
                                  settings.output_prefix)
    request = validation.parse_request(upgraded)
    answer = accept(request, event, settings)
    if answer["statusCode"] >= 300:
        return answer
    body = json.loads(answer["body"])
    return response(200, {"id_task": body["id"], "sd_model_checkpoint": data["alwayson_scripts"]["sd_model_checkpoint"],
                          "runtime": request.runtime, "output_location": body["output_location"],
                          "status_url": body["status_url"]})


def _instant(field: str, value: str) -> float:
    """Unix seconds, or an ISO 8601 date or date-time (UTC unless it says otherwise)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as err:
        raise ValidationError(field, f"{value!r} is neither unix seconds nor an ISO 8601 date-time, "
                              "e.g. 2026-11-30T00:00Z") from err
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)).timestamp()


USAGE_FIELDS = ("id", "runtime", "status", "api_key_id", "finished_at", "image_count", "receipt")


def _add(total: dict[str, Any], record: Mapping[str, Any]) -> None:
    receipt = record.get("receipt") or {}
    total["tasks"] += 1
    total["images"] += int(record.get("image_count") or 0)
    total["gpu_s"] = round(total["gpu_s"] + float(receipt.get("gpu_s") or 0.0), 3)
    if receipt.get("cost_usd") is not None:
        total["cost_usd"] = round(total["cost_usd"] + float(receipt["cost_usd"]), 8)
    elif receipt.get("gpu_s"):
        total["unpriced_gpu_s"] = round(total["unpriced_gpu_s"] + float(receipt["gpu_s"]), 3)
    total["by_status"][record.get("status", "?")] = total["by_status"].get(record.get("status", "?"), 0) + 1


def _zero() -> dict[str, Any]:
    return {"tasks": 0, "images": 0, "gpu_s": 0.0, "cost_usd": 0.0, "unpriced_gpu_s": 0.0, "by_status": {}}


def usage(event: Mapping[str, Any], settings: ApiSettings) -> dict[str, Any]:
    """Tasks that ended in [since, until): their GPU-seconds and estimated cost, in total, per API key, per runtime."""
    query = event.get("queryStringParameters") or {}
    unknown = sorted(set(query) - {"since", "until"})
    if unknown:
        raise ValidationError(unknown[0], "unknown query parameter; use since and until")
    until = _instant("until", query["until"]) if query.get("until") else time.time()
    since = _instant("since", query["since"]) if query.get("since") else until - USAGE_DEFAULT_DAYS * 86400
    if since >= until:
        raise ValidationError("since", "must be before until")
    store, _, _ = _clients(settings)
    total: dict[str, Any] = _zero()
    by_key: dict[str, dict[str, Any]] = {}
    by_runtime: dict[str, dict[str, Any]] = {}
    for record in store.ended_between(since, until, USAGE_FIELDS):
        _add(total, record)
        _add(by_key.setdefault(record.get("api_key_id", "anonymous"), _zero()), record)
        _add(by_runtime.setdefault(record.get("runtime", "?"), _zero()), record)
    return response(200, {"since": since, "until": until, "total": total, "by_api_key": by_key, "by_runtime": by_runtime})


def _task_id(value: str) -> str:
    try:
        return check_task_id(value)
    except ValueError as err:
        raise ValidationError("id", str(err)) from err


LIST_FIELDS = ("id", "runtime", "task_type", "status", "priority", "created_at", "started_at", "finished_at",
               "queued_s", "run_s", "attempts", "image_count", "error")


def list_tasks(event: Mapping[str, Any], settings: ApiSettings) -> dict[str, Any]:
    """Recent tasks of one runtime, newest first: `?runtime=&status=&limit=&next_token=`."""
    query = event.get("queryStringParameters") or {}
    unknown = sorted(set(query) - {"runtime", "status", "limit", "next_token"})
    if unknown:
        raise ValidationError(unknown[0], "unknown query parameter; use runtime, status, limit, next_token")
    runtime = query.get("runtime")
    if not runtime:
        raise ValidationError("runtime", f"required; tasks are listed per runtime, one of {sorted(settings.runtimes)}")
    if runtime not in settings.runtimes:
        return error(404, "unknown_runtime", f"runtime {runtime!r} does not exist; use one of {sorted(settings.runtimes)}",
                     "runtime")
    status = query.get("status")
    if status is not None and status not in {s.value for s in TaskStatus}:
        raise ValidationError("status", f"{status!r} is not a status; use one of {[s.value for s in TaskStatus]}")
    try:
        limit = int(query.get("limit", "50"))
        if not 1 <= limit <= 200:
            raise ValueError
    except ValueError as err:
        raise ValidationError("limit", "must be an integer 1..200") from err
    start_key = None
    if query.get("next_token"):
        try:
            start_key = json.loads(base64.urlsafe_b64decode(query["next_token"].encode()))
            if not isinstance(start_key, dict):
                raise ValueError
        except (ValueError, binascii.Error) as err:
            raise ValidationError("next_token", "is not a token this API returned; drop it to start over") from err
    store, _, _ = _clients(settings)
    records, last = store.list_runtime(runtime, status=status, limit=limit, start_key=start_key)
    body: dict[str, Any] = {"tasks": [{k: r[k] for k in LIST_FIELDS if k in r} for r in records]}
    body["next_token"] = base64.urlsafe_b64encode(json.dumps(last).encode()).decode() if last else None
    return response(200, body)


def cancel_task(task_id: str, settings: ApiSettings) -> dict[str, Any]:
    """A queued task never runs; a running one is interrupted (or its result discarded). Notifies `cancelled`."""
    store, sns, _ = _clients(settings)
    try:
        current = store.get(_task_id(task_id)) or {}
        now = time.time()
        # the API cannot see a running task's GPU time: a cancelled task's receipt counts none (a known undercount)
        receipt = Receipt(runtime=current.get("runtime", "?"), instance_type="none", capacity_type="none", gpu_s=0.0,
                          queued_s=round(now - float(current.get("created_at", now)), 3), usd_per_hour=None,
                          cost_usd=0.0, price_source="cancelled before a runtime finished it")
        record = store.transition(task_id, TaskStatus.CANCELLED, {TaskStatus.QUEUED, TaskStatus.RUNNING},
                                  finished_at=now, error="cancelled by the client", receipt=receipt.model_dump())
    except TransitionRefused as refused:
        if refused.current is None:
            return error(404, "unknown_task", f"no task with id {task_id!r}", "id")
        return error(409, "already_ended", f"task {task_id!r} already ended {refused.current['status']}; nothing to cancel", "id")
    if settings.results_topic_arn:
        notify.publish(sns, settings.results_topic_arn, Notification(
            id=task_id, runtime=record["runtime"], status=TaskStatus.CANCELLED, error=record["error"],
            output_location=record.get("output_location"), context=record.get("context"),
            timings=Timings(queued_s=round(record["finished_at"] - record["created_at"], 3)),
            receipt=Receipt.model_validate(record["receipt"]) if record.get("receipt") else None))
    log.info("cancelled task %s", task_id)
    record.pop("expires_at", None)
    return response(200, record)


def get_task(task_id: str, settings: ApiSettings) -> dict[str, Any]:
    """Status, timings, error and presigned image URLs of one task."""
    _task_id(task_id)
    store, _, s3 = _clients(settings)
    record = store.get(task_id)
    if record is None:
        return error(404, "unknown_task", f"no task with id {task_id!r}; check the id returned by POST /v1/tasks", "id")
    record.pop("expires_at", None)
    record["image_urls"] = [
        s3.generate_presigned_url(
            "get_object", Params={"Bucket": settings.bucket, "Key": image_key(record["prefix"], task_id, n)},
            ExpiresIn=PRESIGN_SECONDS,
        )
        for n in range(int(record.get("image_count", 0)))
    ]
    preview = (record.get("progress") or {}).get("preview")
    if preview:
        record["preview_url"] = s3.generate_presigned_url(
            "get_object", Params={"Bucket": settings.bucket, "Key": preview.removeprefix(f"s3://{settings.bucket}/")},
            ExpiresIn=PRESIGN_SECONDS)
    return response(200, record)


def route(event: Mapping[str, Any], settings: ApiSettings) -> dict[str, Any]:
    method = (event.get("httpMethod") or "").upper()
    path = event.get("path") or "/"
    if path.rstrip("/") == "/v1/tasks":
        if method == "POST":
            return submit(event, settings)
        if method == "GET":
            return list_tasks(event, settings)
        return error(405, "method_not_allowed", f"{method} is not allowed on /v1/tasks; use POST or GET",
                     headers={"Allow": "GET, POST"})
    if path.rstrip("/") in ("/v1alpha2", "/v1alpha1", "/v1/usage"):
        route_path = path.rstrip("/")
        wanted = "GET" if route_path == "/v1/usage" else "POST"
        if method != wanted:
            return error(405, "method_not_allowed", f"{method} is not allowed on {route_path}; use {wanted}",
                         headers={"Allow": wanted})
        if route_path == "/v1/usage":
            return usage(event, settings)
        return submit_v1alpha2(event, settings) if route_path == "/v1alpha2" else submit_v1alpha1(event, settings)
    match = _TASK_PATH.match(path)
    if match:
        if method == "GET":
            return get_task(match["id"], settings)
        if method == "DELETE":
            return cancel_task(match["id"], settings)
        return error(405, "method_not_allowed", f"{method} is not allowed on /v1/tasks/{{id}}; use GET or DELETE",
                     headers={"Allow": "GET, DELETE"})
    return error(404, "not_found", f"no route {path}; the API serves /v1/tasks and /v1/tasks/{{id}}, "
                 "plus /v1/usage and the guidance's /v1alpha2 and /v1alpha1")


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point: API Gateway proxy event in, proxy response out."""
    try:
        return route(event, _settings())
    except ValidationError as err:
        return error(err.status, "invalid_request", str(err), err.field)
    except Exception:  # the client gets a clean 500; the trace goes to the log (never the body or key)
        log.exception("unhandled error for %s %s", event.get("httpMethod"), event.get("path"))
        return error(500, "internal_error", "the request failed inside the API; retry, and report it if it persists")
