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
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

SIGNATURE_HEADER = "X-Sdlab-Signature"
TIMESTAMP_HEADER = "X-Sdlab-Timestamp"
DEFAULT_TOLERANCE_SECONDS = 300


class CallbackRefused(Exception):
    """The URL may not be called (not https, does not resolve, or resolves to an address that is not global unicast)."""


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


@dataclass(frozen=True)
class Destination:
    """A checked callback URL and the one address the call connects to (resolved once: no DNS-rebinding window)."""

    url: str
    host: str
    port: int
    address: str  # the first checked address: the one to connect to
    fallbacks: tuple[str, ...] = ()  # the other checked addresses, tried in order when a connection fails

    def pinned_url(self, address: str | None = None) -> str:
        """The URL with a checked address in place of the host name (TLS still verifies `host`)."""
        parts = urlsplit(self.url)
        address = address or self.address
        ip = f"[{address}]" if ":" in address else address
        return urlunsplit((parts.scheme, f"{ip}:{self.port}", parts.path or "/", parts.query, ""))

    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global unicast only: not private, loopback, link-local, shared (100.64.0.0/10), ULA, multicast, reserved,
    unspecified, nor an IPv6 form that carries an IPv4 address (mapped, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv6Address) and (address.ipv4_mapped or address.sixtofour or address.teredo):
        return False
    return address.is_global and not address.is_multicast


def check_destination(url: str, *, allow_private: bool = False) -> Destination:
    """Refuse anything but https, and (unless allowed) hosts with any address that is not global unicast — the
    service must not be turned into a client of its own network (169.254.169.254 and friends). Returns the
    destination with the address to connect to: the caller connects there, never resolving the name again."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise CallbackRefused(f"{url!r}: callbacks go to https:// URLs only")
    try:
        port = parts.port or 443
    except ValueError as err:
        raise CallbackRefused(f"{url!r}: the port is not a number 1-65535") from err
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as err:
        raise CallbackRefused(f"{parts.hostname}: does not resolve ({err})") from err
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise CallbackRefused(f"{parts.hostname} resolves to {address}, not a global unicast address")
    ordered = [str(a) for a in dict.fromkeys(addresses)]
    return Destination(url=url, host=parts.hostname, port=port, address=ordered[0], fallbacks=tuple(ordered[1:]))
