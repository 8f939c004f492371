"""The captioned-shapes model: a small text-to-image model in the Stable Diffusion architecture, trained here.

`scenes` makes the seeded, captioned training images (and keeps some caption combinations out of training),
`train` is the recipe (`sdlab model train`), `judge` reads images at pixel level and `evaluate` scores a model
on the held-out captions (`sdlab model eval`). The trained weights ship in the package (`bundled_model_dir()`)
and are the default model of every runtime; docs/model.md is the model card.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_NAME = "sdlab-shapes"


def bundled_model_dir() -> Path:
    """The shipped diffusers folder of the trained model (fp16 safetensors, tokenizer, `sdlab_model.json`)."""
    return Path(__file__).resolve().parent / "model"


def example_prompts() -> list[str]:
    """A handful of prompts in the model's domain (flat shapes, colours, counts, sizes, backgrounds)."""
    return [
        "a large red circle on a white background",
        "two small blue squares on a yellow background",
        "three green triangles on a black background",
        "a yellow star on a purple background",
        "a small pink circle on a cyan background",
        "two large orange stars on a blue background",
    ]
