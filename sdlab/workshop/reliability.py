"""Break things on purpose and check nothing was lost: kill an agent mid-task, send a poison message, cancel.

Against the running local stack: `kill_agent` kills one runtime's agent with SIGKILL while it runs a task and starts
its replacement from the same command line and environment (read from /proc, so Linux only), recording the new pid in
stack.json so `sdlab down` still stops it; the task's message comes back after its visibility timeout and runs again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from sdlab.aws import client
from sdlab.errors import SdlabError
from sdlab.local.processes import http_ok, spawn, wait_until
from sdlab.local.stack import STACK_FILE
from sdlab.workshop import anatomy
from sdlab.workshop.session import Session


def wait_status(session: Session, task_id: str, wanted: set[str], timeout: float = 120.0) -> dict[str, Any]:
    """Poll the API until the task's status is one of `wanted`; its record then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = session.client.status(task_id)
        if record["status"] in wanted:
            return record
        time.sleep(0.2)
    raise TimeoutError(f"task {task_id} did not reach {sorted(wanted)} within {timeout:.0f} s")


def _agent(session: Session, runtime: str) -> dict[str, Any]:
    name = f"agent-{runtime}"
    found = next((p for p in session.stack["processes"] if p["name"] == name), None)
    if found is None:
        raise SdlabError(f"no process {name} in this stack (an --autoscale stack has pods instead); use a plain `sdlab up`")
    return found


def kill_agent(session: Session, runtime: str) -> dict[str, Any]:
    """SIGKILL the runtime's agent now, start an identical one, record it; returns {old_pid, new_pid}."""
    proc = _agent(session, runtime)
    pid = int(proc["pid"])
    proc_dir = Path(f"/proc/{pid}")
    if not proc_dir.exists():
        raise SdlabError(f"agent pid {pid} is not running (or this is not Linux: /proc is needed to restart it)")
    args = proc_dir.joinpath("cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    env = dict(item.split("=", 1) for item in proc_dir.joinpath("environ").read_bytes().decode().split("\0") if "=" in item)
    os.kill(pid, signal.SIGKILL)
    while proc_dir.exists() and "zombie" not in _state(proc_dir):
        time.sleep(0.05)
    new, popen = spawn(proc["name"], [a.decode() for a in args[1:]], env, Path(proc["log"]), proc.get("url"))
    if new.url:
        wait_until(http_ok(new.url + "/readyz"), popen, new, 60)
    proc["pid"] = new.pid
    stack_file = session.home / STACK_FILE
    recorded = json.loads(stack_file.read_text())
    recorded["processes"] = [proc if p["name"] == proc["name"] else p for p in recorded["processes"]]
    stack_file.write_text(json.dumps(recorded, indent=2))
    return {"old_pid": pid, "new_pid": new.pid}


def _state(proc_dir: Path) -> str:
    try:
        return proc_dir.joinpath("status").read_text()
    except OSError:
        return "zombie"


def send_poison(session: Session, runtime: str, body: str = "poison: not a task message") -> str:
    """Put a message no agent can parse straight onto the runtime's queue; returns its message id."""
    sqs = client("sqs", anatomy.target_of(session.stack))
    return str(sqs.send_message(QueueUrl=session.runtimes[runtime]["queue_url"], MessageBody=body)["MessageId"])


def dead_letters(session: Session, runtime: str, timeout: float = 30.0, expect: int = 1) -> list[dict[str, str]]:
    """Messages in the runtime's DLQ (read and put back visible at once): body and the agent's `reason`."""
    sqs = client("sqs", anatomy.target_of(session.stack))
    url = session.runtimes[runtime]["dlq_url"]
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline and len(seen) < expect:
        out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=1,
                                  MessageAttributeNames=["All"])
        for m in out.get("Messages", []):
            reason = m.get("MessageAttributes", {}).get("reason", {}).get("StringValue", "")
            seen[m["MessageId"]] = {"body": m["Body"][:80], "reason": reason}
    return list(seen.values())


def drain_dead_letters(session: Session, runtime: str) -> int:
    """Empty the runtime's DLQ (after reading it); returns how many messages it held."""
    sqs = client("sqs", anatomy.target_of(session.stack))
    url = session.runtimes[runtime]["dlq_url"]
    count = int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
                ["Attributes"]["ApproximateNumberOfMessages"])
    sqs.purge_queue(QueueUrl=url)
    return count
