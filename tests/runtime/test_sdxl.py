"""An SDXL model (the real SDXL wiring at toy size: two text encoders, pooled text, time ids, a ×8 VAE) served through
all three runtime APIs, loaded by the same loader path as SD 1.x models."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
import torch
from PIL import Image

from tests.runtime.conftest import running_server

pytestmark = pytest.mark.integration
SMALL = {"prompt": "two small blue squares on a yellow background", "steps": 3, "width": 64, "height": 64, "seed": 3,
         "cfg_scale": 5}


@pytest.fixture(scope="module")
def xl_server(tmp_path_factory):
    from sdlab.bench.models import save

    models = tmp_path_factory.mktemp("xl-models")
    save("tiny-xl", models / "xl-a", dtype=torch.float32)
    with running_server(models, "xl-a", tmp_path_factory.mktemp("xl-server")) as client:
        yield client


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_sdxl_folder_loads_as_an_sdxl_pipeline(tmp_path):
    from sdlab.bench.models import save
    from sdlab.runtime.loader import load_pipeline, pipeline_class

    folder = save("tiny-xl", tmp_path / "xl", dtype=torch.float32)
    assert pipeline_class(folder).__name__ == "StableDiffusionXLPipeline"
    pipe = load_pipeline(folder, device="cpu")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and pipe.text_encoder_2 is not None


def test_single_files_are_told_apart_by_their_second_text_encoder(tmp_path):
    from safetensors.torch import save_file

    from sdlab.errors import ModelError
    from sdlab.runtime.loader import pipeline_class

    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(1),
               "model.diffusion_model.out.0.weight": torch.zeros(1)}, str(tmp_path / "xl.safetensors"))
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(1)},
              str(tmp_path / "sd.safetensors"))
    assert pipeline_class(tmp_path / "xl.safetensors").__name__ == "StableDiffusionXLPipeline"
    assert pipeline_class(tmp_path / "sd.safetensors").__name__ == "StableDiffusionPipeline"
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    with pytest.raises(ModelError, match="serves StableDiffusionPipeline, StableDiffusionXLPipeline"):
        pipeline_class(tmp_path / "flux")


def test_sdxl_through_the_sd_webui_api_txt2img_and_img2img(xl_server):
    reply = xl_server.post("/sdapi/v1/txt2img", json=SMALL)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert json.loads(body["info"])["sd_model_name"] == "xl-a" and _image(body["images"][0]).size == (64, 64)
    again = xl_server.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [body["images"][0]], "denoising_strength": 0.5})
    assert again.status_code == 200, again.text
    assert _image(again.json()["images"][0]).size == (64, 64)


def test_sdxl_through_the_native_api(xl_server):
    reply = xl_server.post("/v1/generate", json=[{"id": "xl", **SMALL}])
    assert reply.status_code == 200, reply.text
    [result] = reply.json()["results"]
    assert result["status"] == "ok" and _image(result["images"][0]).size == (64, 64)


def test_sdxl_through_the_comfyui_api(xl_server):
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "xl-a"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": SMALL["prompt"], "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 3, "cfg": 5, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "xl", "images": ["8", 0]}},
    }
    reply = xl_server.post("/prompt", json={"prompt": graph})
    assert reply.status_code == 200, reply.text
    prompt_id = reply.json()["prompt_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        history = xl_server.get(f"/history/{prompt_id}").json()
        if prompt_id in history and history[prompt_id]["status"]["completed"]:
            break
        time.sleep(0.2)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    ref = entry["outputs"]["9"]["images"][0]
    view = xl_server.get("/view", params=ref)
    assert view.status_code == 200 and Image.open(io.BytesIO(view.content)).size == (64, 64)


def test_fp16_sdxl_decodes_in_fp32_for_images_and_previews(tmp_path):
    """An fp16 SDXL VAE overflows (its activations pass 65,504): the batch and the live preview both decode in fp32."""
    import numpy as np

    from sdlab.bench.models import save
    from sdlab.runtime import preview
    from sdlab.runtime.batch import decode_latents, to_uint8
    from sdlab.runtime.loader import load_pipeline

    pipe = load_pipeline(save("tiny-xl", tmp_path / "xl", dtype=torch.float32), device="cpu", dtype="fp16")
    with torch.no_grad():
        pipe.vae.decoder.conv_in.weight.mul_(1e4)  # activations far past fp16's range; GroupNorm brings them back
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    with torch.no_grad():
        naive = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    assert not torch.isfinite(naive).all(), "the toy VAE must overflow in fp16 for this test to mean anything"
    pixels = decode_latents(pipe, latents)
    assert torch.isfinite(pixels).all() and pipe.vae.dtype == torch.float16
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(preview.decode(pipe, latents)))))
    assert shown.shape[:2] == (64, 64) and (shown == to_uint8(pixels)[0]).all()
