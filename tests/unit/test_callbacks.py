import time

import pytest

from sdlab.callbacks import CallbackRefused, check_destination, sign, verify


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


@pytest.mark.parametrize("url", ["http://example.com/hook", "ftp://x/y", "https:///nohost",
                                 "https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data",
                                 "https://10.0.0.8/x", "https://[::1]/x"])
def test_callbacks_destination_refused(url):
    with pytest.raises(CallbackRefused):
        check_destination(url)


def test_callbacks_private_allowed_only_when_asked():
    check_destination("https://127.0.0.1:8443/hook", allow_private=True)
    with pytest.raises(CallbackRefused):
        check_destination("http://127.0.0.1/hook", allow_private=True)  # still https only
