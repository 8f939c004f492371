"""The project's tiny SD model: reproducible, real SD shapes, own tokenizer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sdlab.errors import ModelError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _weights(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in _files(root).items() if k.endswith(".safetensors")}


def test_same_seed_gives_identical_files(models_dir, tmp_path):
    from sdlab.runtime.model import build_tiny_model

    again = build_tiny_model(tmp_path / "again", seed=0, variant="tiny")
    first, second = _files(models_dir / "tiny-a"), _files(again)
    assert sorted(first) == sorted(second)
    assert {
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
        "model_index.json",
        "sdlab_model.json",
    } <= set(first)
    for name in first:
        assert first[name] == second[name], name


def test_seed_and_variant_change_weights(models_dir, tmp_path):
    from sdlab.runtime.model import build_tiny_model

    other_seed = build_tiny_model(tmp_path / "s7", seed=7, variant="tiny")
    base = _weights(models_dir / "tiny-a")
    for name, data in _weights(other_seed).items():
        assert data != base[name], name
    wide = _weights(models_dir / "wide-b")
    assert wide["unet/diffusion_pytorch_model.safetensors"] != base["unet/diffusion_pytorch_model.safetensors"]
    info = json.loads((models_dir / "wide-b" / "sdlab_model.json").read_text())
    assert info["variant"] == "tiny-wide" and info["seed"] == 1 and info["format_version"] == 1
    assert info["parameters"] > 0


def test_unknown_variant_is_rejected(tmp_path):
    from sdlab.runtime.model import build_tiny_model

    with pytest.raises(ModelError, match="tiny-wide"):
        build_tiny_model(tmp_path / "x", variant="huge")


def test_vae_downsamples_by_8(models_dir):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(models_dir / "tiny-a"), subfolder="vae", local_files_only=True)
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    assert vae.config.latent_channels == 4 and vae.config.scaling_factor > 0
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 96)).latent_dist.mean
        assert latents.shape == (1, 4, 8, 12)
        assert vae.decode(latents).sample.shape == (1, 3, 64, 96)


def test_tokenizer_loads_offline_and_tokenizes(models_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(models_dir / "tiny-a"), subfolder="tokenizer", local_files_only=True)
    assert "<|startoftext|>" in tok.get_vocab() and "<|endoftext|>" in tok.get_vocab()
    assert tok.model_max_length == 77
    ids = tok("a red fox").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids[1:2]) == ["a</w>"]
    assert tok.decode(ids, skip_special_tokens=True) == "a red fox"
    padded = tok("a red fox", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77


def test_loader_loads_folder_and_rejects_single_file_without_config(models_dir, tmp_path):
    import torch

    from sdlab.runtime.loader import load_pipeline

    pipe = load_pipeline(models_dir / "tiny-a")
    assert pipe.device.type == "cpu" and pipe.unet.dtype == torch.float32
    assert pipe.vae_scale_factor == 8 and pipe.safety_checker is None
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(b"")
    with pytest.raises(ModelError, match="single-file-config"):
        load_pipeline(lone)
    with pytest.raises(ModelError, match="does not exist"):
        load_pipeline(tmp_path / "missing")


def test_single_file_export_round_trips(models_dir):
    import torch

    from sdlab.runtime.loader import load_pipeline

    folder = load_pipeline(models_dir / "tiny-a")
    single = load_pipeline(models_dir / "tiny-a-single.safetensors", config=models_dir / "tiny-a")
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    call = {"prompt": "a red fox", "num_inference_steps": 3, "width": 64, "height": 64}
    first = folder(**call, generator=torch.Generator().manual_seed(1)).images[0]
    second = single(**call, generator=torch.Generator().manual_seed(1)).images[0]
    assert first.tobytes() == second.tobytes()


def test_sampler_mapping():
    from sdlab.errors import ValidationError
    from sdlab.runtime.samplers import sampler_for

    base = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    expected = {
        "Euler": "EulerDiscreteScheduler",
        "Euler a": "EulerAncestralDiscreteScheduler",
        "DPM++ 2M": "DPMSolverMultistepScheduler",
        "DDIM": "DDIMScheduler",
        "PLMS": "PNDMScheduler",
        "PNDM": "PNDMScheduler",
        "Heun": "HeunDiscreteScheduler",
        "DPM++ SDE": "DPMSolverMultistepScheduler",
        "UniPC": "UniPCMultistepScheduler",
        "k_euler_a": "EulerAncestralDiscreteScheduler",
    }
    if importlib.util.find_spec("scipy") is not None:  # diffusers' LMS needs scipy
        expected["LMS"] = "LMSDiscreteScheduler"
    for name, cls in expected.items():
        sched = sampler_for(name, base)
        assert type(sched).__name__ == cls, name
        assert sched.config.beta_schedule == "scaled_linear"
    karras = sampler_for("DPM++ 2M Karras", base)
    assert karras.config.use_karras_sigmas and karras.config.algorithm_type == "dpmsolver++"
    assert sampler_for("Euler", base, "Karras").config.use_karras_sigmas
    with pytest.raises(ValidationError, match="Euler a"):
        sampler_for("Nope", base)
