"""Signed webhooks: how a task's `callback_url` is called on its terminal status, and how receivers verify it.

Each call is `POST <callback_url>` with the notification JSON as the body and two headers:
`X-Sdlab-Timestamp: <unix seconds>` and `X-Sdlab-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
Receivers recompute the HMAC over the raw body with the shared secret, compare in constant time, and refuse
timestamps older than a few minutes (replays). `verify()` does exactly that.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Sdlab-Signature"
TIMESTAMP_HEADER = "X-Sdlab-Timestamp"
DEFAULT_TOLERANCE_SECONDS = 300


class CallbackRefused(Exception):
    """The URL may not be called (not https, or it resolves to a private address)."""


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers that sign `body`."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: f"v1={mac}"}


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
           now: float | None = None) -> bool:
    """True when `body` was signed with `secret` within `tolerance_seconds` (receivers call this)."""
    lower = {k.lower(): v for k, v in headers.items()}
    ts, sig = lower.get(TIMESTAMP_HEADER.lower()), lower.get(SIGNATURE_HEADER.lower())
    if not ts or not sig or not ts.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(ts)) > tolerance_seconds:
        return False
    expected = sign(secret, body, int(ts))[SIGNATURE_HEADER]
    return hmac.compare_digest(expected, sig)


def check_destination(url: str, *, allow_private: bool = False) -> None:
    """Refuse anything but https, and (unless allowed) hosts resolving to loopback, private or link-local
    addresses — the service must not be turned into a client of its own network (169.254.169.254 and friends)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise CallbackRefused(f"{url!r}: callbacks go to https:// URLs only")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as err:
        raise CallbackRefused(f"{parts.hostname}: does not resolve ({err})") from err
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_private or address.is_loopback or address.is_link_local or address.is_reserved:
            raise CallbackRefused(f"{parts.hostname} resolves to {address}, a non-public address")
