"""Task inputs the agent fetches before calling the runtime: s3:// images and named workflow templates.

The API already refused images from buckets outside the allow-list; the agent checks again (a message
can be published to the topic directly, bypassing the API) and never fetches http(s) URLs, unlike the
public guidance's agent, which downloaded any string starting with "http" or "s3://" anywhere in the body.
Only the fields that hold images are resolved: SD WebUI ``init_images``, ``mask`` and ``image``, and the
``image`` input of ComfyUI LoadImage nodes.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from agent.runtimes.base import RuntimeFailure
from sdlab.errors import ValidationError
from sdlab.workflows import load_workflow

log = logging.getLogger(__name__)
MAX_IMAGE_BYTES = 32 * 1024 * 1024
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF", b"GIF8")


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class TaskInputs:
    """Resolves image references with the agent's S3 client, within ``allowed_buckets`` only."""

    def __init__(self, s3: Any, bucket: str, input_buckets: Sequence[str] = (), workflow_prefix: str = "workflows") -> None:
        self.s3 = s3
        self.bucket = bucket
        self.allowed_buckets = tuple(dict.fromkeys((bucket, *input_buckets)))
        self.workflow_prefix = workflow_prefix

    def image_bytes(self, field: str, value: Any) -> bytes:
        """The bytes of an image given as ``s3://bucket/key``, base64 or a ``data:`` URL."""
        if not isinstance(value, str) or not value:
            raise RuntimeFailure(f"{field}: expected an s3:// URI or a base64 image", retryable=False)
        if value.startswith("s3://"):
            return self._fetch(field, value)
        if value.startswith(("http://", "https://", "file:")):
            raise RuntimeFailure(f"{field}: URLs are not fetched; use an s3:// URI in {list(self.allowed_buckets)} "
                                 "or base64", retryable=False)
        data = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RuntimeFailure(f"{field}: not valid base64", retryable=False) from err

    def image_b64(self, field: str, value: Any) -> Any:
        """``value`` with an s3:// URI replaced by the object's base64; anything else unchanged."""
        if isinstance(value, str) and value.startswith(("s3://", "http://", "https://", "file:")):
            return base64.b64encode(self.image_bytes(field, value)).decode("ascii")
        return value

    def resolve_webui(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A copy of an SD WebUI body with s3:// images in ``init_images``, ``mask`` and ``image`` as base64."""
        out = dict(payload)
        if isinstance(out.get("init_images"), list):
            out["init_images"] = [self.image_b64(f"payload.init_images.{i}", v) for i, v in enumerate(out["init_images"])]
        for key in ("mask", "image"):
            if key in out:
                out[key] = self.image_b64(f"payload.{key}", out[key])
        return out

    def workflow(self, name: str) -> dict[str, Any]:
        """The named template from ``s3://<bucket>/<workflow_prefix>/<name>.json``."""
        try:
            return load_workflow(self.s3, self.bucket, self.workflow_prefix, name)
        except ValidationError as err:
            raise RuntimeFailure(str(err), retryable=False) from err
        except (ClientError, BotoCoreError) as err:
            raise RuntimeFailure(f"payload.workflow: reading template {name!r} failed: {err}", retryable=True) from err

    def _fetch(self, field: str, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        if bucket not in self.allowed_buckets or not key:
            raise RuntimeFailure(f"{field}: {uri} is not in an allowed input bucket; use s3://<bucket>/<key> with a bucket "
                                 f"in {list(self.allowed_buckets)} (stack.input_buckets in sdlab.yaml)", retryable=False)
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=key)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket", "AccessDenied", "403"):
                raise RuntimeFailure(f"{field}: cannot read {uri} ({code}); upload it first or fix the URI",
                                     retryable=False) from err
            raise RuntimeFailure(f"{field}: reading {uri} failed ({code}); will retry", retryable=True) from err
        except BotoCoreError as err:
            raise RuntimeFailure(f"{field}: reading {uri} failed ({err}); will retry", retryable=True) from err
        if obj.get("ContentLength", 0) > MAX_IMAGE_BYTES:
            raise RuntimeFailure(f"{field}: {uri} is {obj['ContentLength']} bytes; keep input images under "
                                 f"{MAX_IMAGE_BYTES} bytes", retryable=False)
        data = obj["Body"].read()
        if not data.startswith(IMAGE_MAGIC):
            raise RuntimeFailure(f"{field}: {uri} is not a PNG, JPEG, WebP or GIF image", retryable=False)
        log.debug("read input image %s (%d bytes)", uri, len(data))
        return data
