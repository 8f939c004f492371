"""The HTTP API as a participant meets it: raw calls with or without the key, and the answers to bad requests.

`call` goes through plain HTTP (no `Client`), so the notebook shows exactly what a curl would get back.
`refusals` sends a list of requests that break one rule each and tabulates the status, field and message.
"""

from __future__ import annotations

from typing import Any

import httpx

KEY_FROM_STACK = object()

BAD_REQUESTS: dict[str, dict[str, Any]] = {  # what a first-time caller gets wrong, one rule each
    "no runtime": {"payload": {"prompt": "a red fox"}},
    "unknown runtime": {"runtime": "webui-z", "payload": {"prompt": "a red fox"}},
    "steps too many": {"runtime": "{runtime}", "payload": {"prompt": "a red fox", "steps": 10_000}},
    "size not a multiple of 8": {"runtime": "{runtime}", "payload": {"prompt": "a red fox", "width": 100}},
    "unknown field": {"runtime": "{runtime}", "payload": {"prompt": "a red fox"}, "colour": "blue"},
    "ttl of zero": {"runtime": "{runtime}", "ttl_seconds": 0, "payload": {"prompt": "a red fox"}},
    "http callback": {"runtime": "{runtime}", "callback_url": "http://example.com/hook", "payload": {"prompt": "a fox"}},
}


def call(stack: dict[str, Any], method: str, path: str, *, json: Any = None, key: Any = KEY_FROM_STACK) -> tuple[int, Any]:
    """One request to the stack's API; `key=None` sends none, a string sends that one. Returns (status, body)."""
    headers = {} if key is None else {"x-api-key": stack["api_key"] if key is KEY_FROM_STACK else str(key)}
    reply = httpx.request(method, stack["api_url"] + path, json=json, headers=headers, timeout=30)
    try:
        return reply.status_code, reply.json()
    except ValueError:
        return reply.status_code, reply.text


def _fill(value: Any, runtime: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, runtime) for k, v in value.items()}
    return value.replace("{runtime}", runtime) if isinstance(value, str) else value


def refusals(stack: dict[str, Any], runtime: str, requests: dict[str, dict[str, Any]] | None = None) -> Any:
    """A DataFrame: each bad request's status, the field the answer names, and its message."""
    import pandas as pd

    rows = []
    for name, body in (requests or BAD_REQUESTS).items():
        status, answer = call(stack, "POST", "/v1/tasks", json=_fill(body, runtime))
        err = answer.get("error", {}) if isinstance(answer, dict) else {}
        rows.append({"request": name, "status": status, "field": err.get("field"), "message": err.get("message", answer)})
    return pd.DataFrame(rows)
