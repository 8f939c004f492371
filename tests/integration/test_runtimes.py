"""Each runtime type end to end through the API (`POST /v1/tasks`): SD WebUI (rt-a, rt-b) and ComfyUI (rt-c),
served by runtime processes over real HTTP and websocket, with s3:// inputs, templates, switches and failures."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from sdlab.aws import AwsTarget
from sdlab.aws import client as aws_client
from sdlab.client import ApiError

pytestmark = pytest.mark.integration
EVENTS = Path(__file__).resolve().parents[1] / "events"
TXT2IMG = json.loads((EVENTS / "comfyui_txt2img_api.json").read_text())
IMG2IMG = json.loads((EVENTS / "comfyui_img2img_api.json").read_text())
# rt-c serves the bundled model (tests/conftest.py): the graphs name it as their ComfyUI ckpt_name
TXT2IMG["4"]["inputs"]["ckpt_name"] = IMG2IMG["1"]["inputs"]["ckpt_name"] = "shapes"


def _png(size=(96, 64), colour=(40, 90, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _s3(stack):
    return aws_client("s3", AwsTarget(stack["region"], stack["aws_endpoint_url"]))


def _with(graph: dict, node: str, **inputs) -> dict:
    out = copy.deepcopy(graph)
    out[node]["inputs"].update(inputs)
    return out


def _result(stack, task_id: str) -> dict:
    return json.loads(_s3(stack).get_object(Bucket=stack["bucket"], Key=f"outputs/{task_id}/result.json")["Body"].read())


def test_runtimes_comfyui_full_workflow_and_named_template(stack, client):
    full = client.submit("rt-c", payload=_with(TXT2IMG, "3", steps=4), task_type="pipeline")
    named = client.submit("rt-c", task_type="pipeline", payload={
        "workflow": "txt2img-basic", "params": {"prompt": "a red fox", "seed": 9, "steps": 4, "width": 64, "height": 96}})
    notes = client.wait([full.id, named.id], timeout=180)
    assert notes[full.id].status.value == "completed", notes[full.id].error
    assert notes[named.id].status.value == "completed", notes[named.id].error
    assert [im.size for im in client.images(notes[full.id])] == [(128, 96)]
    assert [im.size for im in client.images(notes[named.id])] == [(64, 96)]
    info = _result(stack, full.id)["info"]
    assert info["status"]["status_str"] == "success" and info["outputs"]["9"]["images"][0]["type"] == "output"


def test_runtimes_img2img_from_the_stack_bucket_on_both_apis(stack, client):
    _s3(stack).put_object(Bucket=stack["bucket"], Key="inputs/photo.png", Body=_png())
    uri = f"s3://{stack['bucket']}/inputs/photo.png"
    webui = client.submit("rt-a", task_type="image-to-image", payload={
        "prompt": "a harbour", "init_images": [uri], "steps": 4, "width": 96, "height": 64, "denoising_strength": 0.5})
    comfy = client.submit("rt-c", task_type="pipeline", payload=_with(_with(IMG2IMG, "13", steps=3), "10", image=uri))
    notes = client.wait([webui.id, comfy.id], timeout=180)
    for task in (webui, comfy):
        assert notes[task.id].status.value == "completed", notes[task.id].error
        assert client.images(notes[task.id])[0].size == (96, 64)


def test_runtimes_api_refuses_inputs_outside_the_allow_list(stack, client):
    for payload, field in (({"init_images": ["s3://someone-elses-bucket/x.png"]}, "payload.init_images.0"),
                           ({"init_images": ["https://example.com/x.png"]}, "payload.init_images.0")):
        with pytest.raises(ApiError) as info:
            client.submit("rt-a", task_type="image-to-image", payload={"prompt": "x", **payload})
        assert info.value.status == 400 and info.value.field == field
        assert stack["bucket"] in info.value.message  # the allowed buckets are listed
    with pytest.raises(ApiError) as info:
        client.submit("rt-c", task_type="pipeline", payload=_with(IMG2IMG, "10", image="s3://elsewhere/x.png"))
    assert info.value.status == 400 and info.value.field == "payload.10.inputs.image"


def test_runtimes_comfyui_failures_name_the_node(stack, client):
    unsupported = {**TXT2IMG, "12": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}}}
    broken = _with(TXT2IMG, "3", sampler_name="ddim", scheduler="karras", steps=2)
    tasks = [client.submit("rt-c", task_type="pipeline", payload=p) for p in (unsupported, broken)]
    notes = client.wait([t.id for t in tasks], timeout=120)
    first, second = (notes[t.id] for t in tasks)
    assert first.status.value == "failed" and "UpscaleModelLoader does not exist" in first.error and "#12" in first.error
    assert second.status.value == "failed" and second.error.startswith("ComfyUI node 3 (KSampler) failed: ValueError")
    assert client.status(tasks[1].id)["error"] == second.error


def test_runtimes_sdwebui_model_switch_through_the_api(stack, client):
    switched = client.submit("rt-a", "model switch", payload={"steps": 3, "width": 64, "height": 64, "seed": 1,
                                                              "override_settings": {"sd_model_checkpoint": "tiny-b"}})
    note = client.wait(switched.id, timeout=120)[switched.id]
    assert note.status.value == "completed", note.error
    assert _result(stack, switched.id)["info"]["sd_model_name"] == "tiny-b"
    back = client.submit("rt-a", "switch back", payload={"steps": 3, "width": 64, "height": 64,
                                                          "override_settings": {"sd_model_checkpoint": "shapes"}})
    assert client.wait(back.id, timeout=120)[back.id].status.value == "completed"
    assert _result(stack, back.id)["info"]["sd_model_name"] == "shapes"
    missing = client.submit("rt-a", "no such model", payload={"steps": 3, "width": 64, "height": 64,
                                                              "override_settings": {"sd_model_checkpoint": "sdxl"}})
    failed = client.wait(missing.id, timeout=120)[missing.id]
    assert failed.status.value == "failed" and "'sdxl' is not on the runtime" in failed.error
