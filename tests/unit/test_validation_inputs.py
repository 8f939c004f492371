"""Input images (base64 or allow-listed s3:// URIs) and ComfyUI workflows at the API."""

import base64
import json
from pathlib import Path

import pytest

from sdlab.api import validation
from sdlab.config import Limits
from sdlab.errors import ValidationError

LIMITS = Limits(max_steps=50, max_side_px=1024, max_pixels=512 * 512, max_images_per_task=4)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
ALLOWED = ("stack-data", "team-inputs")
TXT2IMG = json.loads((Path(__file__).resolve().parents[1] / "events" / "comfyui_txt2img_api.json").read_text())


def check(body, runtime_type="sdwebui"):
    request = validation.parse_request(body)
    validation.validate_payload(request, runtime_type, LIMITS, input_buckets=ALLOWED)
    return request


def img2img(*images, **extra):
    return {"runtime": "a", "task_type": "image-to-image", "payload": {"init_images": list(images), **extra}}


def test_inputs_s3_uri_in_an_allowed_bucket_is_accepted():
    assert check(img2img("s3://team-inputs/cats/1.png", mask="s3://stack-data/m.png")).task_type == "image-to-image"


@pytest.mark.parametrize("body, field, hint", [
    (img2img("s3://someone-else/x.png"), "payload.init_images.0", "['stack-data', 'team-inputs']"),
    (img2img("s3://team-inputs/"), "payload.init_images.0", "names no object"),
    (img2img("https://example.com/cat.png"), "payload.init_images.0", "not fetched"),
    (img2img("file:///etc/passwd"), "payload.init_images.0", "not fetched"),
    (img2img(PNG, mask="http://169.254.169.254/"), "payload.mask", "not fetched"),
    ({"runtime": "a", "task_type": "extra-single-image", "payload": {"image": "s3://nope/x.png"}}, "payload.image",
     "not allowed"),
    ({"runtime": "a", "task_type": "image-to-image",
      "payload": {"alwayson_scripts": {"image_link": "https://x/y.png"}}}, "payload.alwayson_scripts.image_link", "not fetched"),
])
def test_inputs_refused_name_the_field_and_the_allowed_buckets(body, field, hint):
    with pytest.raises(ValidationError) as info:
        check(body)
    assert info.value.field == field and info.value.status == 400
    assert hint in str(info.value), str(info.value)


def test_inputs_workflow_forms_full_wrapped_and_named():
    for payload in (TXT2IMG, {"prompt": TXT2IMG}, {"prompt": TXT2IMG, "params": {"seed": 3}},
                    {"workflow": "txt2img-basic", "params": {"prompt": "a fox", "width": 256, "height": 256}},
                    {"workflow": "img2img-basic", "params": {"image": "s3://stack-data/in.png", "denoise": 0.5}}):
        assert check({"runtime": "c", "task_type": "pipeline", "payload": payload}, "comfyui").task_type == "pipeline"


@pytest.mark.parametrize("payload, field, hint", [
    ({"workflow": "../x"}, "payload.workflow", "workflow name"),
    ({"workflow": "t", "params": {"colour": 1}}, "payload.params.colour", "unknown parameter"),
    ({"workflow": "t", "params": {"steps": 500}}, "payload.params.steps", "1..50"),
    ({"workflow": "t", "params": {"width": 100}}, "payload.params.width", "multiple of 8"),
    ({"workflow": "t", "params": {"image": "s3://elsewhere/x.png"}}, "payload.params.image", "not allowed"),
    ({"workflow": "t", "extra": 1}, "payload.extra", "unknown field"),
    ({**TXT2IMG, "3": {**TXT2IMG["3"], "inputs": {**TXT2IMG["3"]["inputs"], "steps": 999}}}, "payload.3.inputs.steps", "1..50"),
    ({**TXT2IMG, "5": {**TXT2IMG["5"], "inputs": {"width": 1024, "height": 1024, "batch_size": 1}}},
     "payload.5.inputs.width", "pixel limit"),
    ({**TXT2IMG, "10": {"class_type": "LoadImage", "inputs": {"image": "https://x/y.png"}}}, "payload.10.inputs.image",
     "not fetched"),
    ({"prompt": {}}, "payload.prompt", "API-format workflow"),
])
def test_inputs_workflow_problems_name_the_field(payload, field, hint):
    with pytest.raises(ValidationError) as info:
        check({"runtime": "c", "task_type": "pipeline", "payload": payload}, "comfyui")
    assert info.value.field == field and hint in str(info.value), str(info.value)


def test_inputs_load_image_file_names_refer_to_the_comfyui_server():
    graph = {**TXT2IMG, "10": {"class_type": "LoadImage", "inputs": {"image": "example.png", "upload": "image"}}}
    assert check({"runtime": "c", "task_type": "pipeline", "payload": graph}, "comfyui")
