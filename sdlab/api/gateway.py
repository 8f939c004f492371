"""A local stand-in for API Gateway (REST API, proxy integration) in front of the Lambda handler.

It does what API Gateway does for this API and nothing more: checks the `x-api-key` header (403
`{"message": "Forbidden"}` when missing or wrong, as API Gateway answers), turns the HTTP request into a
proxy event, invokes `sdlab.api.handlers.handler`, and turns the proxy response back into HTTP.
Run: `python -m sdlab.api.gateway --port N` with SDLAB_API_KEYS and the handler's SDLAB_* variables set.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sdlab import envvars

log = logging.getLogger(__name__)
STAGE = "local"
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's own request limit
HEALTH_PATH = "/_gateway/health"


def proxy_event(request: Request, body: bytes, api_key: str | None) -> dict[str, Any]:
    """API Gateway REST proxy event (payload format 1.0) for one request."""
    headers = dict(request.headers)
    multi_headers: dict[str, list[str]] = {}
    for key, value in request.headers.items():
        multi_headers.setdefault(key, []).append(value)
    multi_query: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        multi_query.setdefault(key, []).append(value)
    try:
        text: str | None = body.decode() if body else None
        b64 = False
    except UnicodeDecodeError:
        text, b64 = base64.b64encode(body).decode(), True
    path = request.url.path
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": dict(request.query_params) or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": request.method,
            "path": f"/{STAGE}{path}",
            "stage": STAGE,
            "requestId": str(uuid.uuid4()),
            "requestTimeEpoch": int(time.time() * 1000),
            "domainName": request.headers.get("host", "127.0.0.1"),
            "identity": {"apiKey": api_key, "sourceIp": request.client.host if request.client else None},
        },
        "body": text,
        "isBase64Encoded": b64,
    }


def create_app(handler: Callable[[dict[str, Any], Any], dict[str, Any]], api_keys: set[str]) -> Starlette:
    """The gateway app around `handler` accepting any of `api_keys`."""

    encoded = [k.encode() for k in api_keys]

    def key_ok(given: str | None) -> bool:
        # header values arrive as latin-1 text: compare bytes, so no key (non-ASCII, odd bytes) can raise
        return given is not None and any(hmac.compare_digest(given.encode("latin-1", "replace"), k) for k in encoded)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def proxy(request: Request) -> Response:
        key = request.headers.get("x-api-key")
        if not key_ok(key):
            return JSONResponse({"message": "Forbidden"}, status_code=403)
        body = await request.body()
        if len(body) > MAX_PAYLOAD_BYTES:
            return JSONResponse({"message": "Request Too Long"}, status_code=413)
        result = await run_in_threadpool(handler, proxy_event(request, body, key), None)
        payload = result.get("body") or ""
        content = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
        return Response(content, status_code=int(result.get("statusCode", 502)), headers=result.get("headers") or {})

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[
        Route(HEALTH_PATH, health, methods=["GET"]),
        Route("/{path:path}", proxy, methods=methods),
    ])


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from sdlab.api.handlers import handler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    keys = {k for k in os.environ.get(envvars.API_KEYS, "").split(",") if k}
    if not keys:
        raise SystemExit(f"{envvars.API_KEYS} is empty; set at least one API key")
    uvicorn.run(create_app(handler, keys), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
