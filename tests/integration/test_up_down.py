"""`sdlab up` then `sdlab down` through the real command: nothing is left behind."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import yaml

from sdlab.local.processes import alive

pytestmark = pytest.mark.integration


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def test_up_down_leaves_no_process(tmp_path, model_cache):
    from tests.conftest import TEST_CONFIG

    config = tmp_path / "sdlab.yaml"
    config.write_text(yaml.safe_dump({**TEST_CONFIG, "runtimes": TEST_CONFIG["runtimes"][:1]}))
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "models").symlink_to(model_cache)
    cmd = [sys.executable, "-m", "sdlab", "--config", str(config), "--home", str(home)]

    up = subprocess.run([*cmd, "up"], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stderr[-2000:]
    stack = json.loads((home / "stack.json").read_text())
    assert {"api_url", "api_key", "aws_endpoint_url", "region", "bucket"} <= set(stack)
    assert stack["runtimes"]["rt-a"]["queue_url"].endswith("/sdlabtest-rt-a")
    procs = stack["processes"]
    assert all(alive(p["pid"]) for p in procs)

    again = subprocess.run([*cmd, "up"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already running" in again.stderr

    st = subprocess.run([*cmd, "status"], capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and st.stdout.count("healthy") == len(procs)

    down = subprocess.run([*cmd, "down"], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert [p["name"] for p in procs if alive(p["pid"])] == []
    assert [p["url"] for p in procs if p.get("url") and _port_open(p["url"])] == []
    assert not (home / "stack.json").exists()
