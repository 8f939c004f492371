"""A stack for fault injection: moto server, provisioning, the API gateway, and runtimes and agents that each
test starts, kills and restarts itself. Runtimes are `agent.bench.fixed_runtime` (a fixed time per image,
misbehaving on request through `fault:` prompts), so faults are deterministic and fast."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdlab import envvars
from sdlab.aws import AwsTarget, client
from sdlab.client import Client
from sdlab.config import parse_config
from sdlab.contracts import Notification
from sdlab.local.processes import Proc, alive, free_port, http_ok, spawn, stop, wait_until
from sdlab.provision import provision
from sdlab.wiring import agent_environment, api_environment

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


class FaultStack:
    """Handles to everything; processes are started on demand and all stopped at teardown."""

    def __init__(self, home: Path, endpoint: str) -> None:
        self.home = home
        self.settings = parse_config(FAULT_CONFIG)
        self.target = AwsTarget("us-east-1", endpoint)
        self.resources = provision(self.settings, self.target)
        self.procs: list[tuple[Proc, subprocess.Popen[bytes]]] = []
        self.runtime_urls: dict[str, str] = {}
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
    def start_runtime(self, runtime: str, seconds_per_image: float = 0.05, port: int | None = None) -> tuple[Proc, subprocess.Popen[bytes]]:
        """A fixed-time runtime for `runtime` (restarting on the same port keeps agents pointed at it)."""
        url = self.runtime_urls.get(runtime)
        port = port or (int(url.rsplit(":", 1)[1]) if url else free_port())
        self.runtime_urls[runtime] = f"http://127.0.0.1:{port}"
        pair = self._spawn(f"runtime-{runtime}-{len(self.procs)}", ["-m", "agent.bench.fixed_runtime", "--port", str(port),
                           "--seconds-per-image", str(seconds_per_image)], {})
        wait_until(http_ok(f"{self.runtime_urls[runtime]}/sdapi/v1/options"), pair[1], pair[0], 30)
        return pair

    def start_agent(self, runtime: str, wait_ready: bool = True, **env: str) -> tuple[Proc, subprocess.Popen[bytes]]:
        rt = self.settings.runtime(runtime)
        health = free_port()
        agent_env = {**agent_environment(rt, self.resources, self.target, self.runtime_urls[runtime], health),
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

    def record(self, task_id: str) -> dict[str, Any]:
        return self.client.status(task_id)

    def wait_status(self, task_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = self.record(task_id)
            if rec["status"] in statuses:
                return rec
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} not in {statuses} after {timeout} s: {self.record(task_id)}")

    def collect_notifications(self, seconds: float = 1.0) -> list[Notification]:
        """Everything that arrived on the results topic so far (kept, so duplicates can be counted)."""
        inbox = self.client._ensure_inbox()
        deadline = time.monotonic() + seconds
        while True:
            out = self.sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for msg in out.get("Messages", []):
                self.notes.append(Notification.model_validate(json.loads(msg["Body"])))
                self.sqs.delete_message(QueueUrl=inbox, ReceiptHandle=msg["ReceiptHandle"])
            if not out.get("Messages") and time.monotonic() >= deadline:
                return self.notes

    def notification_counts(self) -> Counter[str]:
        return Counter(n.id for n in self.notes)

    def dlq(self, runtime: str) -> list[dict[str, Any]]:
        """Messages in the runtime's DLQ (received and made visible again at once)."""
        url = self.resources.queues[runtime].dlq_url
        out = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                       MessageAttributeNames=["All"], VisibilityTimeout=0)
        return out.get("Messages", [])

    def runtime_calls(self, runtime: str) -> dict[str, int]:
        return httpx.get(f"{self.runtime_urls[runtime]}/_stats", timeout=5).json()

    def queue_depth(self, runtime: str) -> int:
        total = 0
        for url in (self.resources.queues[runtime].url, self.resources.queues[runtime].high_url):
            attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            total += sum(int(v) for v in attrs.values())
        return total

    def close(self) -> None:
        self.client.close()
        left = stop([p for p, _ in self.procs])
        assert not left, f"processes left running: {left}"
        assert not [p.name for p, _ in self.procs if alive(p.pid)]


@pytest.fixture()
def faultstack(tmp_path: Path, moto_server: str) -> Iterator[FaultStack]:
    stack = FaultStack(tmp_path, moto_server)
    try:
        yield stack
    finally:
        stack.close()
