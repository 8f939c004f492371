"""The wire contracts, defined once: submit request, queue message, task record, notification, output keys.

Light on purpose (pydantic only): the Lambda handlers, the queue agent and the client all import it.
`sdlab contracts` (or `python -m sdlab contracts`) prints the JSON Schemas; `CONTRACT_VERSION` changes on any breaking change.
"""

from __future__ import annotations

import re
import time
import uuid
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CONTRACT_VERSION = 1
TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
TaskType = Literal["text-to-image", "image-to-image", "extra-single-image", "pipeline"]
# Notifications a task asks for besides its terminal one (`completed` = any ending), as Replicate's webhook_events_filter.
NotifyEvent = Literal["running", "completed"]
# `guidance`: terminal notifications also carry the public guidance's fields (result, image_url, output_url).
NotificationFormat = Literal["sdlab", "guidance"]


class TaskStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.EXPIRED})


def new_task_id() -> str:
    """A random task id (32 hex characters)."""
    return uuid.uuid4().hex


def check_task_id(value: str) -> str:
    """Task ids become S3 key parts and table keys: 1-64 of letters, digits, '-' and '_'."""
    if not isinstance(value, str) or not TASK_ID_RE.match(value):
        raise ValueError("must be 1-64 letters, digits, '-' or '_', starting with a letter or digit")
    return value


def check_prefix_format(value: str) -> str:
    """An S3 key prefix a task may write under: no traversal, no empty segments."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9/_-]{0,126}", value) or "//" in value \
            or value.endswith("/"):
        raise ValueError("use letters, digits, '-', '_' and single '/' (no '..', no leading or trailing '/')")
    return value


def check_task_prefix(prefix: str, output_prefix: str) -> str:
    """A per-task prefix lives under the stack's output prefix (never under models/, workflows/ or elsewhere)."""
    check_prefix_format(prefix)
    if prefix != output_prefix and not prefix.startswith(f"{output_prefix}/"):
        raise ValueError(f"{prefix!r} is outside the output prefix; use {output_prefix!r} or {output_prefix}/<sub-prefix>")
    return prefix


class SubmitRequest(BaseModel):
    """Body of `POST /v1/tasks`. `payload` is the runtime's native body (A1111 JSON or a ComfyUI workflow)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: str = Field(min_length=1, max_length=40)
    task_type: TaskType = "text-to-image"
    id: str | None = None
    prefix: str | None = Field(None, description="where outputs go: the stack's output prefix (the default) or a "
                                                 "prefix under it, e.g. `outputs/project-x`")
    priority: Literal["normal", "high"] = "normal"
    ttl_seconds: int | None = Field(None, ge=1, le=14 * 24 * 3600)
    callback_url: str | None = None
    context: dict[str, Any] | str | None = None
    notify_events: tuple[NotifyEvent, ...] = Field(
        ("completed",), description="which notifications (and webhook calls) this task sends: add 'running' for one "
        "when it starts; 'completed' is the terminal one (completed, failed, cancelled, expired)")
    notification_format: NotificationFormat = Field(
        "sdlab", description="'guidance': notifications also carry the public guidance's result, image_url, output_url")
    preview: bool = Field(False, description="keep a small preview image of the running generation (GET shows preview_url), "
                          "where the runtime offers one")
    payload: dict[str, Any]

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        return None if value is None else check_task_id(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        return None if value is None else check_prefix_format(value)

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https://[^\s/?#]+[^\s]*", value):
            raise ValueError("must be an https:// URL")
        return value


class TaskMessage(BaseModel):
    """What the API publishes to the `tasks` topic and the agent receives from its queue."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: int = CONTRACT_VERSION
    id: str
    runtime: str
    task_type: TaskType
    prefix: str
    priority: Literal["normal", "high"] = "normal"
    payload: dict[str, Any]
    context: dict[str, Any] | str | None = None
    submitted_at: float
    ttl_seconds: int | None = None
    callback_url: str | None = None
    notify_events: tuple[NotifyEvent, ...] = ("completed",)
    notification_format: NotificationFormat = "sdlab"
    preview: bool = False

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_task_id(value)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_prefix_format(value)

    def expired(self, now: float | None = None) -> bool:
        return self.ttl_seconds is not None and (now or time.time()) > self.submitted_at + self.ttl_seconds


class Timings(BaseModel):
    queued_s: float | None = None
    run_s: float | None = None


class Progress(BaseModel):
    """How far a running task is, as its runtime reports it (written at most once a second per task)."""

    fraction: float = Field(ge=0.0, le=1.0, description="0..1 of the whole task")
    step: int | None = Field(None, description="sampling steps done (of the current image or node)")
    steps: int | None = Field(None, description="sampling steps in total (of the current image or node)")
    preview: str | None = Field(None, description="s3:// URI of the latest preview image (tasks that asked for one)")
    updated_at: float


class Receipt(BaseModel):
    """The work a task took and what it cost, estimated from the price table (sdlab/deploy/data/prices.yaml)."""

    runtime: str
    instance_type: str = Field(description="'local' on a workstation, 'unknown' where no node could be identified")
    capacity_type: str = Field(description="'spot', 'on-demand', 'local' or 'unknown'")
    gpu_s: float = Field(description="GPU-seconds: the runtime call's duration divided among the tasks it batched")
    queued_s: float | None = None
    run_s: float | None = None
    batch: int = 1
    usd_per_hour: float | None = Field(None, description="price of one GPU of the node; None when not known")
    cost_usd: float | None = None
    price_source: str = ""


class Notification(BaseModel):
    """Published on the `results` topic with message attributes `runtime` and `status`."""

    model_config = ConfigDict(extra="ignore")

    version: int = CONTRACT_VERSION
    id: str
    runtime: str
    status: TaskStatus
    images: list[str] = []
    output_location: str | None = None
    error: str | None = None
    timings: Timings = Timings()
    context: dict[str, Any] | str | None = None
    receipt: Receipt | None = None
    # the public guidance's notification fields, present when the task asked for notification_format 'guidance'
    result: bool | None = None
    image_url: list[str] | None = None
    output_url: str | None = None

    def with_guidance_fields(self, result_uri: str) -> Notification:
        """The same notification with the guidance's fields filled in (its consumers read those)."""
        return self.model_copy(update={"result": self.status == TaskStatus.COMPLETED, "image_url": list(self.images),
                                       "output_url": result_uri})


# -- answers of the HTTP API (sdlab/api/handlers.py); `sdlab api openapi` publishes them ----------------------------
class Accepted(BaseModel):
    """`POST /v1/tasks`: 202 for a new task, 200 for an identical repeat of an accepted one (idempotent `id`)."""

    id: str
    status: TaskStatus
    status_url: str
    output_location: str


class TaskRecord(BaseModel):
    """`GET /v1/tasks/{id}` (and the answer of DELETE): the task record, with presigned `image_urls` on GET."""

    model_config = ConfigDict(extra="allow")

    id: str
    runtime: str
    status: TaskStatus
    task_type: TaskType | None = None
    prefix: str | None = None
    priority: Literal["normal", "high"] | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    queued_s: float | None = None
    run_s: float | None = None
    attempts: int | None = None
    output_location: str | None = None
    images: list[str] | None = None
    image_count: int | None = None
    image_urls: list[str] | None = None
    preview_url: str | None = Field(None, description="presigned URL of progress.preview")
    error: str | None = None
    context: dict[str, Any] | str | None = None
    progress: Progress | None = None
    receipt: Receipt | None = None
    api_key_id: str | None = Field(None, description="a non-reversible id of the API key that submitted it")


class TaskList(BaseModel):
    """`GET /v1/tasks?runtime=`: newest first; `next_token` continues the listing (null at the end)."""

    tasks: list[dict[str, Any]]
    next_token: str | None


class UsageTotals(BaseModel):
    tasks: int
    images: int
    gpu_s: float
    cost_usd: float
    unpriced_gpu_s: float = Field(description="GPU-seconds on nodes with no price on file (not in cost_usd)")
    by_status: dict[str, int]


class UsageReport(BaseModel):
    """`GET /v1/usage`: tasks that ended in [since, until), with their receipts added up."""

    since: float
    until: float
    total: UsageTotals
    by_api_key: dict[str, UsageTotals]
    by_runtime: dict[str, UsageTotals]


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = Field(None, description="the request field at fault, e.g. payload.steps")


class ErrorBody(BaseModel):
    """Every error the API function answers."""

    error: ErrorDetail


class GatewayError(BaseModel):
    """What API Gateway itself answers (403 without a valid x-api-key, 413 over its size limit)."""

    message: str


class V1Alpha2Metadata(BaseModel):
    id: str | None = None
    runtime: str
    tasktype: TaskType = "text-to-image"
    prefix: str | None = None
    context: dict[str, Any] | str | None = None


class V1Alpha2Task(BaseModel):
    metadata: V1Alpha2Metadata
    content: dict[str, Any]


class V1Alpha2Request(BaseModel):
    """The public guidance's v1alpha2 body."""

    task: V1Alpha2Task


class V1Alpha2Accepted(BaseModel):
    id: str
    runtime: str
    output_location: str
    status_url: str


class V1Alpha1Request(BaseModel):
    """The public guidance's legacy v1alpha1 body: an SD WebUI request with routing fields in alwayson_scripts
    (task, sd_model_checkpoint, id_task, save_dir, optional image_link)."""

    model_config = ConfigDict(extra="allow")

    alwayson_scripts: dict[str, Any]


class V1Alpha1Accepted(BaseModel):
    id_task: str
    sd_model_checkpoint: str
    runtime: str
    output_location: str
    status_url: str


def bare_model_name(name: str) -> str:
    """`"v1-5.safetensors [6ce0161689]"` -> `"v1-5"`: A1111 model titles carry a hash and often an extension."""
    name = name.strip()
    if name.endswith("]") and " [" in name:
        name = name[: name.rindex(" [")]
    for ext in (".safetensors", ".ckpt"):
        name = name.removesuffix(ext)
    return name


def output_prefix(prefix: str, task_id: str) -> str:
    """`<prefix>/<id>/`: everything a task writes lives under it."""
    return f"{prefix}/{task_id}/"


def image_key(prefix: str, task_id: str, n: int) -> str:
    """Deterministic image key: a redelivered message overwrites, never duplicates."""
    return f"{prefix}/{task_id}/{n}.png"


def preview_key(prefix: str, task_id: str) -> str:
    return f"{prefix}/{task_id}/preview.png"


def result_key(prefix: str, task_id: str) -> str:
    return f"{prefix}/{task_id}/result.json"


def json_schemas() -> dict[str, dict]:
    """JSON Schemas of every contract, keyed by name."""
    return {
        "SubmitRequest": SubmitRequest.model_json_schema(),
        "TaskMessage": TaskMessage.model_json_schema(),
        "Notification": Notification.model_json_schema(),
        "Receipt": Receipt.model_json_schema(),
        "Progress": Progress.model_json_schema(),
    }
