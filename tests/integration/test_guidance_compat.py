"""The public guidance's clients against the local stack: its v1alpha2 and v1alpha1 example requests (its
test/v1alpha2/*.json and test/v1alpha1/*.json, rewritten here), answered as it documents and run end to end, with
the guidance's notification fields. Two changes only, both deployment-specific: the runtime and model names are
this stack's, and init images are s3:// URIs in the stack's bucket (the guidance's examples link an https image;
this service never fetches URLs). Its `prefix: output` lands under the stack's output prefix (outputs/output).
The examples' sizes are kept (512 px, 16-20 steps): they run on rt-b's quick random model, which the ComfyUI
runtime rt-c loads too (CheckpointLoaderSimple), so the bundled model's slower 512 px runs stay out of the suite."""

from __future__ import annotations

import io
import json
import uuid

import httpx
import pytest
from PIL import Image

from sdlab.aws import AwsTarget
from sdlab.aws import client as aws_client

pytestmark = pytest.mark.integration


def _png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (40, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cat(stack) -> str:
    """The guidance's example init image, as an object in the stack's bucket."""
    key = "inputs/guidance/cat.png"
    aws_client("s3", AwsTarget(stack["region"], stack["aws_endpoint_url"])).put_object(
        Bucket=stack["bucket"], Key=key, Body=_png(128), ContentType="image/png")
    return f"s3://{stack['bucket']}/{key}"


def _v1alpha2(task_id: str, runtime: str, tasktype: str, content: dict) -> dict:
    return {"task": {"metadata": {"id": task_id, "runtime": runtime, "tasktype": tasktype, "prefix": "output",
                                  "context": ""}, "content": content}}


def _pipeline(ckpt: str) -> dict:
    """The guidance's ComfyUI example workflow (test/v1alpha2/pipeline.json), with this stack's checkpoint."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 89465186141685, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {
            "text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def test_guidance_requests_run_end_to_end(stack, client, cat):
    http = httpx.Client(headers={"x-api-key": stack["api_key"]}, timeout=30)
    run = uuid.uuid4().hex[:6]
    dog = {"prompt": "A dog", "steps": 16, "width": 512, "height": 512}
    wizard = "cat wizard, gandalf, lord of the rings, detailed, fantasy, cute, adorable, Pixar, Disney, 8k"
    v2 = {
        f"test-t2i-{run}": _v1alpha2(f"test-t2i-{run}", "rt-b", "text-to-image", {"alwayson_scripts": {}, **dog}),
        f"test-i2i-{run}": _v1alpha2(f"test-i2i-{run}", "rt-b", "image-to-image", {
            "alwayson_scripts": {}, "init_images": [cat], "prompt": wizard, "steps": 16, "width": 512, "height": 512}),
        f"test-extra-{run}": _v1alpha2(f"test-extra-{run}", "rt-b", "extra-single-image", {
            "image": cat, "upscaling_resize": 2, "upscaler_1": "Lanczos"}),
        f"test-pipeline-{run}": _v1alpha2(f"test-pipeline-{run}", "rt-c", "pipeline", _pipeline("tiny-b")),
    }
    v1 = {
        f"v1-t2i-{run}": {"alwayson_scripts": {"task": "text-to-image", "sd_model_checkpoint": "tiny-b.safetensors",
                                               "id_task": f"v1-t2i-{run}", "save_dir": "outputs"}, **dog},
        f"v1-i2i-{run}": {"alwayson_scripts": {"task": "image-to-image", "image_link": cat, "id_task": f"v1-i2i-{run}",
                                               "sd_model_checkpoint": "tiny-b.safetensors", "save_dir": "outputs"},
                          "prompt": wizard, "steps": 16, "width": 512, "height": 512},
    }
    client._ensure_inbox()  # the guidance's consumers subscribe to the results topic before submitting
    for task_id, body in v2.items():
        for path in ("/v1alpha2", "/v1alpha2/"):  # its smoke test posts to `${API}/v1alpha2/`; a repeat is the same task
            reply = http.post(f"{stack['api_url']}{path}", json=body)
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            runtime = body["task"]["metadata"]["runtime"]
            assert answer == {"id": task_id, "runtime": runtime, "status_url": f"{stack['api_url']}/v1/tasks/{task_id}",
                              "output_location": f"s3://{stack['bucket']}/outputs/output/{task_id}/"}
    for task_id, body in v1.items():
        reply = http.post(f"{stack['api_url']}/v1alpha1", json=body)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["id_task"] == task_id and answer["sd_model_checkpoint"] == "tiny-b.safetensors"
        assert answer["runtime"] == "rt-b"  # the sdwebui runtime whose model is that checkpoint
        assert answer["output_location"] == f"s3://{stack['bucket']}/outputs/{task_id}/"

    notes = client.wait([*v2, *v1], timeout=600)
    s3 = aws_client("s3", AwsTarget(stack["region"], stack["aws_endpoint_url"]))
    for note in notes.values():
        assert note.status.value == "completed", note
        # the guidance's notification fields, for its consumers
        assert note.result is True and note.image_url == note.images and note.image_url
        bucket, key = note.output_url.removeprefix("s3://").split("/", 1)
        assert json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["status"] == "completed"
        assert note.receipt is not None and note.receipt.instance_type == "local"
    for task_id in notes:
        record = client.status(task_id)
        progress = record.get("progress")
        print(f"{task_id}: run {record['run_s']:.2f} s, gpu {record['receipt']['gpu_s']:.2f} s, progress {progress}")
        if record["run_s"] >= 2.0 and "extra" not in task_id:  # polled every 0.5 s (ComfyUI: pushed), written <= 1/s
            # steps: the request's (i2i: times the denoising strength)
            assert progress and 0 < progress["fraction"] <= 1 and 0 < progress["steps"] <= 20, record
    sizes = {task_id: client.images(note)[0].size for task_id, note in notes.items()}
    assert sizes[f"test-extra-{run}"] == (256, 256)  # 128 px cat, upscaled x2
    assert all(size == (512, 512) for task_id, size in sizes.items() if "extra" not in task_id)


def test_guidance_requests_refused_with_the_field(stack):
    http = httpx.Client(headers={"x-api-key": stack["api_key"]}, timeout=30)
    cases = [
        ("/v1alpha2", {"runtime": "rt-a", "payload": {}}, 400, "task"),
        ("/v1alpha2", _v1alpha2("x1", "rt-a", "pipeline", {"prompt": "x"}), 400, "task_type"),
        ("/v1alpha2", _v1alpha2("x1", "nope", "text-to-image", {"prompt": "x"}), 404, "runtime"),
        ("/v1alpha1", {"prompt": "x"}, 400, "alwayson_scripts"),
        ("/v1alpha1", {"alwayson_scripts": {"task": "text-to-video", "sd_model_checkpoint": "shapes", "id_task": "x2"}},
         400, "alwayson_scripts.task"),
        ("/v1alpha1", {"alwayson_scripts": {"task": "text-to-image", "sd_model_checkpoint": "v2-1_768-ema-pruned.safetensors",
                                            "id_task": "x3"}}, 404, "alwayson_scripts.sd_model_checkpoint"),
    ]
    for path, body, status, field in cases:
        reply = http.post(f"{stack['api_url']}{path}", json=body)
        assert reply.status_code == status, (path, body, reply.text)
        assert reply.json()["error"]["field"] == field, reply.text
    reply = http.get(f"{stack['api_url']}/v1alpha2")
    assert reply.status_code == 405 and reply.headers["Allow"] == "POST"
