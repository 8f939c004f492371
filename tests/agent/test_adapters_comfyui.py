"""The ComfyUI adapter against a runtime process (real HTTP and websocket): full workflows, named templates,
s3:// inputs, rejected graphs, execution errors, timeouts and cancels."""

from __future__ import annotations

import copy
import io
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from agent.runtimes import RuntimeFailure, adapter_for
from agent.runtimes.comfyui import describe_rejection
from sdlab.contracts import TaskMessage
from tests.agent.conftest import INPUTS_BUCKET, OTHER_BUCKET, png_bytes

pytestmark = pytest.mark.integration
EVENTS = Path(__file__).resolve().parents[1] / "events"
TXT2IMG = json.loads((EVENTS / "comfyui_txt2img_api.json").read_text())
IMG2IMG = json.loads((EVENTS / "comfyui_img2img_api.json").read_text())


def _task(payload: dict, task_id: str = "t-comfy") -> TaskMessage:
    return TaskMessage(id=task_id, runtime="rt", task_type="pipeline", prefix="out", payload=payload, submitted_at=time.time())


def _with(graph: dict, node: str, **inputs) -> dict:
    out = copy.deepcopy(graph)
    out[node]["inputs"].update(inputs)
    return out


def _size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_adapters_comfyui_runs_an_exported_workflow_unchanged(runtime_url):
    adapter = adapter_for("comfyui", runtime_url, 60)
    assert adapter.ready()
    result = adapter.run(_task(TXT2IMG))
    assert len(result.images) == 1 and _size(result.images[0]) == (128, 96)
    assert result.info["status"] == {"status_str": "success", "completed": True}
    assert result.info["outputs"]["9"]["images"][0]["type"] == "output"
    wrapped = adapter.run(_task({"prompt": _with(TXT2IMG, "5", batch_size=2)}))  # the /prompt body shape works too
    assert len(wrapped.images) == 2


def test_adapters_comfyui_model_comes_from_the_graph(runtime_url):
    adapter = adapter_for("comfyui", runtime_url, 60)
    a = adapter.run(_task(_with(TXT2IMG, "3", steps=3)))
    b = adapter.run(_task(_with(_with(TXT2IMG, "3", steps=3), "4", ckpt_name="tiny-b")))
    assert a.images[0] != b.images[0]
    assert httpx.get(f"{runtime_url}/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-a"  # per prompt only


def test_adapters_comfyui_named_template_with_params(runtime_url, inputs):
    adapter = adapter_for("comfyui", runtime_url, 60, inputs)
    params = {"prompt": "a red fox", "seed": 5, "steps": 3, "width": 64, "height": 128, "batch_size": 2}
    result = adapter.run(_task({"workflow": "txt2img-basic", "params": params}))
    assert [_size(png) for png in result.images] == [(64, 128), (64, 128)]
    with pytest.raises(RuntimeFailure) as info:
        adapter.run(_task({"workflow": "no-such-template"}))
    assert not info.value.retryable and "txt2img-basic" in str(info.value)  # the message lists what exists
    with pytest.raises(RuntimeFailure) as info:
        adapter.run(_task({"workflow": "img2img-basic", "params": {"width": 64}}))
    assert not info.value.retryable and "params.width" in str(info.value)


def test_adapters_comfyui_img2img_uploads_s3_and_base64_inputs(runtime_url, s3, inputs):
    s3.put_object(Bucket=INPUTS_BUCKET, Key="in/photo.png", Body=png_bytes((96, 64)))
    s3.put_object(Bucket=OTHER_BUCKET, Key="in/photo.png", Body=png_bytes((96, 64)))
    adapter = adapter_for("comfyui", runtime_url, 60, inputs)
    graph = _with(IMG2IMG, "13", steps=3)
    from_s3 = adapter.run(_task(_with(graph, "10", image=f"s3://{INPUTS_BUCKET}/in/photo.png"), "t-img-1"))
    assert _size(from_s3.images[0]) == (96, 64)
    import base64

    inline = adapter.run(_task(_with(graph, "10", image=base64.b64encode(png_bytes((64, 64))).decode()), "t-img-2"))
    assert _size(inline.images[0]) == (64, 64)
    named = adapter.run(_task({"workflow": "img2img-basic", "params": {"image": f"s3://{INPUTS_BUCKET}/in/photo.png",
                                                                          "steps": 3, "denoise": 0.5}}))
    assert _size(named.images[0]) == (96, 64)
    with pytest.raises(RuntimeFailure) as info:
        adapter.run(_task(_with(graph, "10", image=f"s3://{OTHER_BUCKET}/in/photo.png")))
    assert not info.value.retryable and "payload.10.inputs.image" in str(info.value)


def test_adapters_comfyui_unsupported_node_fails_naming_it(runtime_url):
    graph = {**TXT2IMG, "12": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"},
                               "_meta": {"title": "Load Upscale Model"}}}
    with pytest.raises(RuntimeFailure) as info:
        adapter_for("comfyui", runtime_url, 60).run(_task(graph))
    assert not info.value.retryable
    assert "UpscaleModelLoader does not exist" in str(info.value) and "#12" in str(info.value)


def test_adapters_comfyui_node_errors_name_the_node(runtime_url):
    with pytest.raises(RuntimeFailure) as info:
        adapter_for("comfyui", runtime_url, 60).run(_task(_with(TXT2IMG, "4", ckpt_name="v1-5-pruned.safetensors")))
    assert not info.value.retryable
    assert "node 4 (CheckpointLoaderSimple)" in str(info.value) and "v1-5-pruned.safetensors" in str(info.value)


def test_adapters_comfyui_execution_error_is_captured(runtime_url):
    graph = _with(TXT2IMG, "3", sampler_name="ddim", scheduler="karras", steps=2)
    with pytest.raises(RuntimeFailure) as info:
        adapter_for("comfyui", runtime_url, 60).run(_task(graph))
    assert not info.value.retryable
    assert str(info.value).startswith("ComfyUI node 3 (KSampler) failed: ValueError: sampler_name 'ddim'")


def test_adapters_comfyui_timeout_interrupts_and_frees_the_runtime(runtime_url):
    slow = _with(_with(TXT2IMG, "3", steps=400), "5", width=256, height=256)
    started = time.monotonic()
    with pytest.raises(RuntimeFailure) as info:
        adapter_for("comfyui", runtime_url, 1.5).run(_task(slow))
    assert info.value.retryable and "within 2 s" in str(info.value)
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 30
    while httpx.get(f"{runtime_url}/queue").json()["queue_running"]:
        assert time.monotonic() < deadline, "the prompt kept running after the interrupt"
        time.sleep(0.1)
    last = list(httpx.get(f"{runtime_url}/history", params={"max_items": 1}).json().values())[0]
    assert last["status"]["messages"][-1][0] == "execution_interrupted"


def test_adapters_comfyui_cancel_from_another_thread(runtime_url):
    adapter = adapter_for("comfyui", runtime_url, 60)
    slow = _with(_with(TXT2IMG, "3", steps=400), "5", width=256, height=256)
    box: dict = {}

    def run() -> None:
        try:
            adapter.run(_task(slow))
        except RuntimeFailure as err:
            box["err"] = err

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while not httpx.get(f"{runtime_url}/queue").json()["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    adapter.interrupt()
    thread.join(30)
    assert box["err"].retryable and "interrupted" in str(box["err"]) and " at node " in str(box["err"])


def test_adapters_comfyui_unreachable_is_retryable():
    with pytest.raises(RuntimeFailure) as info:
        adapter_for("comfyui", "http://127.0.0.1:9", 5).run(_task(TXT2IMG))
    assert info.value.retryable


def test_adapters_comfyui_describes_comfyui_400_bodies():
    """Bodies as ComfyUI's server.py sends them (prompt-level error; per-node errors)."""
    unknown = {"error": {"type": "invalid_prompt", "message": "Cannot execute because node Foo does not exist.",
                         "details": "Node ID '#7'", "extra_info": {}}, "node_errors": {}}
    assert describe_rejection(400, unknown) == ("ComfyUI rejected the workflow: Cannot execute because node Foo does not "
                                                "exist. (Node ID '#7')")
    failed = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                        "details": "Value 0 smaller than min of 1: steps", "extra_info": {}},
              "node_errors": {"3": {"errors": [{"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1",
                                                "details": "steps", "extra_info": {}}],
                                    "dependent_outputs": ["9"], "class_type": "KSampler"}}}
    assert describe_rejection(400, failed) == ("ComfyUI rejected the workflow: Prompt outputs failed validation; "
                                               "node 3 (KSampler): Value 0 smaller than min of 1: steps")
    assert describe_rejection(400, {"error": "no prompt", "node_errors": []}) == "ComfyUI rejected the workflow: no prompt"
