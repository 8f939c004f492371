"""ComfyUI graph validation, as ComfyUI's execution.validate_prompt answers it (no model needed)."""

import copy
import json
from pathlib import Path

import pytest

from sdlab.runtime.comfy_graph import PromptRejected, execution_order, validate

EVENTS = Path(__file__).resolve().parents[1] / "events"
TXT2IMG = json.loads((EVENTS / "comfyui_txt2img_api.json").read_text())
IMG2IMG = json.loads((EVENTS / "comfyui_img2img_api.json").read_text())


class Catalog:
    def checkpoints(self):
        return ["tiny-a", "tiny-b"]

    def input_files(self):
        return ["example.png"]


def _with(graph, node, **inputs):
    out = copy.deepcopy(graph)
    out[node]["inputs"].update(inputs)
    return out


def test_comfy_graph_exported_workflows_validate_and_convert_values():
    outputs, node_errors, values = validate(_with(TXT2IMG, "3", steps="6", cfg=8), Catalog())
    assert outputs == ["9"] and node_errors == {}
    assert values["3"]["steps"] == 6 and isinstance(values["3"]["cfg"], float)  # ComfyUI converts INT/FLOAT inputs
    assert validate(IMG2IMG, Catalog())[0] == ["15"]


def test_comfy_graph_execution_order_puts_inputs_first():
    order = execution_order(TXT2IMG, ["9"])
    assert sorted(order) == sorted(TXT2IMG)
    for node_id in order:
        for value in TXT2IMG[node_id]["inputs"].values():
            if isinstance(value, list):
                assert order.index(value[0]) < order.index(node_id)


def test_comfy_graph_unknown_node_is_rejected_naming_type_and_id():
    graph = {**TXT2IMG, "12": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x.pth"}}}
    with pytest.raises(PromptRejected) as info:
        validate(graph, Catalog())
    assert info.value.error["type"] == "invalid_prompt"
    assert info.value.error["message"] == "Cannot execute because node UpscaleModelLoader does not exist."
    assert info.value.error["details"] == "Node ID '#12'"
    assert info.value.node_errors == {}


@pytest.mark.parametrize("graph, node, kind", [
    (_with(TXT2IMG, "4", ckpt_name="sd_xl_base_1.0.safetensors"), "4", "value_not_in_list"),
    (_with(TXT2IMG, "3", sampler_name="magic"), "3", "value_not_in_list"),
    (_with(TXT2IMG, "3", steps=0), "3", "value_smaller_than_min"),
    (_with(TXT2IMG, "3", denoise=1.5), "3", "value_bigger_than_max"),
    (_with(TXT2IMG, "3", steps="many"), "3", "invalid_input_type"),
    (_with(TXT2IMG, "3", positive=["4", 1]), "3", "return_type_mismatch"),  # CLIP where CONDITIONING belongs
    (_with(TXT2IMG, "3", model=["4"]), "3", "bad_linked_input"),
    (_with(TXT2IMG, "8", samples=["42", 0]), "8", "bad_linked_input"),
    (_with(IMG2IMG, "10", image="missing.png"), "10", "value_not_in_list"),
])
def test_comfy_graph_node_errors_in_comfyui_shape(graph, node, kind):
    with pytest.raises(PromptRejected) as info:
        validate(graph, Catalog())
    assert info.value.error["type"] == "prompt_outputs_failed_validation"
    entry = info.value.node_errors[node]
    assert entry["class_type"] == graph[node]["class_type"]
    assert entry["dependent_outputs"] == [n for n, v in graph.items() if v["class_type"] == "SaveImage"]
    assert [e["type"] for e in entry["errors"]] == [kind]
    assert set(entry["errors"][0]) == {"type", "message", "details", "extra_info"}


def test_comfy_graph_missing_input_and_cycle():
    graph = copy.deepcopy(TXT2IMG)
    del graph["3"]["inputs"]["seed"]
    with pytest.raises(PromptRejected) as info:
        validate(graph, Catalog())
    assert info.value.node_errors["3"]["errors"][0] == {
        "type": "required_input_missing", "message": "Required input is missing", "details": "seed",
        "extra_info": {"input_name": "seed"}}
    looped = _with(TXT2IMG, "6", clip=["7", 0])
    looped["7"]["inputs"]["clip"] = ["6", 0]
    with pytest.raises(PromptRejected):
        validate(looped, Catalog())


def test_comfy_graph_without_output_node_or_not_a_graph():
    no_output = {k: v for k, v in TXT2IMG.items() if v["class_type"] != "SaveImage"}
    with pytest.raises(PromptRejected) as info:
        validate(no_output, Catalog())
    assert info.value.error["type"] == "prompt_no_outputs"
    for bad in ([], {}, {"1": {"inputs": {}}}):
        with pytest.raises(PromptRejected) as info:
            validate(bad, Catalog())
        assert info.value.error["type"] == "invalid_prompt"
