"""The moto server: AWS APIs on loopback, as a process of its own (never moto's in-process mocks)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sdlab.local.processes import Proc, free_port, http_ok, spawn, stop, wait_until


@dataclass
class MotoServer:
    proc: Proc
    popen: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return self.proc.url or ""

    def stop(self) -> list[str]:
        return stop([self.proc])


def start(log_path: Path, env: Mapping[str, str] | None = None, timeout_seconds: float = 60.0,
          module: str = "moto.server") -> MotoServer:
    """Start moto on a free 127.0.0.1 port (log in `log_path`) and return once it answers.
    `module`: a launcher with moto's command line (tests/iam/moto_enforcing.py adds IAM resource checks)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, popen = spawn("moto", ["-m", module, "-H", "127.0.0.1", "-p", str(port)], dict(env or {}), log_path, url)
    try:
        wait_until(http_ok(f"{url}/moto-api/"), popen, proc, timeout_seconds)
    except BaseException:
        stop([proc])
        raise
    return MotoServer(proc, popen)
