"""An HTTP proxy in front of the moto server that breaks chosen AWS calls, for the agent's supervision tests.

A process pointed at the proxy (SDLAB_AWS_ENDPOINT_URL) makes real botocore calls over real sockets; for each request
the proxy names the AWS action (`sqs:ReceiveMessage`, `dynamodb:GetItem`, `s3:PutObject`, `sns:Publish`, ...) and,
when a rule matches, either resets the connection (botocore: ConnectionClosedError) or answers nothing until the
client gives up (botocore: ReadTimeoutError); everything else is forwarded to moto unchanged.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx

RESET = "reset"  # close the connection with a TCP RST before answering
STALL = "stall"  # answer nothing for `STALL_SECONDS` (longer than the clients' read timeout), then close

STALL_SECONDS = 5.0
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "proxy-connection"}


def action_of(method: str, path: str, headers: dict[str, str], body: bytes) -> str:
    """`service:Action` of one botocore request (JSON, query and REST-XML protocols)."""
    target = headers.get("x-amz-target", "")
    if target:  # JSON protocols: SQS (AmazonSQS.X), DynamoDB (DynamoDB_20120810.X)
        prefix, _, action = target.partition(".")
        return f"{'sqs' if prefix == 'AmazonSQS' else 'dynamodb'}:{action}"
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = parse_qs(body.decode(errors="replace"))
        action = form.get("Action", [""])[0]
        service = "sns" if "TopicArn" in form or action in ("Publish", "Subscribe", "CreateTopic") else "sqs"
        return f"{service}:{action}"
    # S3 (REST): the key decides between object and bucket calls
    parts = urlsplit(path).path.lstrip("/").split("/", 1)
    on_object = len(parts) == 2 and parts[1] != ""
    verb = {"PUT": "Put", "GET": "Get", "DELETE": "Delete", "HEAD": "Head", "POST": "Post"}.get(method, method)
    if method == "POST" and "delete" in urlsplit(path).query:
        return "s3:DeleteObjects"
    return f"s3:{verb}{'Object' if on_object else 'Bucket'}"


class FaultProxy:
    """`with FaultProxy(moto_url) as proxy:` ... `proxy.url` is the endpoint to hand out; `proxy.fail(...)` arms a rule."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._rules: dict[str, tuple[str, float]] = {}  # action -> (mode, until monotonic time)
        self._lock = threading.Lock()
        self.seen: Counter[str] = Counter()  # every action that reached the proxy
        self.broken: Counter[str] = Counter()  # every action the proxy broke
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self._body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                action = action_of(self.command, self.path, headers, body)
                mode = proxy._mode(action)
                proxy.seen[action] += 1
                if mode is not None:
                    proxy.broken[action] += 1
                    if mode == STALL:
                        time.sleep(STALL_SECONDS)
                    self.close_connection = True
                    try:
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                    except OSError:
                        pass
                    return
                try:  # a connection of its own per call: nothing shared between the handler threads
                    reply = httpx.request(self.command, proxy.upstream + self.path, content=body, timeout=30.0,
                                          headers={k: v for k, v in self.headers.items() if k.lower() not in _HOP})
                    self.send_response(reply.status_code)
                    for key, value in reply.headers.items():
                        if key.lower() not in _HOP and key.lower() != "content-encoding":
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(reply.content)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(reply.content)
                except (OSError, httpx.HTTPError):  # the client gave up first (its read timeout): nothing to answer
                    self.close_connection = True

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():  # trailers
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815 (http.server's names)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="aws-fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, action: str, mode: str = RESET, seconds: float = 3600.0) -> None:
        """Break every `action` call for `seconds` from now."""
        with self._lock:
            self._rules[action] = (mode, time.monotonic() + seconds)

    def heal(self, action: str | None = None) -> None:
        with self._lock:
            if action is None:
                self._rules.clear()
            else:
                self._rules.pop(action, None)

    def _mode(self, action: str) -> str | None:
        with self._lock:
            rule = self._rules.get(action)
            if rule is None or time.monotonic() > rule[1]:
                return None
            return rule[0]
