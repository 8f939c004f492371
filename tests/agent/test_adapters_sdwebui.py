"""The SD WebUI adapter against a runtime process: model switching, guidance-shaped requests, s3:// inputs,
errors and interrupts."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import pytest
from PIL import Image

from agent.runtimes import RuntimeFailure, adapter_for
from agent.runtimes.sdwebui import bare_model_name, prepare_payload
from sdlab.contracts import TaskMessage
from tests.agent.conftest import INPUTS_BUCKET, OTHER_BUCKET, png_bytes

pytestmark = pytest.mark.integration
SMALL = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 3}


def _task(payload: dict, task_type: str = "text-to-image") -> TaskMessage:
    return TaskMessage(id="t-webui", runtime="rt", task_type=task_type, prefix="out", payload=payload, submitted_at=time.time())


def _loaded(runtime_url: str) -> str:
    return httpx.get(f"{runtime_url}/sdapi/v1/options").json()["sd_model_checkpoint"]


def test_adapters_sdwebui_prepare_accepts_the_guidance_shape():
    body, wanted = prepare_payload({"prompt": "x", "alwayson_scripts": {
        "task": "image-to-image", "id_task": "t1", "sd_model_checkpoint": "v1-5.safetensors", "save_dir": "out",
        "override_settings": {"CLIP_stop_at_last_layers": 2}, "image_link": "s3://b/i.png"}})
    assert wanted == "v1-5.safetensors"
    assert "alwayson_scripts" not in body  # only routing keys were there: the runtime sees no scripts
    assert body["override_settings"] == {"CLIP_stop_at_last_layers": 2} and body["init_images"] == ["s3://b/i.png"]
    assert prepare_payload({"override_settings": {"sd_model_checkpoint": "m"}, "alwayson_scripts": {"x": {}}}) == (
        {"override_settings": {"sd_model_checkpoint": "m"}, "alwayson_scripts": {"x": {}}}, "m")
    assert bare_model_name("v1-5-pruned.safetensors [6ce0161689]") == "v1-5-pruned" == bare_model_name("v1-5-pruned")


def test_adapters_sdwebui_switches_the_model_and_it_sticks(runtime_url):
    adapter = adapter_for("sdwebui", runtime_url, 60)
    assert adapter.ready()
    try:
        result = adapter.run(_task({**SMALL, "override_settings": {"sd_model_checkpoint": "tiny-b"}}))
        assert result.info["sd_model_name"] == "tiny-b" and result.images[0].startswith(b"\x89PNG")
        assert _loaded(runtime_url) == "tiny-b"  # through the options endpoint: the next task pays no load
        plain = adapter.run(_task(SMALL))
        assert plain.info["sd_model_name"] == "tiny-b"
        # the guidance's way: the checkpoint among the alwayson_scripts routing keys, with its A1111 hash suffix
        back = adapter.run(_task({**SMALL, "alwayson_scripts": {"sd_model_checkpoint": "tiny-a [0123456789]",
                                                                "task": "text-to-image", "id_task": "x"}}))
        assert back.info["sd_model_name"] == "tiny-a" and _loaded(runtime_url) == "tiny-a"
    finally:
        adapter.ensure_model("tiny-a")


def test_adapters_sdwebui_unknown_model_fails_naming_the_available_ones(runtime_url):
    adapter = adapter_for("sdwebui", runtime_url, 60)
    with pytest.raises(RuntimeFailure) as info:
        adapter.run(_task({**SMALL, "override_settings": {"sd_model_checkpoint": "sd_xl_base_1.0.safetensors"}}))
    assert not info.value.retryable
    assert "sd_xl_base_1.0.safetensors" in str(info.value) and "'tiny-a', 'tiny-b'" in str(info.value)
    assert _loaded(runtime_url) == "tiny-a"


def test_adapters_sdwebui_img2img_reads_s3_inputs_from_allowed_buckets_only(runtime_url, s3, inputs):
    s3.put_object(Bucket=INPUTS_BUCKET, Key="in/photo.png", Body=png_bytes())
    s3.put_object(Bucket=OTHER_BUCKET, Key="in/photo.png", Body=png_bytes())
    adapter = adapter_for("sdwebui", runtime_url, 60, inputs)
    body = {**SMALL, "width": 96, "height": 64, "denoising_strength": 0.5}
    result = adapter.run(_task({**body, "init_images": [f"s3://{INPUTS_BUCKET}/in/photo.png"]}, "image-to-image"))
    assert len(result.images) == 1 and result.info["denoising_strength"] == 0.5
    b64 = base64.b64encode(png_bytes()).decode()
    assert adapter.run(_task({**body, "init_images": [b64]}, "image-to-image")).images
    for uri, hint, retryable in ((f"s3://{OTHER_BUCKET}/in/photo.png", "not in an allowed input bucket", False),
                                 (f"s3://{INPUTS_BUCKET}/missing.png", "NoSuchKey", False),
                                 ("https://example.com/x.png", "not fetched", False)):
        with pytest.raises(RuntimeFailure) as info:
            adapter.run(_task({**body, "init_images": [uri]}, "image-to-image"))
        assert hint in str(info.value) and info.value.retryable is retryable
        assert "payload.init_images.0" in str(info.value)


def test_adapters_sdwebui_rejection_is_final_unreachable_is_retryable(runtime_url):
    with pytest.raises(RuntimeFailure) as info:
        adapter_for("sdwebui", runtime_url, 60).run(_task({**SMALL, "width": 100}))
    assert not info.value.retryable and "422" in str(info.value) and "multiple of 8" in str(info.value)
    with pytest.raises(RuntimeFailure) as info:
        adapter_for("sdwebui", "http://127.0.0.1:9", 5).run(_task(SMALL))
    assert info.value.retryable


def test_adapters_sdwebui_timeout_interrupts_the_runtime(runtime_url):
    adapter = adapter_for("sdwebui", runtime_url, 1.0)
    started = time.monotonic()
    with pytest.raises(RuntimeFailure) as info:
        adapter.run(_task({**SMALL, "steps": 150, "width": 512, "height": 512}))
    assert info.value.retryable and "in time" in str(info.value)
    assert time.monotonic() - started < 10
    # the interrupted job returns early: the runtime is free again well before 150 steps could finish
    deadline = time.monotonic() + 30
    while httpx.get(f"{runtime_url}/sdapi/v1/progress").json()["state"]["job_count"]:
        assert time.monotonic() < deadline, "the runtime kept generating after the interrupt"
        time.sleep(0.1)


def test_adapters_sdwebui_interrupt_from_another_thread(runtime_url):
    adapter = adapter_for("sdwebui", runtime_url, 60)
    box: dict = {}
    slow = _task({**SMALL, "steps": 150, "width": 512, "height": 512})
    thread = threading.Thread(target=lambda: box.update(r=adapter.run(slow)))
    started = time.monotonic()
    thread.start()
    # wait for this job's first step: sampling_step alone may still hold the previous job's last step
    while True:
        state = httpx.get(f"{runtime_url}/sdapi/v1/progress").json()["state"]
        if state["job_count"] and state["sampling_step"] >= 1:
            break
        assert time.monotonic() - started < 30, "the slow job never started"
        time.sleep(0.05)
    adapter.interrupt()
    thread.join(60)
    assert box["r"].info["interrupted"] is True and time.monotonic() - started < 30


def test_adapters_sdwebui_extra_single_image(runtime_url, s3, inputs):
    s3.put_object(Bucket=INPUTS_BUCKET, Key="in/small.png", Body=png_bytes((40, 30)))
    adapter = adapter_for("sdwebui", runtime_url, 60, inputs)
    result = adapter.run(_task({"image": f"s3://{INPUTS_BUCKET}/in/small.png", "upscaling_resize": 2,
                                "upscaler_1": "Lanczos"}, "extra-single-image"))
    assert Image.open(io.BytesIO(result.images[0])).size == (80, 60)
    assert "80x60" in result.info["html_info"]
    with pytest.raises(RuntimeFailure) as info:
        adapter.run(_task({"image": base64.b64encode(png_bytes()).decode(), "upscaler_1": "R-ESRGAN 4x+"},
                          "extra-single-image"))
    assert not info.value.retryable and "upscaler_1" in str(info.value) and "Lanczos" in str(info.value)
