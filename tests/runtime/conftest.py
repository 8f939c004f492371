"""Fixtures for the runtime tests: tiny models built once, and a real server process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Never reach for the hub, even by accident.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """``tiny-a`` (tiny, seed 0), ``wide-b`` (tiny-wide, seed 1) and ``tiny-a-single.safetensors``,
    the A1111-style single-file export of ``tiny-a``."""
    from sdlab.runtime.model import build_tiny_model, export_single_file

    root = tmp_path_factory.mktemp("models")
    build_tiny_model(root / "tiny-a", seed=0, variant="tiny")
    build_tiny_model(root / "wide-b", seed=1, variant="tiny-wide")
    export_single_file(root / "tiny-a", root / "tiny-a-single.safetensors")
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(models_dir: Path, model: str, log_dir: Path, *extra: str) -> Iterator[httpx.Client]:
    """``python -m sdlab.runtime`` on a free port; yields an httpx client once /healthz is 200."""
    port = _free_port()
    log_path = log_dir / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "sdlab.runtime", "--models-dir", str(models_dir), "--model", model,
           "--host", "127.0.0.1", "--port", str(port), "--threads", "2", *extra]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after 60 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        client.log_path = log_path  # type: ignore[attr-defined]  # for tests that inspect the log
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server(models_dir: Path, tmp_path_factory):
    """The runtime serving ``models_dir`` (startup model ``tiny-a``; single files configured by ``tiny-a``)."""
    with running_server(models_dir, "tiny-a", tmp_path_factory.mktemp("server"),
                        "--single-file-config", str(models_dir / "tiny-a")) as client:
        yield client
