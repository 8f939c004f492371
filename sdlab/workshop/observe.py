"""Observe the running stack (processes, agent metrics, JSON log lines) and audit a teardown: after `down`, no
process of the stack is alive, no port still answers, and stack.json is gone."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from sdlab.local.processes import alive
from sdlab.local.stack import STACK_FILE, status


def processes(home: str | os.PathLike[str]) -> Any:
    """A DataFrame of every process of the stack: name, pid, alive, healthy, URL."""
    import pandas as pd

    rows = status(home)
    return pd.DataFrame([{k: r.get(k) for k in ("name", "pid", "alive", "healthy", "url")} for r in rows])


def agent_metrics(stack: dict[str, Any]) -> Any:
    """Each agent's Prometheus counters and sums (tasks by status, retries, DLQ moves, queue wait, run time)."""
    import pandas as pd
    from prometheus_client.parser import text_string_to_metric_families

    rows = []
    for runtime, spec in stack["runtimes"].items():
        if not spec.get("agent_url"):
            continue
        text = httpx.get(spec["agent_url"] + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("sdlab_agent"):
                continue
            for sample in family.samples:
                if sample.name.endswith(("_total", "_sum", "_count")) or family.type == "gauge":
                    label = ",".join(f"{k}={v}" for k, v in sample.labels.items())
                    rows.append({"runtime": runtime, "metric": sample.name + (f"{{{label}}}" if label else ""),
                                 "value": sample.value})
    return pd.DataFrame(rows)


def log_lines(stack: dict[str, Any], process: str, last: int = 5) -> list[dict[str, Any]]:
    """The last JSON lines of a process's log (the agent's carry task and message ids, never prompts or keys)."""
    path = Path(stack["logs"]) / f"{process}.log"
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines[-last:]]


def _answers(url: str) -> bool:
    parsed = urlparse(url)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((parsed.hostname or "127.0.0.1", parsed.port or 80)) == 0


def audit(home: str | os.PathLike[str], stack: dict[str, Any]) -> list[str]:
    """What is left of `stack` (as it was recorded before `down`): live processes, answering ports, stack.json."""
    left = [f"process {p['name']} (pid {p['pid']}) is alive" for p in stack["processes"] if alive(p["pid"])]
    urls = [p["url"] for p in stack["processes"] if p.get("url")] + [stack["api_url"], stack["aws_endpoint_url"]]
    left += [f"{url} still answers" for url in dict.fromkeys(urls) if _answers(url)]
    if (Path(home) / STACK_FILE).exists():
        left.append(f"{Path(home) / STACK_FILE} still exists")
    return left
