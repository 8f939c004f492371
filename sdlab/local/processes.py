"""Starting, watching and stopping the local stack's child processes.

Each child runs in its own session (process group), so stopping it also stops anything it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from sdlab.errors import StackError


@dataclass
class Proc:
    name: str
    pid: int
    log: str
    url: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(name: str, args: list[str], env: Mapping[str, str], log_path: Path,
          url: str | None = None) -> tuple[Proc, subprocess.Popen[bytes]]:
    """Start `python <args>` detached from our terminal, logging to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        popen = subprocess.Popen(
            [sys.executable, *args], env={**os.environ, **env}, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return Proc(name=name, pid=popen.pid, log=str(log_path), url=url), popen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as gone
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def tail(path: str | Path, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(check: Callable[[], bool], popen: subprocess.Popen[bytes] | None, proc: Proc, timeout: float) -> None:
    """Poll `check` until true; fail early with the log's tail if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            raise StackError(f"{proc.name} exited with code {popen.returncode} while starting; log {proc.log}:\n{tail(proc.log)}")
        if check():
            return
        time.sleep(0.25)
    raise StackError(f"{proc.name} not ready after {timeout:.0f} s; log {proc.log}:\n{tail(proc.log)}")


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False
    return check


def stop(procs: list[Proc], timeout: float = 20.0) -> list[str]:
    """SIGTERM every process group, wait, then SIGKILL the stragglers. Returns names still alive (should be none)."""
    for proc in procs:
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p.pid) for p in procs):
        _reap()
        time.sleep(0.1)
    for proc in procs:
        if alive(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)
    time.sleep(0.2)
    _reap()
    return [p.name for p in procs if alive(p.pid)]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap() -> None:
    """Collect exited children of this process so they do not linger as zombies."""
    try:
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
    except ChildProcessError:
        return
