"""The task table (DynamoDB): one item per task, status changes guarded by conditions.

Conditional writes are what make redelivery safe: a finished task cannot be moved back to `running`,
and only one writer can move a task to a terminal status.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from sdlab.contracts import TERMINAL, TaskStatus

RECORD_RETENTION_SECONDS = 7 * 24 * 3600


class TaskExists(Exception):
    """A task with this id was already submitted."""


class TransitionRefused(Exception):
    """The record is not in a state that allows the change (e.g. it is already terminal)."""

    def __init__(self, task_id: str, current: dict[str, Any] | None) -> None:
        self.current = current
        super().__init__(f"task {task_id}: transition refused, record is {current and current.get('status')}")


def _plain(value: Any) -> Any:
    """DynamoDB returns Decimals; callers want ints and floats."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_dynamo(v) for v in value]
    return value


class TaskStore:
    """Typed access to the task table through a boto3 DynamoDB client."""

    def __init__(self, dynamodb: Any, table: str, retention_seconds: int = RECORD_RETENTION_SECONDS) -> None:
        self._db = dynamodb
        self._table = table
        self._retention = retention_seconds

    def create(self, record: dict[str, Any]) -> None:
        """Insert a new `queued` record (expiring through the table's TTL); raises TaskExists if the id is taken."""
        item = {**record, "status": TaskStatus.QUEUED.value,
                "expires_at": int(time.time()) + self._retention}
        try:
            self._db.put_item(
                TableName=self._table, Item=_serialize(item), ConditionExpression="attribute_not_exists(id)"
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise TaskExists(record["id"]) from err
            raise

    def get(self, task_id: str) -> dict[str, Any] | None:
        out = self._db.get_item(TableName=self._table, Key={"id": {"S": task_id}}, ConsistentRead=True)
        return _deserialize(out["Item"]) if "Item" in out else None

    def list_runtime(self, runtime: str, *, status: str | None = None, limit: int = 50,
                     start_key: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Newest first, from the `by_runtime` index; returns (records, key to continue from or None)."""
        kwargs: dict[str, Any] = {
            "TableName": self._table, "IndexName": "by_runtime", "ScanIndexForward": False, "Limit": limit,
            "KeyConditionExpression": "#rt = :rt", "ExpressionAttributeNames": {"#rt": "runtime"},
            "ExpressionAttributeValues": {":rt": {"S": runtime}},
        }
        if status:
            kwargs["FilterExpression"] = "#st = :st"
            kwargs["ExpressionAttributeNames"]["#st"] = "status"
            kwargs["ExpressionAttributeValues"][":st"] = {"S": status}
        if start_key:
            kwargs["ExclusiveStartKey"] = start_key
        out = self._db.query(**kwargs)
        return [_deserialize(item) for item in out.get("Items", [])], out.get("LastEvaluatedKey")

    def delete(self, task_id: str) -> None:
        self._db.delete_item(TableName=self._table, Key={"id": {"S": task_id}})

    def transition(self, task_id: str, to: TaskStatus, allowed_from: set[TaskStatus], **fields: Any) -> dict[str, Any]:
        """Set status `to` (plus `fields`) only if the current status is in `allowed_from`. Returns the new record."""
        values = {"status": to.value, **fields}
        names = {f"#k{i}": k for i, k in enumerate(values)}
        exprs = {f":v{i}": v for i, v in enumerate(values.values())}
        sets = ", ".join(f"#k{i} = :v{i}" for i in range(len(values)))
        froms = {f":from{i}": s.value for i, s in enumerate(sorted(allowed_from, key=lambda s: s.value))}
        try:
            out = self._db.update_item(
                TableName=self._table,
                Key={"id": {"S": task_id}},
                UpdateExpression=f"SET {sets}",
                ConditionExpression=f"attribute_exists(id) AND #status IN ({', '.join(froms)})",
                ExpressionAttributeNames={**names, "#status": "status"},
                ExpressionAttributeValues=_serialize({**exprs, **froms}),
                ReturnValues="ALL_NEW",
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise TransitionRefused(task_id, self.get(task_id)) from err
            raise
        return _deserialize(out["Attributes"])

    def mark_notified(self, task_id: str) -> None:
        """Record that the task's terminal notification was published (a redelivered message then sends none)."""
        self._db.update_item(
            TableName=self._table, Key={"id": {"S": task_id}}, UpdateExpression="SET notified_at = :t",
            ConditionExpression="attribute_exists(id)", ExpressionAttributeValues={":t": {"N": repr(time.time())}},
        )

    def set_progress(self, task_id: str, progress: dict[str, Any]) -> bool:
        """Write a running task's progress; False (nothing written) once the task is no longer running."""
        try:
            self._db.update_item(
                TableName=self._table, Key={"id": {"S": task_id}}, UpdateExpression="SET progress = :p",
                ConditionExpression="#status = :running", ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=_serialize({":p": progress, ":running": TaskStatus.RUNNING.value}),
            )
        except ClientError as err:
            if err.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def ended_between(self, since: float, until: float, fields: tuple[str, ...]) -> list[dict[str, Any]]:
        """Records that ended in [since, until), with only `fields` (a scan: usage reports, not hot paths)."""
        names = {f"#f{i}": f for i, f in enumerate(fields)}
        kwargs: dict[str, Any] = {
            "TableName": self._table, "FilterExpression": "#fin >= :since AND #fin < :until",
            "ProjectionExpression": ", ".join(names), "ExpressionAttributeNames": {**names, "#fin": "finished_at"},
            "ExpressionAttributeValues": _serialize({":since": float(since), ":until": float(until)}),
        }
        out: list[dict[str, Any]] = []
        for page in self._db.get_paginator("scan").paginate(**kwargs):
            out += [_deserialize(item) for item in page.get("Items", [])]
        return out

    def start(self, task_id: str, **fields: Any) -> dict[str, Any]:
        """queued -> running (a redelivered `running` task may be restarted by another agent)."""
        return self.transition(task_id, TaskStatus.RUNNING, {TaskStatus.QUEUED, TaskStatus.RUNNING}, **fields)

    def finish(self, task_id: str, status: TaskStatus, **fields: Any) -> dict[str, Any]:
        """Move to a terminal status exactly once."""
        assert status in TERMINAL, status
        return self.transition(task_id, status, {TaskStatus.QUEUED, TaskStatus.RUNNING}, **fields)


def _serialize(item: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeSerializer

    ser = TypeSerializer()
    return {k: ser.serialize(v) for k, v in _dynamo(item).items()}


def _deserialize(item: dict[str, Any]) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeDeserializer

    de = TypeDeserializer()
    return _plain({k: de.deserialize(v) for k, v in item.items()})
