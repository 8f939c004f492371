"""Shared fixtures. Factories where a test needs its own thing; one local stack per session where it can be shared."""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A small config for tests: SD WebUI runtimes with different models and a ComfyUI one, quick queue settings.
TEST_CONFIG = {
    "version": 1,
    "stack": {"name": "sdlabtest", "region": "us-east-1"},
    "limits": {"max_steps": 50, "max_side_px": 1024, "max_pixels": 512 * 512, "max_images_per_task": 4},
    "runtimes": [
        # rt-a and rt-c: the bundled trained model (the default); rt-b: a seeded random build, so two models differ
        {"name": "rt-a", "type": "sdwebui", "model": {"name": "shapes", "source": "bundled"},
         "queue": {"visibility_timeout_seconds": 30, "max_receive_count": 2, "receive_wait_seconds": 2}},
        {"name": "rt-b", "type": "sdwebui", "model": {"name": "tiny-b", "source": "build", "variant": "tiny-wide", "seed": 2},
         "queue": {"visibility_timeout_seconds": 30, "max_receive_count": 2, "receive_wait_seconds": 2}},
        # ComfyUI API of the same runtime server (tests/integration/test_runtimes.py)
        {"name": "rt-c", "type": "comfyui", "model": {"name": "shapes", "source": "bundled"},
         "queue": {"visibility_timeout_seconds": 30, "max_receive_count": 2, "receive_wait_seconds": 2}},
    ],
}


# The longest files first: under `make test`'s two workers (--dist loadfile hands out files in this order) the
# notebook course (about 3 min on one stack) and the burst would otherwise start last and keep one worker running
# alone at the end.
LONGEST_FIRST = ("tests/notebooks/", "tests/faults/test_burst.py", "tests/faults/test_finish_and_supervision.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if path.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the order inside each file (the course's order) is kept


@pytest.fixture(scope="session")
def test_settings():
    from sdlab.config import parse_config

    return parse_config(TEST_CONFIG, "tests/conftest.py")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models are built once per session and shared by every stack the tests start."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def callback_ca(tmp_path_factory: pytest.TempPathFactory):
    """A test certificate authority; the stack's callback dispatcher trusts it, so tests can run HTTPS webhooks."""
    import trustme

    from sdlab import envvars

    ca = trustme.CA()
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    os.environ[envvars.CALLBACK_CA_BUNDLE] = str(bundle)
    yield ca
    os.environ.pop(envvars.CALLBACK_CA_BUNDLE, None)


@pytest.fixture(scope="session")
def stack(test_settings, tmp_path_factory: pytest.TempPathFactory, model_cache: Path, callback_ca) -> Iterator[dict]:
    """The whole local stack, up once for the session, down (and checked) at the end."""
    from sdlab.local import stack as local_stack
    from sdlab.local.processes import alive

    home = tmp_path_factory.mktemp("stack")
    (home / "cache").mkdir()
    (home / "cache" / "models").symlink_to(model_cache)
    info = local_stack.up(test_settings, home)
    info["home"] = str(home)
    try:
        yield info
    finally:
        local_stack.down(home)
        left = [p["name"] for p in info["processes"] if alive(p["pid"])]
        assert not left, f"processes left running after down: {left}"


@pytest.fixture()
def client(stack):
    from sdlab.client import Client

    with Client.from_stack(stack["home"]) as c:
        yield c


@pytest.fixture()
def webhook(callback_ca):
    """An HTTPS endpoint that records calls; `fail_first` makes it answer 500 that many times first."""
    calls: list[tuple[dict, bytes]] = []
    state = {"fail_first": 0}

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            calls.append((dict(self.headers), body))
            code = 500 if state["fail_first"] > 0 else 200
            state["fail_first"] -= 1
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    callback_ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}/hook", calls, state
    server.shutdown()


@pytest.fixture()
def moto_server(tmp_path: Path) -> Iterator[str]:
    """A moto server process of its own on a free port; yields its endpoint URL."""
    from sdlab.local import motoserver

    server = motoserver.start(tmp_path / "moto.log")
    try:
        yield server.url
    finally:
        assert not server.stop()
