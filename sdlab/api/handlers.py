"""Lambda handler behind API Gateway (REST, proxy integration): `POST|GET /v1/tasks`, `GET|DELETE /v1/tasks/{id}`.

`handler` is the Lambda entry point (API Gateway `/{proxy+}` ANY → this function). It takes a proxy event and
returns a proxy response, on AWS and behind the local gateway alike. Settings come from SDLAB_* environment
variables, read once per cold start; clients are built on first use and reused across invocations.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdlab import envvars, notify
from sdlab.api import validation
from sdlab.aws import AwsTarget, client
from sdlab.config import Limits
from sdlab.contracts import (
    Notification,
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
from sdlab.taskstore import TaskExists, TaskStore, TransitionRefused

log = logging.getLogger(__name__)
PRESIGN_SECONDS = 3600
_TASK_PATH = re.compile(r"^/v1/tasks/(?P<id>[^/]+)/?$")


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

    @property
    def allowed_input_buckets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.bucket, *self.input_buckets)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ApiSettings:
        missing = [n for n in (envvars.TASK_TABLE, envvars.TASKS_TOPIC_ARN, envvars.BUCKET, envvars.RUNTIMES) if not env.get(n)]
        if missing:
            raise ConfigError([f"environment variable {n} is not set" for n in missing], "API function")
        try:
            runtimes = {name: spec["type"] for name, spec in json.loads(env[envvars.RUNTIMES]).items()}
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
        )


@functools.cache
def _settings() -> ApiSettings:
    return ApiSettings.from_env()


_CLIENTS: dict[int, tuple[TaskStore, Any, Any]] = {}


def _clients(settings: ApiSettings) -> tuple[TaskStore, Any, Any]:
    """Clients for these settings, built once per container and reused (Lambda keeps them warm)."""
    if id(settings) not in _CLIENTS:
        _CLIENTS[id(settings)] = (
            TaskStore(client("dynamodb", settings.target), settings.table),
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


def submit(event: Mapping[str, Any], settings: ApiSettings) -> dict[str, Any]:
    """Validate, record as `queued`, publish with the `runtime` attribute, answer 202."""
    raw = event.get("body")
    if event.get("isBase64Encoded") and raw:
        raw = base64.b64decode(raw)
    data = validation.parse_body(raw, _header(event, "Content-Type"), settings.limits)
    request = validation.parse_request(data)
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
        callback_url=request.callback_url,
    )
    body = message.model_dump_json(exclude_none=True)
    attributes = {"runtime": {"DataType": "String", "StringValue": request.runtime},
                  "priority": {"DataType": "String", "StringValue": request.priority}}
    validation.check_message_size(body, attributes, settings.limits)

    # 2. the record first: a message must never exist for a task the status API cannot find
    store, sns, _ = _clients(settings)
    location = f"s3://{settings.bucket}/{output_prefix(prefix, task_id)}"
    try:
        store.create({
            "id": task_id, "runtime": request.runtime, "task_type": request.task_type, "prefix": prefix,
            "priority": request.priority, "created_at": now, "output_location": location,
            "ttl_seconds": request.ttl_seconds, "context": request.context, "callback_url": request.callback_url,
        })
    except TaskExists:
        return error(409, "task_exists", f"a task with id {task_id!r} was already submitted; omit `id` or choose a new one", "id")

    # 3. publish; if that fails nothing was accepted, so the record goes too
    try:
        sns.publish(TopicArn=settings.tasks_topic_arn, Message=body, MessageAttributes=attributes)
    except Exception:  # any publish failure: undo and tell the client to retry
        log.exception("publish failed for task %s", task_id)
        store.delete(task_id)
        return error(503, "publish_failed", "the task could not be queued; retry the request")
    log.info("accepted task %s for runtime %s", task_id, request.runtime)
    return response(202, {
        "id": task_id,
        "status": "queued",
        "status_url": f"{_base_url(event, settings)}/v1/tasks/{task_id}",
        "output_location": location,
    })


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
        record = store.transition(_task_id(task_id), TaskStatus.CANCELLED, {TaskStatus.QUEUED, TaskStatus.RUNNING},
                                  finished_at=time.time(), error="cancelled by the client")
    except TransitionRefused as refused:
        if refused.current is None:
            return error(404, "unknown_task", f"no task with id {task_id!r}", "id")
        return error(409, "already_ended", f"task {task_id!r} already ended {refused.current['status']}; nothing to cancel", "id")
    if settings.results_topic_arn:
        notify.publish(sns, settings.results_topic_arn, Notification(
            id=task_id, runtime=record["runtime"], status=TaskStatus.CANCELLED, error=record["error"],
            output_location=record.get("output_location"), context=record.get("context"),
            timings=Timings(queued_s=round(record["finished_at"] - record["created_at"], 3))))
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
    match = _TASK_PATH.match(path)
    if match:
        if method == "GET":
            return get_task(match["id"], settings)
        if method == "DELETE":
            return cancel_task(match["id"], settings)
        return error(405, "method_not_allowed", f"{method} is not allowed on /v1/tasks/{{id}}; use GET or DELETE",
                     headers={"Allow": "GET, DELETE"})
    return error(404, "not_found", f"no route {path}; the API serves /v1/tasks and /v1/tasks/{{id}}")


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point: API Gateway proxy event in, proxy response out."""
    try:
        return route(event, _settings())
    except ValidationError as err:
        return error(err.status, "invalid_request", str(err), err.field)
    except Exception:  # the client gets a clean 500; the trace goes to the log (never the body or key)
        log.exception("unhandled error for %s %s", event.get("httpMethod"), event.get("path"))
        return error(500, "internal_error", "the request failed inside the API; retry, and report it if it persists")
