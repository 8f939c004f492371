"""Request validation for `POST /v1/tasks`: every error names the field and the fix.

Checks run in order and stop at the first problem in a field group, but pydantic's envelope errors are all
reported (`problems`), so a client sees everything wrong with the top-level shape at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from sdlab.config import Limits
from sdlab.contracts import SubmitRequest
from sdlab.errors import ValidationError
from sdlab.workflows import check_name, check_params

TASK_TYPES_BY_RUNTIME = {
    "sdwebui": ("text-to-image", "image-to-image", "extra-single-image"),
    "diffusers": ("text-to-image", "image-to-image"),
    "comfyui": ("pipeline",),
}
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF", b"GIF8")


MAX_JSON_DEPTH = 64  # nesting of objects and arrays in a request body (ComfyUI graphs need about 5)
MAX_INT_DIGITS = 20  # beyond ±10**20 no field means anything; Python would spend time on a 4000-digit int


def _reject_constant(name: str) -> Any:
    raise ValidationError("body", f"{name} is not JSON; send finite numbers")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValidationError("body", f"the number {text[:40]} is out of range; send finite numbers")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValidationError("body", f"an integer of {len(text)} digits is out of range; keep integers under "
                              f"{MAX_INT_DIGITS} digits")
    return int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValidationError("body", f"the key {key[:64]!r} appears twice in one object; send it once")
        out[key] = value
    return out


def _depth(data: Any) -> int:
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_body(body: str | bytes | None, content_type: str | None, limits: Limits) -> dict[str, Any]:
    """Media type and strict JSON: UTF-8 only, no duplicate keys, finite numbers, bounded nesting."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else (body or b"")
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ValidationError(
            "Content-Type", f"{media or 'none'} is not supported; send the body as JSON with "
            "'Content-Type: application/json'", status=415,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValidationError("body", f"not UTF-8 (byte {err.start}); send a JSON object encoded as UTF-8") from err
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_float=_parse_float, parse_int=_parse_int,
                          parse_constant=_reject_constant)
    except RecursionError as err:
        raise ValidationError("body", f"nested deeper than {MAX_JSON_DEPTH} levels; send a flatter JSON object") from err
    except ValueError as err:
        raise ValidationError("body", f"not valid JSON ({err}); send a JSON object") from err
    if not isinstance(data, dict):
        raise ValidationError("body", f"a JSON {type(data).__name__} was sent; send a JSON object with `runtime` and `payload`")
    if _depth(data) > MAX_JSON_DEPTH:
        raise ValidationError("body", f"nested deeper than {MAX_JSON_DEPTH} levels; send a flatter JSON object")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate escape such as "\ud800": no UTF-8 text can carry it
        raise ValidationError("body", "a string holds an unpaired surrogate escape (\\ud800-\\udfff); send valid "
                              "Unicode text") from err
    return data


def check_message_size(message: str, attributes: Mapping[str, Mapping[str, str]], limits: Limits) -> None:
    """413 when the message that would be published (body and attributes, as SNS counts them) is over the limit."""
    size = len(message.encode("utf-8")) + sum(
        len(name.encode()) + len(a["DataType"].encode()) + len(a["StringValue"].encode()) for name, a in attributes.items())
    if size > limits.max_request_bytes:
        raise ValidationError(
            "body", f"the task message would be {size} bytes, over the {limits.max_request_bytes}-byte limit (the SNS "
            "message limit); send init images as s3:// URIs instead of base64", status=413)


def upgrade_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Accept the public guidance's v1alpha2 shape `{"task": {"metadata": ..., "content": ...}}`."""
    if set(data) != {"task"} or not isinstance(data["task"], Mapping):
        return data
    task = data["task"]
    meta = task.get("metadata")
    if not isinstance(meta, Mapping):
        raise ValidationError("task.metadata", "missing or not an object; give {id, runtime, tasktype, prefix}")
    if "content" not in task:
        raise ValidationError("task.content", "missing; put the runtime's native request body there")
    upgraded: dict[str, Any] = {
        "runtime": meta.get("runtime"),
        "task_type": meta.get("tasktype", "text-to-image"),
        "payload": task["content"],
    }
    for key in ("id", "prefix", "context"):
        if meta.get(key) not in (None, ""):
            upgraded[key] = meta[key]
    return upgraded


def parse_request(data: dict[str, Any]) -> SubmitRequest:
    """Validate the envelope; all of its problems are listed in the error message."""
    try:
        return SubmitRequest.model_validate(upgrade_legacy(data))
    except PydanticValidationError as err:
        problems: dict[str, list[str]] = {}
        for e in err.errors():
            # the envelope is flat: what pydantic puts after the field name is a union member's tag
            # ("context.dict[str,any]"), not a path the client could act on
            field = str(e["loc"][0]) if e["loc"] else "body"
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown field; remove it (allowed: " + ", ".join(SubmitRequest.model_fields) + ")"
            elif e["type"] == "missing":
                msg = "required; add it"
            problems.setdefault(field, []).append(msg)
        first_field = next(iter(problems))
        text = "; ".join(f"{f}: {' or '.join(msgs)}" for f, msgs in problems.items())
        raise ValidationError(first_field, text.removeprefix(f"{first_field}: ")) from err


def check_task_type(request: SubmitRequest, runtime_type: str) -> None:
    allowed = TASK_TYPES_BY_RUNTIME[runtime_type]
    if request.task_type not in allowed:
        raise ValidationError(
            "task_type",
            f"{request.task_type!r} is not served by {runtime_type} runtime {request.runtime!r}; use one of {list(allowed)}"
        )


def _int(payload: Mapping[str, Any], key: str, lo: int, hi: int, default: int, fix: str = "") -> int:
    value = payload.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"payload.{key}", f"must be an integer, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValidationError(f"payload.{key}", f"{value} is out of range; use {lo}..{hi}{fix}")
    return value


def _number(payload: Mapping[str, Any], key: str, lo: float, hi: float) -> None:
    value = payload.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"payload.{key}", f"must be a number, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValidationError(f"payload.{key}", f"{value} is out of range; use {lo}..{hi}")


def _string(payload: Mapping[str, Any], key: str, max_len: int = 20000) -> None:
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"payload.{key}", f"must be a string, got {type(value).__name__}")
    if value is not None and len(value) > max_len:
        raise ValidationError(f"payload.{key}", f"{len(value)} characters; keep it under {max_len}")


def check_image(field: str, value: Any, input_buckets: Sequence[str] = ()) -> None:
    """An input image: base64 (optionally a data: URL), or `s3://bucket/key` in an allowed bucket.

    http(s) and file URLs are always refused: the service never fetches arbitrary URLs.
    """
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "must be a base64-encoded PNG/JPEG/WebP string or an s3:// URI")
    if value.startswith("s3://"):
        bucket, _, key = value.removeprefix("s3://").partition("/")
        if bucket not in input_buckets:
            raise ValidationError(field, f"bucket {bucket!r} is not allowed for input images; use one of "
                                  f"{list(input_buckets)} (stack.input_buckets in sdlab.yaml) or send base64")
        if not key or key.endswith("/"):
            raise ValidationError(field, f"{value!r} names no object; use s3://{bucket}/<key>")
        return
    if value.startswith(("http://", "https://", "file:")):
        raise ValidationError(field, "URLs are not fetched by the service; send the image as base64 or as an "
                              f"s3:// URI in one of {list(input_buckets)}")
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValidationError(field, "is not valid base64; encode the image bytes with base64") from err
    if not raw.startswith(_IMAGE_MAGIC):
        raise ValidationError(field, "decodes to bytes that are not a PNG, JPEG, WebP or GIF image")


def check_webui_payload(task_type: str, payload: Mapping[str, Any], limits: Limits,
                        input_buckets: Sequence[str] = ()) -> None:
    """The A1111 txt2img/img2img fields the runtimes use, with the project's limits."""
    _string(payload, "prompt")
    _string(payload, "negative_prompt")
    # which samplers and schedulers exist is the runtime's to say: the agent checks them against its lists
    _string(payload, "sampler_name", 64)
    _string(payload, "scheduler", 64)
    _int(payload, "steps", 1, limits.max_steps, 20)
    _number(payload, "cfg_scale", 0, 30)
    _number(payload, "denoising_strength", 0, 1)
    side = limits.max_side_px
    width = _int(payload, "width", 64, side, 512, "; it must be a multiple of 8")
    height = _int(payload, "height", 64, side, 512, "; it must be a multiple of 8")
    for key, value in (("width", width), ("height", height)):
        if value % 8:
            raise ValidationError(f"payload.{key}",
                                  f"{value} is not a multiple of 8; use {value - value % 8} or {value + 8 - value % 8}")
    if width * height > limits.max_pixels:
        raise ValidationError("payload.width",
                              f"{width}x{height} is over the {limits.max_pixels}-pixel limit; lower width or height")
    _int(payload, "seed", -1, 2**32 - 1, -1)
    batch = _int(payload, "batch_size", 1, limits.max_images_per_task, 1)
    n_iter = _int(payload, "n_iter", 1, limits.max_images_per_task, 1)
    if batch * n_iter > limits.max_images_per_task:
        raise ValidationError("payload.batch_size", f"batch_size x n_iter = {batch * n_iter} images; "
                              f"keep it at most {limits.max_images_per_task}")
    settings = payload.get("override_settings")
    if settings is not None and not isinstance(settings, Mapping):
        raise ValidationError("payload.override_settings", "must be an object, e.g. {\"sd_model_checkpoint\": \"name\"}")
    images = payload.get("init_images")
    scripts = payload.get("alwayson_scripts")
    link = scripts.get("image_link") if isinstance(scripts, Mapping) else None
    if link is not None:  # the guidance's v1alpha1 way to give the init image
        check_image("payload.alwayson_scripts.image_link", link, input_buckets)
    if task_type == "image-to-image" and link is None:
        if not isinstance(images, list) or not images:
            raise ValidationError("payload.init_images", "image-to-image needs a non-empty list of images (base64 or s3://)")
    if images is not None:
        if not isinstance(images, list):
            raise ValidationError("payload.init_images", "must be a list of images (base64 or s3://)")
        for i, image in enumerate(images):
            check_image(f"payload.init_images.{i}", image, input_buckets)
    if payload.get("mask") is not None:
        check_image("payload.mask", payload["mask"], input_buckets)
    if task_type == "extra-single-image":
        check_image("payload.image", payload.get("image"), input_buckets)


def _check_sizes(field: str, values: Mapping[str, Any], limits: Limits) -> None:
    """steps, width, height and batch_size of a workflow node or template parameters, against the limits."""
    for key, lo, hi in (("steps", 1, limits.max_steps), ("width", 64, limits.max_side_px),
                        ("height", 64, limits.max_side_px), ("batch_size", 1, limits.max_images_per_task)):
        value = values.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and not lo <= value <= hi:
            raise ValidationError(f"{field}.{key}", f"{value} is out of range; use {lo}..{hi}")
    width, height = values.get("width"), values.get("height")
    for key, value in (("width", width), ("height", height)):
        if isinstance(value, int) and value % 8:
            raise ValidationError(f"{field}.{key}",
                                  f"{value} is not a multiple of 8; use {value - value % 8} or {value + 8 - value % 8}")
    if isinstance(width, int) and isinstance(height, int) and width * height > limits.max_pixels:
        raise ValidationError(f"{field}.width",
                              f"{width}x{height} is over the {limits.max_pixels}-pixel limit; lower width or height")


def check_workflow(payload: Mapping[str, Any], limits: Limits | None = None, input_buckets: Sequence[str] = ()) -> None:
    """A ComfyUI workflow: the API-format graph {node_id: {"class_type", "inputs"}} itself, `{"prompt": graph}`
    (optionally with `params`), or a named template `{"workflow": name, "params": {...}}` (sdlab/workflows.py).

    KSampler steps and EmptyLatentImage sizes are held to the limits; LoadImage images given as base64 or
    s3:// are checked like any input image (a plain file name refers to the ComfyUI server's input folder).
    """
    limits = limits or Limits()
    named = "workflow" in payload
    if named or "prompt" in payload:
        allowed = ("workflow", "params") if named else ("prompt", "params")
        for key in payload:
            if key not in allowed:
                raise ValidationError(f"payload.{key}", f"unknown field; a {'named' if named else 'wrapped'} workflow "
                                      f"takes {list(allowed)}")
        params = check_params(payload.get("params"))
        _check_sizes("payload.params", params, limits)
        if "image" in params:
            check_image("payload.params.image", params["image"], input_buckets)
        if named:
            check_name(payload["workflow"])
            return
    graph, where = (payload["prompt"], "payload.prompt") if "prompt" in payload else (payload, "payload")
    if not isinstance(graph, Mapping) or not graph:
        raise ValidationError(where, "a pipeline task needs a ComfyUI API-format workflow ('Save (API format)'), "
                              "or {\"workflow\": <template name>, \"params\": {...}}")
    for node_id, node in graph.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise ValidationError(f"{where}.{node_id}", "each node needs a string `class_type` and an `inputs` object")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise ValidationError(f"{where}.{node_id}.inputs", "must be an object")
        if node["class_type"] in ("KSampler", "EmptyLatentImage"):
            _check_sizes(f"{where}.{node_id}.inputs", inputs, limits)
        image = inputs.get("image")
        if node["class_type"] == "LoadImage" and isinstance(image, str) and (
                image.startswith(("s3://", "http://", "https://", "file:", "data:")) or len(image) > 255):
            check_image(f"{where}.{node_id}.inputs.image", image, input_buckets)


def validate_payload(request: SubmitRequest, runtime_type: str, limits: Limits, input_buckets: Sequence[str] = ()) -> None:
    """The payload against the runtime type and limits; `input_buckets`: where s3:// input images may come from."""
    check_task_type(request, runtime_type)
    if request.task_type == "pipeline":
        check_workflow(request.payload, limits, input_buckets)
    else:
        check_webui_payload(request.task_type, request.payload, limits, input_buckets)
