"""The callback dispatcher: notifications from the `results` topic → signed POSTs to each task's `callback_url`.

`handler` is a Lambda handler for an SQS event source (the `<stack>-callbacks` queue, subscribed to `results`);
it reports only the failed items (`batchItemFailures`) after pushing each failed message's next attempt out with
exponential backoff and jitter. After `MAX_ATTEMPTS` a message goes to the callbacks DLQ with its reason and
the task record notes `callback_status: failed`. Locally, `main()` polls the queue and calls the same handler
with SQS-shaped events, as Lambda's event source mapping does.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from sdlab import envvars
from sdlab.aws import AwsTarget, client
from sdlab.callbacks import CallbackRefused, Destination, check_destination, sign
from sdlab.errors import ConfigError

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 900.0
TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class CallbackSettings:
    target: AwsTarget
    queue_url: str
    dlq_url: str | None
    table: str
    secret: str
    allow_private: bool = False
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CallbackSettings:
        names = (envvars.CALLBACK_QUEUE_URL, envvars.TASK_TABLE, envvars.CALLBACK_SECRET)
        missing = [n for n in names if not env.get(n)]
        if missing:
            raise ConfigError([f"{n} is not set" for n in missing], "callback dispatcher")
        return cls(
            target=AwsTarget.from_env(),
            queue_url=env[envvars.CALLBACK_QUEUE_URL],
            dlq_url=env.get(envvars.CALLBACK_DLQ_URL) or None,
            table=env[envvars.TASK_TABLE],
            secret=env[envvars.CALLBACK_SECRET],
            allow_private=env.get(envvars.CALLBACK_ALLOW_PRIVATE) == "1",
            ca_bundle=env.get(envvars.CALLBACK_CA_BUNDLE) or None,
        )


@functools.cache
def _settings() -> CallbackSettings:
    return CallbackSettings.from_env()


def deliver(http: httpx.Client, url: str, body: bytes, secret: str, *, allow_private: bool) -> None:
    """One signed POST to the address `check_destination` approved; raises on anything but a 2xx answer."""
    post(http, check_destination(url, allow_private=allow_private), body, secret)


def post(http: httpx.Client, dest: Destination, body: bytes, secret: str) -> None:
    """POST to `dest.address` itself, with the URL's host in `Host` and as the TLS server name (SNI and
    certificate check): the name is never resolved again, so it cannot be re-pointed after the check."""
    headers = {"Host": dest.host_header(), "Content-Type": "application/json", **sign(secret, body)}
    addresses = (dest.address, *dest.fallbacks)
    for n, address in enumerate(addresses):  # ("localhost": ::1, then 127.0.0.1), all of them checked
        try:
            reply = http.post(dest.pinned_url(address), content=body, headers=headers,
                              extensions={"sni_hostname": dest.host})
            break
        except httpx.ConnectError:
            if n == len(addresses) - 1:
                raise
    if not 200 <= reply.status_code < 300:
        raise httpx.HTTPStatusError(f"callback answered {reply.status_code}", request=reply.request, response=reply)


def handle_record(record: Mapping[str, Any], settings: CallbackSettings, http: httpx.Client, db: Any, sqs: Any) -> bool:
    """Deliver one notification's callback. True when done (delivered, not wanted, or given up)."""
    body = record["body"].encode()
    try:
        task_id = json.loads(body)["id"]
        if not isinstance(task_id, str):
            raise TypeError("id is not a string")
    except (ValueError, KeyError, TypeError) as err:  # not a notification: no attempt can succeed
        _park(settings, sqs, record["body"], f"not a notification ({type(err).__name__}: {err})")
        log.error("callbacks message %s is not a notification; moved to the DLQ", record.get("messageId"))
        return True
    item = db.get_item(TableName=settings.table, Key={"id": {"S": task_id}},
                       ProjectionExpression="callback_url").get("Item", {})
    url = item.get("callback_url", {}).get("S")
    if not url:
        return True
    attempt = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
    try:
        deliver(http, url, body, settings.secret, allow_private=settings.allow_private)
        _note(db, settings.table, task_id, "delivered", attempt)
        log.info("callback delivered for task %s (attempt %d)", task_id, attempt)
        return True
    except (httpx.HTTPError, CallbackRefused) as err:
        reason = f"{type(err).__name__}: {err}"
        if isinstance(err, CallbackRefused) or attempt >= MAX_ATTEMPTS:
            _note(db, settings.table, task_id, "failed", attempt, reason)
            _park(settings, sqs, record["body"], reason)
            log.error("callback for task %s given up after %d attempt(s): %s", task_id, attempt, reason)
            return True
        delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        sqs.change_message_visibility(QueueUrl=settings.queue_url, ReceiptHandle=record["receiptHandle"],
                                      VisibilityTimeout=int(delay))
        log.warning("callback for task %s failed (attempt %d), next in %.0f s: %s", task_id, attempt, delay, reason)
        return False


def _park(settings: CallbackSettings, sqs: Any, body: str, reason: str) -> None:
    """Copy a message the dispatcher gives up on to the callbacks DLQ, with its reason."""
    if settings.dlq_url:
        sqs.send_message(QueueUrl=settings.dlq_url, MessageBody=body, MessageAttributes={
            "reason": {"DataType": "String", "StringValue": reason[:1000]}})


def _note(db: Any, table: str, task_id: str, status: str, attempts: int, error: str | None = None) -> None:
    values: dict[str, Any] = {":s": {"S": status}, ":a": {"N": str(attempts)}}
    expr = "SET callback_status = :s, callback_attempts = :a"
    if error:
        values[":e"] = {"S": error[:1000]}
        expr += ", callback_error = :e"
    db.update_item(TableName=table, Key={"id": {"S": task_id}}, UpdateExpression=expr, ExpressionAttributeValues=values)


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point (SQS event source with ReportBatchItemFailures)."""
    settings = _settings()
    db, sqs = client("dynamodb", settings.target), client("sqs", settings.target)
    failures = []
    with httpx.Client(timeout=TIMEOUT_SECONDS, verify=settings.ca_bundle or True, follow_redirects=False) as http:
        for record in event.get("Records", []):
            try:
                done = handle_record(record, settings, http, db, sqs)
            except Exception:  # a bad record must not fail its batch-mates
                log.exception("callback record %s failed", record.get("messageId"))
                done = False
            if not done:
                failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


def _as_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """SQS messages in the shape Lambda's event source mapping delivers them."""
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": m.get("Attributes", {}), "messageAttributes": {}, "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn, "md5OfBody": m.get("MD5OfBody"),
    } for m in messages]}


def main(argv: list[str] | None = None) -> None:
    """Local event source mapping: poll the callbacks queue, call `handler`, delete what succeeded."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = _settings()
    sqs = client("sqs", settings.target)
    arn = sqs.get_queue_attributes(QueueUrl=settings.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    while True:
        out = sqs.receive_message(QueueUrl=settings.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=5,
                                  MessageSystemAttributeNames=["ApproximateReceiveCount"])
        messages = out.get("Messages", [])
        if not messages:
            continue
        failed = {f["itemIdentifier"] for f in handler(_as_event(messages, arn))["batchItemFailures"]}
        for m in messages:
            if m["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=settings.queue_url, ReceiptHandle=m["ReceiptHandle"])


if __name__ == "__main__":
    main()
