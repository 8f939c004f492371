"""The bundled captioned-shapes model: a small held-out eval through `sdlab model eval`, and training resume."""

from __future__ import annotations

import re

import pytest

from sdlab.cli import main

# What the committed weights must hold on the first 16 held-out captions (docs/model.md, "Evaluation": they score
# 100 / 100 / 87.5 / 93.8 % there on a CPU; 94 / 98.5 / 84 / 77 % on all 200). The floors sit one image or two
# below those, so a change to the model, the loader, the tokenizer or the sampler that loses fidelity fails.
FLOORS = {"shape colour": 0.9, "background colour": 0.9, "shape kind": 0.75, "count": 0.8}


def test_small_eval_of_the_bundled_model_holds_its_scores(capsys):
    with pytest.raises(SystemExit) as done:
        main(["model", "eval", "--n", "16", "--batch", "16", "--threads", "2"])
    out = capsys.readouterr().out
    scores = {name: float(value) / 100 for name, value in re.findall(r"^(shape colour|background colour|shape kind|count)"
                                                                     r"\s+([\d.]+) %", out, re.M)}
    assert set(scores) == {"shape colour", "background colour", "shape kind", "count"}, out
    assert done.value.code == 0, out  # above every target
    assert all(scores[name] >= floor for name, floor in FLOORS.items()), out


def _tiny():
    from sdlab.shapes.train import TrainConfig

    return TrainConfig(resolution=32, vae_steps=2, vae_batch=2, steps=2, batch=2, warmup=1, checkpoint_every=100,
                       round_trip_images=4)


def test_training_resumes_to_the_same_weights_as_an_unbroken_run(tmp_path):
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from sdlab.shapes.train import train

    whole = train(tmp_path / "whole", _tiny(), device="cpu")
    # the same run in two calls: the first stops after one diffusion step, the second resumes from checkpoint/
    assert train(tmp_path / "parts", dataclasses.replace(_tiny(), steps=1), device="cpu") is not None
    resumed = train(tmp_path / "parts", _tiny(), device="cpu")
    assert whole is not None and resumed is not None
    for part in ("unet/diffusion_pytorch_model", "text_encoder/model", "vae/diffusion_pytorch_model"):
        a, b = load_file(str(whole / f"{part}.safetensors")), load_file(str(resumed / f"{part}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_sheet_draws_each_prompt_and_says_what_the_judge_reads(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "sheet.png"
    with pytest.raises(SystemExit) as done:
        main(["model", "sheet", "--out", str(out), "--prompt", "a large red circle on a white background",
              "--prompt", "a red fox in the snow", "--steps", "12", "--tile", "64", "--columns", "2", "--threads", "2"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "yes  a large red circle on a white background  →  judge reads: a red circle on a white background"
    assert lines[1].startswith("no   a red fox in the snow")  # outside the model's language: nothing to agree with
    assert lines[-1].startswith("1 of 2 pictures show what their prompt asked")
    assert Image.open(out).size == (2 * 68, 64 + 14 + 4)
