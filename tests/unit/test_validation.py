"""Request validation: each bad request names its field and says how to fix it."""

import base64
import json

import pytest

from sdlab.api import validation
from sdlab.config import Limits
from sdlab.errors import ValidationError

LIMITS = Limits(max_steps=50, max_side_px=1024, max_pixels=512 * 512, max_images_per_task=4)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def check(body, runtime_type="sdwebui"):
    data = validation.parse_body(json.dumps(body), "application/json", LIMITS)
    request = validation.parse_request(data)
    validation.validate_payload(request, runtime_type, LIMITS)
    return request


def test_validation_accepts_a_plain_txt2img():
    req = check({"runtime": "a", "payload": {"prompt": "a fox", "steps": 20, "width": 256, "height": 256}})
    assert req.task_type == "text-to-image" and req.priority == "normal"


def test_validation_upgrades_the_guidance_v1alpha2_shape():
    req = check({"task": {"metadata": {"id": "t-1", "runtime": "a", "tasktype": "text-to-image", "prefix": "out"},
                          "content": {"prompt": "x"}}})
    assert (req.id, req.runtime, req.prefix, req.payload) == ("t-1", "a", "out", {"prompt": "x"})


@pytest.mark.parametrize(("body", "content_type", "status", "field"), [
    ('{"runtime": "a"}', "text/plain", 415, "Content-Type"),
    ('{"runtime": "a"}', None, 415, "Content-Type"),
    ("{not json", "application/json", 400, "body"),
    ("[1, 2]", "application/json", 400, "body"),
])
def test_validation_body_level(body, content_type, status, field):
    with pytest.raises(ValidationError) as info:
        validation.parse_body(body, content_type, LIMITS)
    assert (info.value.status, info.value.field) == (status, field)


@pytest.mark.parametrize(("body", "field", "hint"), [
    ({"payload": {}}, "runtime", "required"),
    ({"runtime": "a"}, "payload", "required"),
    ({"runtime": "a", "payload": {}, "colour": "red"}, "colour", "unknown field"),
    ({"runtime": "a", "payload": [], }, "payload", "dictionary"),
    ({"runtime": "a", "payload": {}, "id": "../../etc"}, "id", "letters, digits"),
    ({"runtime": "a", "payload": {}, "prefix": "/abs"}, "prefix", "leading"),
    ({"runtime": "a", "payload": {}, "priority": "urgent"}, "priority", "normal"),
    ({"runtime": "a", "payload": {}, "ttl_seconds": -5}, "ttl_seconds", "greater than"),
    ({"runtime": "a", "payload": {}, "callback_url": "http://x"}, "callback_url", "https"),
    ({"runtime": "a", "payload": {}, "task_type": "video"}, "task_type", "text-to-image"),
    ({"runtime": "a", "payload": {"steps": 500}}, "payload.steps", "1..50"),
    ({"runtime": "a", "payload": {"steps": "20"}}, "payload.steps", "integer"),
    ({"runtime": "a", "payload": {"steps": True}}, "payload.steps", "integer"),
    ({"runtime": "a", "payload": {"steps": 0}}, "payload.steps", "1..50"),
    ({"runtime": "a", "payload": {"width": 250}}, "payload.width", "multiple of 8"),
    ({"runtime": "a", "payload": {"width": 1024, "height": 1024}}, "payload.width", "pixel limit"),
    ({"runtime": "a", "payload": {"height": -8}}, "payload.height", "64..1024"),
    ({"runtime": "a", "payload": {"cfg_scale": 99}}, "payload.cfg_scale", "0..30"),
    ({"runtime": "a", "payload": {"seed": -2}}, "payload.seed", "-1.."),
    ({"runtime": "a", "payload": {"batch_size": 3, "n_iter": 2}}, "payload.batch_size", "at most 4"),
    ({"runtime": "a", "payload": {"prompt": 7}}, "payload.prompt", "string"),
    ({"runtime": "a", "payload": {"sampler_name": 7}}, "payload.sampler_name", "string"),
    ({"runtime": "a", "payload": {"scheduler": ["karras"]}}, "payload.scheduler", "string"),
    ({"runtime": "a", "payload": {"override_settings": "x"}}, "payload.override_settings", "object"),
    ({"runtime": "a", "task_type": "image-to-image", "payload": {}}, "payload.init_images", "non-empty"),
    ({"runtime": "a", "task_type": "image-to-image", "payload": {"init_images": ["%%%"]}}, "payload.init_images.0", "base64"),
    ({"runtime": "a", "task_type": "image-to-image", "payload": {"init_images": ["aGVsbG8="]}},
     "payload.init_images.0", "not a PNG"),
    ({"runtime": "a", "task_type": "image-to-image", "payload": {"init_images": ["http://169.254.169.254/x"]}},
     "payload.init_images.0", "not fetched"),
    ({"runtime": "a", "task_type": "pipeline", "payload": {"1": {}}}, "task_type", "not served by sdwebui"),
])
def test_validation_names_the_field(body, field, hint):
    with pytest.raises(ValidationError) as info:
        check(body)
    assert info.value.field == field, str(info.value)
    assert info.value.status == 400
    assert hint in str(info.value), str(info.value)


def test_validation_img2img_with_a_real_png():
    req = check({"runtime": "a", "task_type": "image-to-image", "payload": {"init_images": [f"data:image/png;base64,{PNG}"]}})
    assert req.task_type == "image-to-image"


def test_validation_comfyui_workflow_shape():
    ok = {"runtime": "c", "task_type": "pipeline", "payload": {"3": {"class_type": "KSampler", "inputs": {}}}}
    assert check(ok, "comfyui").task_type == "pipeline"
    with pytest.raises(ValidationError) as info:
        check({"runtime": "c", "task_type": "pipeline", "payload": {"3": {"inputs": {}}}}, "comfyui")
    assert info.value.field == "payload.3"


def test_validation_413_measures_the_message_that_would_be_published():
    """The size that counts is the task message (body + attributes, as SNS counts them), not the request body:
    whitespace in a request does not count, the fields the API adds do."""
    attrs = {"runtime": {"DataType": "String", "StringValue": "a"}}
    validation.check_message_size("x" * (LIMITS.max_request_bytes - 20), attrs, LIMITS)
    with pytest.raises(ValidationError) as info:
        validation.check_message_size("x" * (LIMITS.max_request_bytes - 10), attrs, LIMITS)
    assert (info.value.status, info.value.field) == (413, "body") and "s3:// URIs" in str(info.value)
    with pytest.raises(ValidationError):  # multi-byte characters count as the bytes they are
        validation.check_message_size("é" * (LIMITS.max_request_bytes // 2 + 1), {}, LIMITS)
    roomy = validation.parse_body(" " * 300_000 + '{"runtime": "a", "payload": {}}', "application/json", LIMITS)
    assert roomy == {"runtime": "a", "payload": {}}
