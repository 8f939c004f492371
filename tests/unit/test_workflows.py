"""Named ComfyUI workflow templates: parameters land in the right nodes, mistakes name the parameter."""

import json
from pathlib import Path

import pytest

from sdlab.errors import ValidationError
from sdlab.workflows import apply_params, bundled, check_name

EVENTS = Path(__file__).resolve().parents[1] / "events"


def _graph(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def test_workflows_apply_params_follows_the_ksampler_links():
    graph = _graph("comfyui_txt2img_api.json")
    out = apply_params(graph, {"prompt": "a red fox", "negative_prompt": "blur", "seed": 7, "steps": 4, "cfg": 5.5,
                               "width": 64, "height": 128, "batch_size": 2, "sampler_name": "dpmpp_2m",
                               "scheduler": "karras", "ckpt_name": "tiny-b"})
    assert out["6"]["inputs"]["text"] == "a red fox"  # KSampler.positive -> node 6
    assert out["7"]["inputs"]["text"] == "blur"  # KSampler.negative -> node 7
    assert {k: out["3"]["inputs"][k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler")} == {
        "seed": 7, "steps": 4, "cfg": 5.5, "sampler_name": "dpmpp_2m", "scheduler": "karras"}
    assert out["5"]["inputs"] == {"width": 64, "height": 128, "batch_size": 2}
    assert out["4"]["inputs"]["ckpt_name"] == "tiny-b"
    assert out["3"]["inputs"]["positive"] == ["6", 0]  # links untouched
    assert graph["6"]["inputs"]["text"] != "a red fox", "the template itself must not change"


def test_workflows_apply_params_img2img_sets_the_load_image_and_denoise():
    out = apply_params(_graph("comfyui_img2img_api.json"), {"image": "s3://b/in.png", "denoise": 0.4})
    assert out["10"]["inputs"]["image"] == "s3://b/in.png" and out["13"]["inputs"]["denoise"] == 0.4


@pytest.mark.parametrize("params, field, hint", [
    ({"colour": "red"}, "payload.params.colour", "unknown parameter"),
    ({"steps": "20"}, "payload.params.steps", "must be int"),
    ({"seed": True}, "payload.params.seed", "must be int"),
    ({"width": 64}, "payload.params.width", "EmptyLatentImage"),  # the img2img graph has none
])
def test_workflows_apply_params_names_the_parameter(params, field, hint):
    with pytest.raises(ValidationError) as info:
        apply_params(_graph("comfyui_img2img_api.json"), params)
    assert info.value.field == field and hint in str(info.value)


def test_workflows_bundled_templates_are_api_format_graphs():
    templates = bundled()
    assert {"txt2img-basic", "img2img-basic"} <= set(templates)
    for graph in templates.values():
        assert all({"class_type", "inputs"} <= set(node) for node in graph.values())
        assert any(node["class_type"] == "SaveImage" for node in graph.values())
    apply_params(templates["txt2img-basic"], {"prompt": "x", "width": 64, "height": 64, "seed": 1, "steps": 2})


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", "x" * 65, 7])
def test_workflows_names_are_plain_file_names(name):
    with pytest.raises(ValidationError):
        check_name(name)
