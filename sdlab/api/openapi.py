"""The API's OpenAPI 3.1 document, generated from the pydantic contracts (sdlab/contracts.py).

`sdlab api openapi` prints it; tests/integration/test_openapi.py validates live answers of the local stack against
it and checks that docs/api.md describes every route it lists. The notification is published as a webhook.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from sdlab.contracts import (
    CONTRACT_VERSION,
    TASK_ID_RE,
    Accepted,
    ErrorBody,
    GatewayError,
    Notification,
    SubmitRequest,
    TaskList,
    TaskRecord,
    TaskStatus,
    UsageReport,
    V1Alpha1Accepted,
    V1Alpha1Request,
    V1Alpha2Accepted,
    V1Alpha2Request,
)

MODELS: tuple[type[BaseModel], ...] = (
    SubmitRequest, Accepted, TaskRecord, TaskList, UsageReport, ErrorBody, GatewayError, V1Alpha2Request,
    V1Alpha2Accepted, V1Alpha1Request, V1Alpha1Accepted, Notification,
)
ERRORS = {
    400: "invalid request: `error.field` names the field, `error.message` the fix",
    404: "unknown runtime, task or route",
    405: "method not allowed (the Allow header lists the allowed ones)",
    409: "the id was taken by another body, or the task already ended",
    413: "the body is over the size limit",
    415: "the body is not application/json",
    500: "internal error",
    503: "the task could not be queued; retry",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _responses(ok: dict[int, tuple[type[BaseModel], str]], errors: tuple[int, ...]) -> dict[str, Any]:
    out = {str(code): _json(model, text) for code, (model, text) in ok.items()}
    out |= {str(code): _json(ErrorBody, ERRORS[code]) for code in errors}
    out["403"] = _json(GatewayError, "missing or wrong x-api-key (answered by API Gateway)")
    return out


def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    requests = (SubmitRequest, V1Alpha2Request, V1Alpha1Request)
    _, defs = models_json_schema([(m, "validation" if m in requests else "serialization") for m in MODELS],
                                 ref_template="#/components/schemas/{model}")
    schemas = defs["$defs"]
    task_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": TASK_ID_RE.pattern}}
    submit_errors = (400, 404, 409, 413, 415, 500, 503)
    paths: dict[str, Any] = {
        "/v1/tasks": {
            "post": {"summary": "Submit a task", "operationId": "submitTask",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(SubmitRequest)}}},
                     "responses": _responses({202: (Accepted, "accepted and queued"),
                                              200: (Accepted, "an identical repeat of an accepted task (idempotent id)")},
                                             submit_errors)},
            "get": {"summary": "List a runtime's tasks, newest first", "operationId": "listTasks",
                    "parameters": [
                        _query("runtime", "the runtime", {"type": "string"}, required=True),
                        _query("status", "only tasks in this status", {"type": "string", "enum": [s.value for s in TaskStatus]}),
                        _query("limit", "tasks per page", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
                        _query("next_token", "from the previous page", {"type": "string"})],
                    "responses": _responses({200: (TaskList, "a page of tasks")}, (400, 404, 500))},
        },
        "/v1/tasks/{id}": {
            "get": {"summary": "A task's status, progress, receipt and image URLs", "operationId": "getTask",
                    "parameters": [task_id],
                    "responses": _responses({200: (TaskRecord, "the task record")}, (400, 404, 500))},
            "delete": {"summary": "Cancel a queued or running task", "operationId": "cancelTask", "parameters": [task_id],
                       "responses": _responses({200: (TaskRecord, "cancelled")}, (400, 404, 409, 500))},
        },
        "/v1/usage": {
            "get": {"summary": "GPU-seconds and estimated cost per API key and per runtime", "operationId": "getUsage",
                    "parameters": [
                        _query("since", "unix seconds or ISO 8601 (default: 30 days before until)", {"type": "string"}),
                        _query("until", "unix seconds or ISO 8601 (default: now)", {"type": "string"})],
                    "responses": _responses({200: (UsageReport, "the roll-up")}, (400, 500))},
        },
        "/v1alpha2": {
            "post": {"summary": "The public guidance's v1alpha2 submit (also at /v1alpha2/)", "operationId": "submitV1alpha2",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(V1Alpha2Request)}}},
                     "responses": _responses({200: (V1Alpha2Accepted, "accepted, as the guidance answers")}, submit_errors)},
        },
        "/v1alpha1": {
            "post": {"summary": "The public guidance's legacy v1alpha1 submit, routed by model", "operationId": "submitV1alpha1",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(V1Alpha1Request)}}},
                     "responses": _responses({200: (V1Alpha1Accepted, "accepted, as the guidance answers")}, submit_errors)},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "sdlab task API", "version": str(CONTRACT_VERSION),
                 "description": "Asynchronous Stable Diffusion tasks. Notifications go to the results topic (SNS) and, "
                                "for tasks with a callback_url, to that URL as signed webhooks."},
        "security": [{"apiKey": []}],
        "paths": paths,
        "webhooks": {"notification": {"post": {
            "summary": "A task's notification (results topic; callback_url)",
            "requestBody": {"content": {"application/json": {"schema": _ref(Notification)}}},
            "responses": {"200": {"description": "received"}}}}},
        "components": {"schemas": schemas,
                       "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
    }


def response_schema(doc: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    """The JSON Schema of one documented answer, with the components it refers to (for validators)."""
    schema = doc["paths"][path][method.lower()]["responses"][str(status)]["content"]["application/json"]["schema"]
    return {**schema, "components": doc["components"]}
