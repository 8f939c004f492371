"""A stack for fault injection: one moto server for the session; per test, provisioning under a stack name of its
own, the API gateway, and runtimes and agents that each test starts, kills and restarts itself. Runtimes are
`agent.bench.fixed_runtime` (a fixed time per image, misbehaving on request through `fault:` prompts), so faults
are deterministic and fast."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdlab import envvars
from sdlab.aws import AwsTarget, client
from sdlab.client import ApiError, Client
from sdlab.config import parse_config
from sdlab.contracts import Notification, TaskMessage
from sdlab.local import motoserver
from sdlab.local.processes import Proc, alive, free_port, http_ok, spawn, stop, wait_until
from sdlab.provision import provision
from sdlab.wiring import Endpoints, agent_environment, api_environment

pytestmark = pytest.mark.faults

FAULT_CONFIG = {
    "stack": {"name": "faults", "region": "us-east-1"},
    "runtimes": [
        {"name": "rt-a", "model": {"name": "fixed"},
         "queue": {"visibility_timeout_seconds": 4, "max_receive_count": 3, "receive_wait_seconds": 1}},
        {"name": "rt-b", "model": {"name": "fixed"},
         "queue": {"visibility_timeout_seconds": 4, "max_receive_count": 3, "receive_wait_seconds": 1}},
    ],
}


_STACKS = itertools.count(1)


class FaultStack:
    """Handles to everything; processes are started on demand and all stopped at teardown."""

    def __init__(self, home: Path, endpoint: str) -> None:
        self.home = home
        # a name of its own: tests share one moto server, never a queue, table, topic or bucket
        self.settings = parse_config({**FAULT_CONFIG, "stack": {**FAULT_CONFIG["stack"], "name": f"faults-{next(_STACKS)}"}})
        self.target = AwsTarget("us-east-1", endpoint)
        self.resources = provision(self.settings, self.target)
        self.procs: list[tuple[Proc, subprocess.Popen[bytes]]] = []
        self.runtime_urls: dict[str, str] = {}  # the runtime agents of that runtime use unless told otherwise
        self.runtime_instances: dict[str, set[str]] = {}  # every runtime process's URL, per runtime
        self.runtime_state = home / "runtime-state"  # `fault:exit` crashes once across restarts
        self.runtime_state.mkdir(parents=True, exist_ok=True)
        self.api_key = secrets.token_urlsafe(16)
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        env = {**api_environment(self.settings, self.resources, self.target), envvars.API_KEYS: self.api_key,
               envvars.STATUS_BASE_URL: self.api_url}
        gateway = self._spawn("gateway", ["-m", "sdlab.api.gateway", "--port", str(port)], env)
        wait_until(http_ok(f"{self.api_url}/_gateway/health"), gateway[1], gateway[0], 60)
        self.client = Client(self.api_url, self.api_key, self.target, self.resources.bucket,
                             self.resources.results_topic_arn, "faults")
        self.client._ensure_inbox()  # subscribe before any task exists: no notification can be missed
        self.sqs = client("sqs", self.target)
        self.notes: list[Notification] = []

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> tuple[Proc, subprocess.Popen[bytes]]:
        pair = spawn(name, args, env, self.home / "logs" / f"{name}.log")
        self.procs.append(pair)
        return pair

    # -- processes --------------------------------------------------------------------------------
    def start_runtime(self, runtime: str, seconds_per_image: float = 0.05, port: int | None = None,
                      extra: bool = False, wait_ready: bool = True) -> tuple[Proc, subprocess.Popen[bytes]]:
        """A fixed-time runtime for `runtime` (restarting on the same port keeps agents pointed at it).
        `extra`: another runtime process beside the first (one per agent, as on EKS: its URL is the Proc's url)."""
        url = None if extra else self.runtime_urls.get(runtime)
        port = port or (int(url.rsplit(":", 1)[1]) if url else free_port())
        url = f"http://127.0.0.1:{port}"
        if not extra:
            self.runtime_urls[runtime] = url
        self.runtime_instances.setdefault(runtime, set()).add(url)
        pair = self._spawn(f"runtime-{runtime}-{len(self.procs)}", ["-m", "agent.bench.fixed_runtime", "--port", str(port),
                           "--seconds-per-image", str(seconds_per_image),
                           "--state-dir", str(self.runtime_state)], {})
        pair[0].url = url
        if wait_ready:
            wait_until(http_ok(f"{url}/sdapi/v1/options"), pair[1], pair[0], 30)
        return pair

    def start_agent(self, runtime: str, wait_ready: bool = True, runtime_url: str | None = None,
                    **env: str) -> tuple[Proc, subprocess.Popen[bytes]]:
        rt = self.settings.runtime(runtime)
        health = free_port()
        url = runtime_url or self.runtime_urls[runtime]
        agent_env = {**agent_environment(self.settings, rt, Endpoints.of_stack(self.resources, runtime), self.target,
                                         runtime_url=url, health_port=health),
                     envvars.AGENT_RUNTIME_TIMEOUT_SECONDS: "5", envvars.AGENT_GRACE_SECONDS: "10",
                     envvars.AGENT_RUNTIME_READY_TIMEOUT_SECONDS: "20", **env}
        pair = self._spawn(f"agent-{runtime}-{len(self.procs)}", ["-m", "agent"], agent_env)
        pair[0].url = f"http://127.0.0.1:{health}"
        if wait_ready:
            wait_until(http_ok(f"{pair[0].url}/readyz"), pair[1], pair[0], 30)
        return pair

    @staticmethod
    def signal(pair: tuple[Proc, subprocess.Popen[bytes]], sig: int = signal.SIGKILL) -> None:
        os.kill(pair[0].pid, sig)

    @staticmethod
    def wait_exit(pair: tuple[Proc, subprocess.Popen[bytes]], timeout: float = 30) -> int:
        return pair[1].wait(timeout)

    # -- observations -----------------------------------------------------------------------------
    def submit(self, runtime: str, prompt: str, **fields: Any) -> str:
        payload = {"steps": 4, "width": 64, "height": 64, "seed": 1, **fields.pop("payload", {})}
        return self.client.submit(runtime, prompt, payload=payload, **fields).id

    @staticmethod
    def metric(agent: tuple[Proc, subprocess.Popen[bytes]], name: str, **labels: str) -> float:
        """A sample of the agent's Prometheus metrics (0 when it has none yet)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(httpx.get(f"{agent[0].url}/metrics", timeout=5).text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def record(self, task_id: str) -> dict[str, Any]:
        return self.client.status(task_id)

    def record_or_none(self, task_id: str) -> dict[str, Any] | None:
        """None while no record exists (a task published straight to SNS gets one from the agent)."""
        try:
            return self.client.status(task_id)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def publish(self, runtime: str | None, body: str) -> None:
        """Publish straight to the tasks topic, as the public guidance lets users do (no API, no record)."""
        attrs = {"runtime": {"DataType": "String", "StringValue": runtime}} if runtime else {}
        client("sns", self.target).publish(TopicArn=self.resources.tasks_topic_arn, Message=body, MessageAttributes=attrs)

    def task_message(self, runtime: str, task_id: str, prompt: str, **fields: Any) -> str:
        """A TaskMessage as the API would publish it, as JSON."""
        return TaskMessage(id=task_id, runtime=runtime, task_type="text-to-image", prefix="outputs",
                           payload={"prompt": prompt, "steps": 4, "width": 64, "height": 64, "seed": 1},
                           submitted_at=time.time(), **fields).model_dump_json(exclude_none=True)

    def objects(self, task_id: str, prefix: str = "outputs") -> list[str]:
        """Every object key under the task's output prefix, sorted."""
        s3 = client("s3", self.target)
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.resources.bucket, Prefix=f"{prefix}/{task_id}/")
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def all_objects(self, prefix: str = "outputs/") -> list[str]:
        s3 = client("s3", self.target)
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.resources.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    @staticmethod
    def ready(pair: tuple[Proc, subprocess.Popen[bytes]]) -> int:
        """The agent's /readyz status code (503 once it is stopping), 0 when it does not answer."""
        try:
            return httpx.get(f"{pair[0].url}/readyz", timeout=2).status_code
        except httpx.HTTPError:
            return 0

    @staticmethod
    def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
        """Poll `check` every `every` s until it returns something truthy (returned); fail naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"{what}: not within {timeout} s")

    def wait_status(self, task_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = self.record_or_none(task_id)
            if rec is not None and rec["status"] in statuses:
                return rec
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} not in {statuses} after {timeout} s: {self.record_or_none(task_id)}")

    def collect_notifications(self, seconds: float = 1.0) -> list[Notification]:
        """Everything that arrived on the results topic so far (kept, so duplicates can be counted)."""
        inbox = self.client._ensure_inbox()
        deadline = time.monotonic() + seconds
        while True:
            # moto delivers SNS → SQS before publish returns: once the wait is over, a short poll sees everything
            wait = 1 if time.monotonic() < deadline else 0
            out = self.sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10, WaitTimeSeconds=wait)
            for msg in out.get("Messages", []):
                self.notes.append(Notification.model_validate(json.loads(msg["Body"])))
            if out.get("Messages"):
                self.sqs.delete_message_batch(QueueUrl=inbox, Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(out["Messages"])])
            if not out.get("Messages") and time.monotonic() >= deadline:
                return self.notes

    def notification_counts(self) -> Counter[str]:
        return Counter(n.id for n in self.notes)

    def dlq(self, runtime: str) -> list[dict[str, Any]]:
        """Messages in the runtime's DLQ (received and made visible again at once)."""
        url = self.resources.queues[runtime].dlq_url
        out = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                       MessageAttributeNames=["All"], VisibilityTimeout=0)
        return out.get("Messages", [])

    def dlq_all(self, runtime: str) -> list[dict[str, Any]]:
        """Every message in the runtime's DLQ (each received once and left invisible: call it once, at the end)."""
        url = self.resources.queues[runtime].dlq_url
        found: list[dict[str, Any]] = []
        while True:
            out = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                           MessageAttributeNames=["All"], VisibilityTimeout=300)
            if not out.get("Messages"):
                return found
            found += out["Messages"]

    @staticmethod
    def runtime_calls_at(url: str) -> Counter[str]:
        """Calls per prompt of one runtime process."""
        return Counter(httpx.get(f"{url}/_stats", timeout=5).json())

    def runtime_calls(self, runtime: str) -> Counter[str]:
        """Calls per prompt, summed over the runtime's processes that are up (a restarted one starts from 0)."""
        calls: Counter[str] = Counter()
        for url in self.runtime_instances[runtime]:
            try:
                calls.update(httpx.get(f"{url}/_stats", timeout=5).json())
            except httpx.ConnectError:
                continue
        return calls

    def queue_depth(self, runtime: str) -> int:
        total = 0
        for url in (self.resources.queues[runtime].url, self.resources.queues[runtime].high_url):
            attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            total += sum(int(v) for v in attrs.values())
        return total

    def close(self) -> None:
        self.client.close()
        # the test is over: SIGKILL spares every test the agents' warm shutdown (~1.5 s; it has tests of its own)
        for proc, _ in self.procs:
            if alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
        left = stop([p for p, _ in self.procs])
        assert not left, f"processes left running: {left}"
        assert not [p.name for p, _ in self.procs if alive(p.pid)]


@pytest.fixture(scope="session")
def faults_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto server for every fault test (each provisions a stack of its own name on it): ~1 s a test saved."""
    server = motoserver.start(tmp_path_factory.mktemp("faults-moto") / "moto.log")
    try:
        yield server.url
    finally:
        assert not server.stop()


@pytest.fixture()
def faultstack(tmp_path: Path, faults_moto: str) -> Iterator[FaultStack]:
    stack = FaultStack(tmp_path, faults_moto)
    try:
        yield stack
    finally:
        stack.close()
