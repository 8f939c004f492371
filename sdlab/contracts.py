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


def output_prefix(prefix: str, task_id: str) -> str:
    """`<prefix>/<id>/`: everything a task writes lives under it."""
    return f"{prefix}/{task_id}/"


def image_key(prefix: str, task_id: str, n: int) -> str:
    """Deterministic image key: a redelivered message overwrites, never duplicates."""
    return f"{prefix}/{task_id}/{n}.png"


def result_key(prefix: str, task_id: str) -> str:
    return f"{prefix}/{task_id}/result.json"


def json_schemas() -> dict[str, dict]:
    """JSON Schemas of every contract, keyed by name."""
    return {
        "SubmitRequest": SubmitRequest.model_json_schema(),
        "TaskMessage": TaskMessage.model_json_schema(),
        "Notification": Notification.model_json_schema(),
    }
