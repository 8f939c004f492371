"""Probe and metrics endpoints: `/healthz` (every supervised thread alive and recovering, agent/supervise.py),
`/readyz` (runtime ready, not stopping), `/metrics`."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.worker import Worker


def serve(worker: Worker, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the health server in a daemon thread; returns it (call `.shutdown()` to stop)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/healthz":  # a supervised thread that cannot recover: let the kubelet restart us
                problems = worker.healthy()
                self._reply(503 if problems else 200, ("\n".join(problems) or "ok").encode() + b"\n")
            elif self.path == "/readyz":
                ok = worker.ready.is_set() and not worker.stopping.is_set()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            elif self.path == "/metrics":
                self._reply(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # probes every few seconds: keep the log quiet
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
