"""The runtime's ComfyUI API over real HTTP and a real websocket, pinned to ComfyUI's shapes (server.py,
execution.py): /prompt answers and 400 bodies, websocket message names and fields, /history, /view."""

from __future__ import annotations

import copy
import io
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image
from websockets.sync.client import connect

pytestmark = pytest.mark.integration
EVENTS = Path(__file__).resolve().parents[1] / "events"


def _graph(name: str = "comfyui_txt2img_api.json", **ksampler) -> dict:
    graph = json.loads((EVENTS / name).read_text())
    sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")
    sampler["inputs"].update(ksampler)
    return graph


def _ws(server, client_id: str):
    return connect(str(server.base_url).replace("http", "ws", 1) + f"/ws?clientId={client_id}", open_timeout=10)


def _run(server, graph: dict, *, until=("execution_success", "execution_error", "execution_interrupted"), on_message=None):
    """Queue `graph` with a websocket open; return (prompt_id, messages up to `executing` with node null)."""
    client_id = uuid.uuid4().hex
    messages = []
    with _ws(server, client_id) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "status" and first["data"]["sid"] == client_id
        assert "queue_remaining" in first["data"]["status"]["exec_info"]
        reply = server.post("/prompt", json={"prompt": graph, "client_id": client_id})
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert set(answer) == {"prompt_id", "number", "node_errors"} and answer["node_errors"] == {}
        prompt_id = answer["prompt_id"]
        while True:
            message = json.loads(ws.recv(timeout=60))
            if message["data"].get("prompt_id") not in (None, prompt_id):
                continue
            messages.append(message)
            if on_message:
                on_message(message, prompt_id)
            if message["type"] == "executing" and message["data"]["node"] is None:
                break
    assert any(m["type"] in until for m in messages)
    return prompt_id, messages


def _history(server, prompt_id: str) -> dict:
    body = server.get(f"/history/{prompt_id}").json()
    assert list(body) == [prompt_id]
    return body[prompt_id]


def test_comfy_api_txt2img_messages_history_and_view(server):
    graph = _graph(steps=4)
    prompt_id, messages = _run(server, graph)
    kinds = [m["type"] for m in messages if m["type"] != "status"]
    assert kinds[:2] == ["execution_start", "execution_cached"] and kinds[-2:] == ["execution_success", "executing"]
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert set(executing[:-1]) == set(graph) and executing.index("4") < executing.index("3") < executing.index("9")
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [p["value"] for p in progress] == [1, 2, 3, 4] and {p["max"] for p in progress} == {4}
    assert all(p["node"] == "3" and p["prompt_id"] == prompt_id for p in progress)
    executed = next(m["data"] for m in messages if m["type"] == "executed")
    assert executed["node"] == "9" and executed["output"]["images"][0]["type"] == "output"

    entry = _history(server, prompt_id)
    assert entry["prompt"][1] == prompt_id and entry["prompt"][2] == graph and entry["prompt"][4] == ["9"]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert all(isinstance(m[1]["timestamp"], int) for m in entry["status"]["messages"])
    ref = entry["outputs"]["9"]["images"][0]
    assert set(ref) == {"filename", "subfolder", "type"} and ref["filename"].endswith("_.png")
    view = server.get("/view", params=ref)
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(view.content))
    assert image.size == (128, 96) and json.loads(image.info["prompt"]) == graph  # the PNG carries its workflow


def test_comfy_api_same_seed_same_png_and_api_prefix(server):
    graph = _graph(steps=3, seed=11)
    first = _history(server, _run(server, graph)[0])["outputs"]["9"]["images"][0]
    reply = server.post("/api/prompt", json={"prompt": graph})  # current ComfyUI serves every route under /api too
    assert reply.status_code == 200
    prompt_id = reply.json()["prompt_id"]
    for _ in range(100):
        if server.get(f"/api/history/{prompt_id}").json():
            break
        time.sleep(0.1)
    second = _history(server, prompt_id)["outputs"]["9"]["images"][0]
    assert server.get("/view", params=first).content == server.get("/view", params=second).content


def test_comfy_api_rejects_unknown_node_and_bad_values_with_400(server):
    graph = {**_graph(), "12": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}}}
    reply = server.post("/prompt", json={"prompt": graph})
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "Cannot execute because node UpscaleModelLoader does not exist."
    assert reply.json()["node_errors"] == {}

    graph = _graph()
    graph["4"]["inputs"]["ckpt_name"] = "v1-5-pruned-emaonly.safetensors"
    body = server.post("/prompt", json={"prompt": graph}).json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["4"]["class_type"] == "CheckpointLoaderSimple"
    assert body["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"

    assert server.post("/prompt", json={"client_id": "x"}).json()["error"]["type"] == "no_prompt"


def test_comfy_api_execution_error_names_node_and_exception(server):
    prompt_id, messages = _run(server, _graph(sampler_name="euler_ancestral", scheduler="karras", steps=2))
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert error["node_id"] == "3" and error["node_type"] == "KSampler" and error["prompt_id"] == prompt_id
    assert error["exception_type"] == "ValueError" and "karras" in error["exception_message"]
    assert {"traceback", "executed", "current_inputs", "current_outputs"} <= set(error)
    entry = _history(server, prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_error"


def test_comfy_api_interrupt_stops_the_running_prompt(server):
    graph = _graph(steps=400)
    graph["5"]["inputs"].update(width=256, height=256)

    def interrupt_on_progress(message, prompt_id):
        if message["type"] == "progress" and message["data"]["value"] == 2:
            assert server.get("/queue").json()["queue_running"][0][1] == prompt_id
            assert server.post("/interrupt", json={"prompt_id": prompt_id}).status_code == 200

    started = time.monotonic()
    prompt_id, messages = _run(server, graph, until=("execution_interrupted",), on_message=interrupt_on_progress)
    stop = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
    assert stop["node_id"] == "3" and stop["node_type"] == "KSampler" and "4" in stop["executed"]
    assert max(m["data"]["value"] for m in messages if m["type"] == "progress") < 400
    assert time.monotonic() - started < 60
    assert _history(server, prompt_id)["status"]["status_str"] == "error"
    assert server.get("/queue").json() == {"queue_running": [], "queue_pending": []}


def test_comfy_api_upload_then_img2img(server):
    picture = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(picture, format="PNG")
    upload = server.post("/upload/image", files={"image": ("example.png", picture.getvalue(), "image/png")},
                         data={"type": "input", "overwrite": "true"})
    assert upload.json() == {"name": "example.png", "subfolder": "", "type": "input"}
    assert "example.png" in server.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0]
    prompt_id, _ = _run(server, _graph("comfyui_img2img_api.json", steps=3))
    ref = _history(server, prompt_id)["outputs"]["15"]["images"][0]
    assert ref["subfolder"] == "img2img"  # filename_prefix "img2img/ComfyUI"
    assert Image.open(io.BytesIO(server.get("/view", params=ref).content)).size == (96, 64)


def test_comfy_api_queue_orders_by_number_and_delete(server):
    slow = _graph(steps=200)
    slow["5"]["inputs"].update(width=256, height=256)
    running = server.post("/prompt", json={"prompt": slow}).json()["prompt_id"]
    deadline = time.monotonic() + 30
    while [item[1] for item in server.get("/queue").json()["queue_running"]] != [running]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    later = server.post("/prompt", json={"prompt": _graph(steps=2), "number": 10_000}).json()["prompt_id"]
    sooner = server.post("/prompt", json={"prompt": _graph(steps=2), "front": True}).json()
    queue = server.get("/queue").json()
    assert [item[1] for item in queue["queue_pending"]] == [sooner["prompt_id"], later]
    assert set(queue) == {"queue_running", "queue_pending"} and len(queue["queue_pending"][0]) == 5
    server.post("/queue", json={"delete": [later]})
    server.post("/interrupt")
    deadline = time.monotonic() + 120
    while server.get("/queue").json() != {"queue_running": [], "queue_pending": []}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert server.get(f"/history/{later}").json() == {}
    assert _history(server, running)["status"]["messages"][-1][0] == "execution_interrupted"
    assert _history(server, sooner["prompt_id"])["status"]["status_str"] == "success"


def test_comfy_api_object_info_system_stats_and_view_errors(server):
    info = server.get("/object_info").json()
    assert {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "VAEEncode",
            "LoadImage", "SaveImage"} <= set(info)
    ksampler = info["KSampler"]
    assert ksampler["output"] == ["LATENT"] and ksampler["output_node"] is False and ksampler["category"] == "sampling"
    required = ksampler["input"]["required"]
    samplers = {"euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "lms", "heun", "uni_pc"}
    assert samplers <= set(required["sampler_name"][0])
    assert {"normal", "karras", "exponential", "simple", "sgm_uniform"} <= set(required["scheduler"][0])
    assert ksampler["input_order"]["required"][:3] == ["model", "seed", "steps"]
    assert "tiny-a" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert info["SaveImage"]["output_node"] is True
    assert server.get("/object_info/NoSuchNode").json() == {}
    stats = server.get("/system_stats").json()
    assert {"os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version"} <= set(stats["system"])
    assert {"name", "type", "vram_total", "vram_free"} <= set(stats["devices"][0])
    assert server.get("/prompt").json()["exec_info"]["queue_remaining"] >= 0
    assert server.get("/view", params={"filename": "../../etc/passwd"}).status_code == 400
    assert server.get("/view", params={"filename": "a.png", "subfolder": "../x"}).status_code == 403
    assert server.get("/view", params={"filename": "never_00001_.png"}).status_code == 404


def test_comfy_api_websocket_reaches_only_its_client(server):
    other_id = uuid.uuid4().hex
    seen: list[dict] = []
    with _ws(server, other_id) as other:
        done = threading.Event()

        def listen():
            while not done.is_set():
                try:
                    seen.append(json.loads(other.recv(timeout=0.2)))
                except TimeoutError:
                    continue

        listener = threading.Thread(target=listen)
        listener.start()
        try:
            prompt_id, _ = _run(server, copy.deepcopy(_graph(steps=2)))
        finally:
            done.set()
            listener.join()
    assert seen and seen[0]["type"] == "status"  # the greeting, then queue updates (broadcast, as in ComfyUI)
    assert not [m for m in seen if m["data"].get("prompt_id") == prompt_id], "execution messages go to their client only"
