"""The SageMaker container contract in front of the project runtime: `GET /ping`, `POST /invocations` on :8080.

SageMaker starts the container with `serve`; this module starts the diffusers runtime on loopback (models from
/opt/ml/model, where SageMaker unpacks the model archive) and forwards each invocation, an SD WebUI txt2img body,
to it. With asynchronous inference SageMaker stores the response (images as base64) at the output location.

Run: `python -m sdlab.deploy.sagemaker_serve [--runtime-url URL]` (with a URL, no runtime is started).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

RUNTIME_PORT = 7860
TXT2IMG = "/sdapi/v1/txt2img"


def make_handler(runtime_url: str, timeout_seconds: float) -> type[BaseHTTPRequestHandler]:
    http = httpx.Client(base_url=runtime_url, timeout=timeout_seconds)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/ping":
                return self._reply(404, b'{"error": "only GET /ping"}')
            try:
                healthy = http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                healthy = False
            self._reply(200 if healthy else 503, b"{}")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/invocations":
                return self._reply(404, b'{"error": "only POST /invocations"}')
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                answer = http.post(TXT2IMG, content=body, headers={"Content-Type": "application/json"})
            except httpx.HTTPError as err:
                return self._reply(502, f'{{"error": "runtime unreachable: {type(err).__name__}"}}'.encode())
            self._reply(answer.status_code, answer.content, answer.headers.get("Content-Type", "application/json"))

        def log_message(self, fmt: str, *args: object) -> None:
            sys.stderr.write("sagemaker_serve: " + fmt % args + "\n")

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SageMaker /ping + /invocations in front of the sdlab runtime")
    parser.add_argument("command", nargs="?", default="serve", help="SageMaker passes 'serve'")
    parser.add_argument("--runtime-url", default=None, help="an already running runtime (default: start one)")
    parser.add_argument("--models-dir", default="/opt/ml/model")
    parser.add_argument("--host", default="0.0.0.0")  # SageMaker sends traffic to the container's port 8080
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--timeout-seconds", type=float, default=900.0)
    args = parser.parse_args(argv)
    child = None
    if args.runtime_url is None:
        child = subprocess.Popen([sys.executable, "-m", "sdlab.runtime", "--models-dir", args.models_dir,
                                  "--host", "127.0.0.1", "--port", str(RUNTIME_PORT)])
    url = args.runtime_url or f"http://127.0.0.1:{RUNTIME_PORT}"
    server = ThreadingHTTPServer((args.host, args.port), make_handler(url, args.timeout_seconds))
    try:
        server.serve_forever()
    finally:
        if child is not None:
            child.terminate()
            child.wait(30)


if __name__ == "__main__":
    main()
