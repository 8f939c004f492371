import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import trustme

from sdlab.api.callbacks import post
from sdlab.callbacks import CallbackRefused, Destination, check_destination, sign, verify


def test_callbacks_signature_roundtrip():
    body = b'{"id": "t1", "status": "completed"}'
    headers = sign("s3cret", body)
    assert verify("s3cret", headers, body)
    assert verify("s3cret", {k.lower(): v for k, v in headers.items()}, body)  # header names are case-insensitive


@pytest.mark.parametrize("tamper", ["body", "secret", "timestamp", "missing"])
def test_callbacks_signature_rejects_tampering(tamper):
    body = b'{"id": "t1"}'
    headers = sign("s3cret", body)
    if tamper == "body":
        assert not verify("s3cret", headers, body + b" ")
    elif tamper == "secret":
        assert not verify("other", headers, body)
    elif tamper == "timestamp":
        assert not verify("s3cret", headers, body, now=time.time() + 3600)  # a replay an hour later
    else:
        assert not verify("s3cret", {}, body)


@pytest.mark.parametrize("url", [
    "http://example.com/hook", "ftp://x/y", "https:///nohost", "https://127.0.0.1/hook",
    "https://169.254.169.254/latest/meta-data", "https://10.0.0.8/x", "https://[::1]/x",
    "https://100.64.0.1/x",  # shared address space (carrier-grade NAT)
    "https://0.0.0.0/x", "https://224.0.0.1/x",  # unspecified, multicast
    "https://240.0.0.1/x", "https://192.0.2.1/x",  # reserved, documentation
    "https://[fd00::1]/x", "https://[fe80::1]/x", "https://[ff02::1]/x",  # ULA, link-local, multicast
    "https://[::ffff:127.0.0.1]/x", "https://[::ffff:10.0.0.1]/x",  # IPv4-mapped
    "https://[2002:7f00:1::1]/x",  # 6to4 of 127.0.0.1
    "https://host.invalid/x",  # does not resolve
    "https://example.com:99999/x",  # no such port
])
def test_callbacks_destination_refused(url):
    with pytest.raises(CallbackRefused):
        check_destination(url)


def test_callbacks_private_allowed_only_when_asked():
    check_destination("https://127.0.0.1:8443/hook", allow_private=True)
    with pytest.raises(CallbackRefused):
        check_destination("http://127.0.0.1/hook", allow_private=True)  # still https only


def test_callbacks_public_address_passes_and_is_the_one_to_connect_to():
    dest = check_destination("https://8.8.8.8:8443/hook?x=1")
    assert (dest.host, dest.port, dest.address) == ("8.8.8.8", 8443, "8.8.8.8")
    assert dest.pinned_url() == "https://8.8.8.8:8443/hook?x=1"


def test_callbacks_connect_to_the_checked_address_with_the_original_host_and_sni():
    """The name below cannot resolve (.invalid): the call succeeding proves the client never looked it up again,
    and the certificate (issued for the name, checked by TLS) proves Host and SNI stayed the original host."""
    ca = trustme.CA()
    seen: dict[str, object] = {}

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            seen["host"] = self.headers["Host"]
            seen["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.rebind.invalid").configure_cert(context)
    context.sni_callback = lambda sock, name, ctx: seen.__setitem__("sni", name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        dest = Destination(url=f"https://hooks.rebind.invalid:{port}/hook", host="hooks.rebind.invalid", port=port,
                           address="127.0.0.1")
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        with httpx.Client(verify=client_context, timeout=5) as http:
            post(http, dest, b'{"id": "t1"}', "s3cret")
            assert seen == {"sni": "hooks.rebind.invalid", "host": f"hooks.rebind.invalid:{port}", "body": b'{"id": "t1"}'}
            # a name with several checked addresses: the next one is tried when one refuses the connection
            nobody_there = Destination(url=dest.url, host=dest.host, port=port, address="127.0.0.2", fallbacks=("127.0.0.1",))
            post(http, nobody_there, b'{"id": "t2"}', "s3cret")
            assert seen["body"] == b'{"id": "t2"}'
    finally:
        server.shutdown()
