"""The diffusers adapter against a real runtime process: several tasks per call, one outcome each."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from agent.runtimes import RuntimeFailure, RuntimeResult, adapter_for
from agent.runtimes.diffusers import DiffusersAdapter
from sdlab.contracts import TaskMessage
from tests.agent.conftest import png_bytes

pytestmark = pytest.mark.integration
SMALL = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 3}


def _task(task_id: str, payload: dict, task_type: str = "text-to-image") -> TaskMessage:
    return TaskMessage(id=task_id, runtime="rt", task_type=task_type, prefix="out", payload=payload, submitted_at=time.time())


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def test_adapter_diffusers_is_chosen_for_diffusers_runtimes(runtime_url):
    adapter = adapter_for("diffusers", runtime_url, 60)
    assert isinstance(adapter, DiffusersAdapter) and adapter.max_batch >= 2
    assert adapter.ready()
    assert not DiffusersAdapter("http://127.0.0.1:9", 1).ready()


def test_adapter_diffusers_run_batch_gives_each_task_its_outcome(runtime_url):
    adapter = DiffusersAdapter(runtime_url, 60)
    tasks = [
        _task("fox", {**SMALL, "prompt": "a red fox", "cfg_scale": 7}),
        _task("sea", {**SMALL, "prompt": "the sea", "negative_prompt": "boats", "seed": 9, "cfg_scale": 3, "batch_size": 2}),
        _task("wide", {**SMALL, "override_settings": {"sd_model_checkpoint": "tiny-b"}}),  # another model: its own batch
        _task("bad", {**SMALL, "sampler_name": "Warp Drive"}),
        _task("i2i", {**SMALL, "init_images": [base64.b64encode(png_bytes()).decode()],
                      "denoising_strength": 0.5}, "image-to-image"),  # not native: the SD WebUI route
    ]
    fox, sea, wide, bad, i2i = adapter.run_batch(tasks)
    assert isinstance(fox, RuntimeResult) and len(fox.images) == 1 and fox.info["seed"] == 3
    assert isinstance(sea, RuntimeResult) and len(sea.images) == 2 and sea.info["all_seeds"] == [9, 10]
    assert isinstance(wide, RuntimeResult) and wide.info["sd_model_name"] == "tiny-b"
    assert isinstance(bad, RuntimeFailure) and not bad.retryable and "Warp Drive" in str(bad)
    assert isinstance(i2i, RuntimeResult) and i2i.images[0].startswith(b"\x89PNG")
    # same seed, same image: the batched task against the same task run alone
    alone = adapter.run(_task("fox2", {**SMALL, "prompt": "a red fox", "cfg_scale": 7}))
    diff = np.abs(_pixels(alone.images[0]) - _pixels(fox.images[0]))
    assert diff.max() <= 2 and diff.mean() < 0.05


def test_adapter_diffusers_unreachable_runtime_is_retryable():
    outcomes = DiffusersAdapter("http://127.0.0.1:9", 2).run_batch([_task("a", SMALL), _task("b", SMALL)])
    assert all(isinstance(o, RuntimeFailure) and o.retryable for o in outcomes)
