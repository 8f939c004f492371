"""The A1111-compatible server, as a real process over real HTTP."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

SMALL = {"prompt": "a red fox", "steps": 8, "width": 128, "height": 192, "seed": 42}


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _txt2img(server, **body):
    resp = server.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_health_and_ping(server):
    for path in ("/healthz", "/internal/ping"):
        body = server.get(path).json()
        assert body["status"] == "ok" and body["model"] == "tiny-a"


def test_txt2img_size_count_seeds_and_info(server):
    data = _txt2img(server, batch_size=2, n_iter=2)
    assert len(data["images"]) == 4
    for b64 in data["images"]:
        image = _image(b64)
        assert image.format == "PNG" and image.size == (128, 192)
        assert "Seed: " in image.info["parameters"]
    info = json.loads(data["info"])
    assert info["seed"] == 42 and info["all_seeds"] == [42, 43, 44, 45]
    assert info["all_prompts"] == ["a red fox"] * 4
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (128, 192, 8, 7.0)
    assert info["sampler_name"] == "Euler" and info["sd_model_name"] == "tiny-a"
    assert data["parameters"]["prompt"] == "a red fox"
    # Images of one batch differ from each other (distinct seeds)...
    assert len(set(data["images"])) == 4
    # ...and a single image with seed 43 matches the second image of the batch: same noise,
    # only float rounding of batched kernels may move a pixel by a level or two.
    single = np.asarray(_image(_txt2img(server, seed=43)["images"][0]), dtype=np.int16)
    batched = np.asarray(_image(data["images"][1]), dtype=np.int16)
    assert np.abs(single - batched).max() <= 4 and np.abs(single - batched).mean() < 0.05


def test_fixed_seed_is_byte_identical_and_random_seed_reported(server):
    first, second = _txt2img(server), _txt2img(server)
    assert first["images"] == second["images"]
    other = _txt2img(server, prompt="a blue whale")
    assert other["images"] != first["images"]
    randomised = json.loads(_txt2img(server, seed=-1, steps=2)["info"])
    assert randomised["seed"] >= 0 and randomised["all_seeds"] == [randomised["seed"]]


def test_img2img_with_init_image(server):
    init = _txt2img(server)["images"][0]
    for encoded in (init, "data:image/png;base64," + init):
        resp = server.post(
            "/sdapi/v1/img2img",
            json={**SMALL, "init_images": [encoded], "denoising_strength": 0.5, "batch_size": 2},
        )
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert len(data["images"]) == 2 and _image(data["images"][0]).size == (128, 192)
        assert json.loads(data["info"])["denoising_strength"] == 0.5
        assert data["parameters"]["init_images"] is None  # A1111 drops them unless include_init_images


def test_clip_skip_txt2img_and_img2img(server):
    """A1111's "Clip skip" (CLIP_stop_at_last_layers): a real change of picture, recorded in the infotext, on both
    paths (diffusers' own CLIP skip for SD 1.x fails under transformers 5; the runtime encodes it itself)."""
    plain = _txt2img(server)
    skipped = _txt2img(server, override_settings={"CLIP_stop_at_last_layers": 2})
    assert skipped["images"] != plain["images"]
    assert json.loads(skipped["info"])["clip_skip"] == 2
    assert _txt2img(server, override_settings={"CLIP_stop_at_last_layers": 2})["images"] == skipped["images"]
    img2img = {**SMALL, "init_images": [plain["images"][0]], "denoising_strength": 0.6}
    replies = [server.post("/sdapi/v1/img2img", json={**img2img, "override_settings": {"CLIP_stop_at_last_layers": n}})
               for n in (1, 2)]
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    assert json.loads(replies[1].json()["info"])["clip_skip"] == 2
    assert replies[0].json()["images"] != replies[1].json()["images"]  # the skip reached img2img's embeddings too


def test_bad_base64_names_the_field(server):
    resp = server.post("/sdapi/v1/img2img", json={**SMALL, "init_images": ["not an image!"]})
    assert resp.status_code == 422
    detail = resp.json()["detail"][0]
    assert detail["loc"] == ["body", "init_images", 0] and "base64" in detail["msg"]


def test_sampler_switch_and_unknown_sampler(server):
    euler = _txt2img(server)["images"][0]
    for name in ("Euler a", "DPM++ 2M Karras", "DDIM"):
        data = _txt2img(server, sampler_name=name)
        assert json.loads(data["info"])["sampler_name"] == name
        assert data["images"][0] != euler
    via_index = _txt2img(server, sampler_index="DDIM", sampler_name=None)
    assert json.loads(via_index["info"])["sampler_name"] == "DDIM"
    names = {s["name"] for s in server.get("/sdapi/v1/samplers").json()}
    assert {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "PLMS", "Heun", "UniPC"} <= names
    resp = server.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Warp Drive"})
    assert resp.status_code == 422
    assert "Warp Drive" in resp.text and "Euler a" in resp.text and "DPM++ 2M" in resp.text


def test_size_must_be_multiple_of_8(server):
    resp = server.post("/sdapi/v1/txt2img", json={**SMALL, "width": 130})
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert detail[0]["loc"] == ["body", "width"] and "multiple of 8" in detail[0]["msg"]


def test_models_listing_switching_and_overrides(server, models_dir):
    models = server.get("/sdapi/v1/sd-models").json()
    assert [m["title"] for m in models] == ["tiny-a", "tiny-a-single.safetensors", "wide-b"]
    assert all(len(m["hash"]) == 10 and len(m["sha256"]) == 64 for m in models)
    assert set(models[0]) >= {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-a"
    on_a = _txt2img(server)["images"][0]

    # Per-request override, restored afterwards.
    data = _txt2img(server, override_settings={"sd_model_checkpoint": "wide-b"})
    assert json.loads(data["info"])["sd_model_name"] == "wide-b" and data["images"][0] != on_a
    assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-a"

    # The single-file export of tiny-a is the same model; A1111 "title [hash]" spelling works too.
    single = next(m for m in models if m["title"].endswith(".safetensors"))
    for name in (single["title"], f"{single['title']} [{single['hash']}]", single["model_name"]):
        data = _txt2img(server, override_settings={"sd_model_checkpoint": name})
        assert json.loads(data["info"])["sd_model_name"] == "tiny-a-single"
        # Same pixels; the PNG bytes differ only by the model name/hash in the infotext.
        assert _image(data["images"][0]).tobytes() == _image(on_a).tobytes()

    resp = server.post("/sdapi/v1/options", json={"sd_model_checkpoint": "no-such-model"})
    assert resp.status_code == 404 and "tiny-a" in resp.text and "wide-b" in resp.text
    try:
        assert server.post("/sdapi/v1/options", json={"sd_model_checkpoint": "wide-b"}).status_code == 200
        assert server.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "wide-b"
        assert server.get("/healthz").json()["model"] == "wide-b"
        on_b = _txt2img(server)
        assert json.loads(on_b["info"])["sd_model_name"] == "wide-b"
        assert on_b["images"][0] != on_a
    finally:
        server.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-a"})
    assert _txt2img(server)["images"][0] == on_a

    shutil.copytree(models_dir / "tiny-a", models_dir / "tiny-c")
    assert server.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert "tiny-c" in [m["title"] for m in server.get("/sdapi/v1/sd-models").json()]


def test_unload_and_reload(server):
    before = _txt2img(server)["images"][0]
    assert server.post("/sdapi/v1/unload-checkpoint").status_code == 200
    assert server.get("/healthz").json()["loaded"] is False
    assert server.post("/sdapi/v1/reload-checkpoint").status_code == 200
    assert server.get("/healthz").json()["loaded"] is True
    assert _txt2img(server)["images"][0] == before


def test_progress_and_interrupt_during_generation(server):
    result = {}

    def generate():
        started = time.monotonic()
        result["resp"] = server.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 1000, "n_iter": 3})
        result["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=generate)
    worker.start()
    deadline = time.monotonic() + 20
    progress = {}
    while time.monotonic() < deadline:
        progress = server.get("/sdapi/v1/progress").json()
        if progress["state"]["job"] == "txt2img" and progress["state"]["sampling_step"] > 0:
            break
        time.sleep(0.05)
    assert progress["state"]["job"] == "txt2img", progress
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 1000
    # the live preview: asked for (SD WebUI's default), the image being made, decoded by the model's own VAE
    preview = None
    while preview is None and time.monotonic() < deadline:
        preview = server.get("/sdapi/v1/progress").json()["current_image"]
        time.sleep(0.05)
    assert preview is not None and Image.open(io.BytesIO(base64.b64decode(preview))).size == (SMALL["width"], SMALL["height"])
    assert server.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()["current_image"] is None
    assert server.get("/healthz", timeout=2).status_code == 200  # still answering mid-generation
    assert server.post("/sdapi/v1/interrupt").json() == {}
    worker.join(timeout=30)
    resp = result["resp"]
    assert resp.status_code == 200, resp.text
    info = json.loads(resp.json()["info"])
    assert info["interrupted"] is True
    assert len(resp.json()["images"]) == 1  # the partial image of the first batch; later batches skipped
    assert result["seconds"] < 5  # uninterrupted, 3 × 1000 steps would take ~30 s here
    assert server.get("/sdapi/v1/progress").json()["progress"] == 0


def test_prompts_are_not_logged_at_info(server):
    _txt2img(server, prompt="a secret zebra")
    time.sleep(0.2)
    assert "secret zebra" not in server.log_path.read_text()


def test_health_is_503_without_a_model(tmp_path):
    from fastapi.testclient import TestClient

    from sdlab.runtime.server import create_app

    with TestClient(create_app(tmp_path, None)) as client:
        resp = client.get("/healthz")
        assert resp.status_code == 503
        assert resp.json()["status"] == "error" and "no models" in resp.json()["detail"]
