"""`sdlab.Client`: submit tasks over the HTTP API, wait for their notifications, fetch their images.

Notifications arrive on a private SQS queue (the client's inbox) subscribed to the `results` topic, the way a
user's own service would consume them. The inbox is made on first submit, so no notification can be missed,
and deleted by `close()` (the client is a context manager). A client that never closes (a crashed notebook) leaves
its inbox behind: each inbox is tagged with when it was last used, and every new client deletes the stack's
inboxes idle longer than `inbox_idle_seconds` (retention.inbox_idle_hours), with their subscriptions.
"""

from __future__ import annotations

import builtins
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from sdlab.aws import AwsTarget, client
from sdlab.contracts import Notification
from sdlab.errors import SdlabError
from sdlab.local.stack import read_stack
from sdlab.provision import allow_topic_to_send, ensure_queue, ensure_subscription

INBOX_IDLE_SECONDS = 24 * 3600
LAST_USED_TAG = "sdlab:inbox-last-used"
TOUCH_EVERY_SECONDS = 60.0


def prune_inboxes(target: AwsTarget, stack: str, results_topic_arn: str, idle_seconds: float,
                  now: float | None = None) -> list[str]:
    """Delete the stack's client inboxes unused for `idle_seconds`, and their subscriptions; returns their URLs."""
    sqs, sns = client("sqs", target), client("sns", target)
    now = time.time() if now is None else now
    urls = sqs.list_queues(QueueNamePrefix=f"{stack}-inbox-").get("QueueUrls", [])
    idle = []
    for url in urls:
        tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
        try:
            last = float(tags.get(LAST_USED_TAG, "0"))
        except ValueError:
            last = 0.0
        if now - last > idle_seconds:
            idle.append(url)
    if not idle:
        return []
    arns = {sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]: u for u in idle}
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=results_topic_arn):
        for sub in page["Subscriptions"]:
            if sub["Endpoint"] in arns and sub["SubscriptionArn"].startswith("arn:"):
                sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"])
    for url in idle:
        sqs.delete_queue(QueueUrl=url)
    return idle


class ApiError(SdlabError):
    """The API refused a request; `status`, `field` and `message` come from its answer."""

    def __init__(self, status: int, body: Any) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.field = err.get("field")
        self.message = err.get("message") or (body.get("message") if isinstance(body, dict) else str(body))
        super().__init__(f"HTTP {status}: {self.message}")


@dataclass(frozen=True)
class Submitted:
    id: str
    runtime: str
    status_url: str
    output_location: str
    submitted_at: float


class Client:
    def __init__(self, api_url: str, api_key: str, target: AwsTarget, bucket: str, results_topic_arn: str,
                 stack: str = "sdlab", inbox_idle_seconds: float = INBOX_IDLE_SECONDS) -> None:
        self.api_url = api_url.rstrip("/")
        self.target = target
        self.bucket = bucket
        self._http = httpx.Client(headers={"x-api-key": api_key}, timeout=30.0)
        self._results_topic_arn = results_topic_arn
        self._stack = stack
        self._sqs = client("sqs", target)
        self._s3 = client("s3", target)
        self._inbox: tuple[str, str] | None = None  # (queue url, subscription arn)
        self._inbox_idle_seconds = inbox_idle_seconds
        self._touched = 0.0
        self._seen: dict[str, Notification] = {}
        self.events: list[Notification] = []  # non-terminal notifications (`running`) the inbox received

    @classmethod
    def from_stack(cls, home: str | None = None) -> Client:
        """A client for the local stack started by `sdlab up`."""
        stack = read_stack(home)
        if stack is None:
            raise SdlabError("no local stack is running; start one with `sdlab up`")
        return cls(stack["api_url"], stack["api_key"], AwsTarget(stack["region"], stack["aws_endpoint_url"]),
                   stack["bucket"], stack["results_topic_arn"], stack["stack"])

    # -- inbox -------------------------------------------------------------------------------------
    def _ensure_inbox(self) -> str:
        if self._inbox is None:
            prune_inboxes(self.target, self._stack, self._results_topic_arn, self._inbox_idle_seconds)
            name = f"{self._stack}-inbox-{uuid.uuid4().hex[:12]}"
            url, arn = ensure_queue(self._sqs, name, {"MessageRetentionPeriod": "3600"}, self._stack)
            allow_topic_to_send(self._sqs, url, arn, self._results_topic_arn)
            sub = ensure_subscription(client("sns", self.target), self._results_topic_arn, arn, None)
            self._inbox = (url, sub)
        self._touch()
        return self._inbox[0]

    def _touch(self) -> None:
        """Mark the inbox used (at most once a minute), so other clients' pruning leaves it alone."""
        if self._inbox is not None and time.monotonic() - self._touched > TOUCH_EVERY_SECONDS:
            self._sqs.tag_queue(QueueUrl=self._inbox[0], Tags={LAST_USED_TAG: str(int(time.time()))})
            self._touched = time.monotonic()

    def inbox(self) -> str:
        """The inbox queue's URL, made now if not yet: from then on every notification reaches it, whoever submitted."""
        return self._ensure_inbox()

    def close(self) -> None:
        """Delete the inbox queue and its subscription."""
        if self._inbox is not None:
            url, sub = self._inbox
            client("sns", self.target).unsubscribe(SubscriptionArn=sub)
            self._sqs.delete_queue(QueueUrl=url)
            self._inbox = None
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API ---------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self._http.request(method, f"{self.api_url}{path}", **kwargs)
        body = reply.json() if reply.headers.get("content-type", "").startswith("application/json") else reply.text
        if reply.status_code >= 400:
            raise ApiError(reply.status_code, body)
        return body

    def submit(self, runtime: str, prompt: str | None = None, *, payload: dict[str, Any] | None = None,
               task_type: str = "text-to-image", **fields: Any) -> Submitted:
        """Submit one task. `prompt` fills `payload.prompt`; other keyword arguments are request fields
        (`id`, `priority`, `ttl_seconds`, `callback_url`, `context`, `prefix`)."""
        self._ensure_inbox()
        body_payload = dict(payload or {})
        if prompt is not None:
            body_payload["prompt"] = prompt
        body = {"runtime": runtime, "task_type": task_type, "payload": body_payload, **fields}
        answer = self._call("POST", "/v1/tasks", json=body)
        return Submitted(answer["id"], runtime, answer["status_url"], answer["output_location"], time.time())

    def usage(self, since: float | str | None = None, until: float | str | None = None) -> dict[str, Any]:
        """Work and estimated cost of the tasks that ended in [since, until), per API key and per runtime."""
        params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
        return self._call("GET", "/v1/usage", params=params)

    def status(self, task_id: str) -> dict[str, Any]:
        """The task record: status, timings, error, presigned image URLs."""
        return self._call("GET", f"/v1/tasks/{task_id}")

    def follow(self, task_id: str, every: float = 0.5, timeout: float = 600.0) -> Iterator[dict[str, Any]]:
        """The task's record every `every` s until it ends (the last one yielded is the ending): for progress bars,
        e.g. `for r in client.follow(id): bar.n = round(100 * (r.get("progress") or {}).get("fraction", 0))`."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.status(task_id)
            yield record
            if record["status"] not in ("queued", "running"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still {record['status']} after {timeout:.0f} s")
            time.sleep(every)

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a queued or running task; raises ApiError 409 if it already ended."""
        return self._call("DELETE", f"/v1/tasks/{task_id}")

    def list(self, runtime: str, *, status: str | None = None, limit: int = 50) -> builtins.list[dict[str, Any]]:
        """Recent tasks of `runtime`, newest first, following pages up to `limit` tasks."""
        tasks: builtins.list[dict[str, Any]] = []
        params: dict[str, Any] = {"runtime": runtime, "limit": min(limit, 200)}
        if status:
            params["status"] = status
        while len(tasks) < limit:
            page = self._call("GET", "/v1/tasks", params=params)
            tasks += page["tasks"]
            if not page["next_token"]:
                break
            params["next_token"] = page["next_token"]
        return tasks[:limit]

    def wait(self, task_ids: builtins.list[str] | str, timeout: float = 300.0,
             progress: Callable[[dict[str, Notification]], None] | None = None) -> dict[str, Notification]:
        """Block until a notification for every id arrived (or raise TimeoutError naming the missing ones).

        `progress`, when given, is called with the notifications received so far for these ids, at least every
        2 s while waiting (`sdlab.workshop.progress.TaskBars` draws a tqdm bar per task from it)."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        inbox = self._ensure_inbox()
        deadline = time.monotonic() + timeout
        poll_seconds = 2 if progress else 5
        while any(i not in self._seen for i in ids):
            if progress:
                progress({i: self._seen[i] for i in ids if i in self._seen})
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [i for i in ids if i not in self._seen]
                raise TimeoutError(f"no notification within {timeout:.0f} s for {len(missing)} task(s): {missing[:5]}")
            out = self._sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10,
                                            WaitTimeSeconds=min(poll_seconds, max(1, int(left))))
            for msg in out.get("Messages", []):
                note = Notification.model_validate(json.loads(msg["Body"]))
                if note.status.terminal:
                    self._seen[note.id] = note
                else:
                    self.events.append(note)
                self._sqs.delete_message(QueueUrl=inbox, ReceiptHandle=msg["ReceiptHandle"])
        done = {i: self._seen[i] for i in ids}
        if progress:
            progress(done)
        return done

    def image_bytes(self, note: Notification) -> builtins.list[bytes]:
        out = []
        for uri in note.images:
            bucket, key = uri.removeprefix("s3://").split("/", 1)
            out.append(self._s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        return out

    def images(self, note: Notification) -> builtins.list[Any]:
        """The task's images as PIL images."""
        from PIL import Image

        return [Image.open(io.BytesIO(data)) for data in self.image_bytes(note)]
