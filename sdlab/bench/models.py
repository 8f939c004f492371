"""Full-size SD1.5 and SDXL architectures with random weights, built offline from configs.

The arithmetic of a random-weight model is the arithmetic of the real checkpoint (same layers, same
shapes), so speed measured on these is the speed of the real models; only the pictures are noise. The text
side uses the project's own tokenizer (:mod:`sdlab.runtime.vocab`): its ids fit CLIP's 49,408-entry
embedding, and a prompt is always padded to CLIP's 77 tokens, so the text encoders do the same work.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from sdlab.runtime.model import PRESETS, SD15_SCHEDULER, _make_components
from sdlab.runtime.vocab import BOS_TOKEN, EOS_TOKEN, MODEL_MAX_LENGTH, write_tokenizer

CLIP_VOCAB = 49408

# SD 1.5: UNet2DConditionModel's defaults are the SD 1.x UNet; written out so the numbers are visible here.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768)
# SDXL base 1.0
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
OPENCLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                     hidden_act="gelu", projection_dim=1280)
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_SCHEDULER = {**SD15_SCHEDULER}

# name -> (family, default size, default steps)
MODELS = {"sd15": ("sd", 512, 25), "sdxl": ("sdxl", 1024, 30), "tiny": ("sd", 64, 4), "tiny-xl": ("sdxl", 64, 4)}


def _tokenizer():
    from transformers import CLIPTokenizer

    folder = Path(tempfile.mkdtemp(prefix="sdlab-tok-"))
    vocab = write_tokenizer(folder / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer", local_files_only=True)
    return tok, vocab


def _text_config(spec: dict[str, Any], vocab: dict[str, int]):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=CLIP_VOCAB, max_position_embeddings=MODEL_MAX_LENGTH, bos_token_id=vocab[BOS_TOKEN],
                          eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[EOS_TOKEN], **spec)


def build(name: str, *, device: str, dtype: torch.dtype = torch.float16, seed: int = 0) -> Any:
    """A random-weight ``StableDiffusionPipeline`` (sd15, tiny) or ``StableDiffusionXLPipeline`` (sdxl, tiny-xl).

    Weights are created directly on ``device`` (fast on a GPU) and cast to ``dtype``.
    """
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if name not in MODELS:
        raise ValueError(f"unknown bench model {name!r}; use one of {sorted(MODELS)}")
    torch.manual_seed(seed)
    tok, vocab = _tokenizer()
    scheduler = EulerDiscreteScheduler(**(SDXL_SCHEDULER if MODELS[name][0] == "sdxl" else SD15_SCHEDULER))  # CPU tables
    with torch.device(device):
        if name == "tiny":
            unet, vae, text_encoder, _ = _make_components(PRESETS["tiny"], len(vocab), vocab[BOS_TOKEN], vocab[EOS_TOKEN])
            pipe: Any = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                                                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        elif name == "sd15":
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(**SD_VAE), text_encoder=CLIPTextModel(_text_config(CLIP_L, vocab)), tokenizer=tok,
                unet=UNet2DConditionModel(**SD15_UNET), scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        elif name == "sdxl":
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(**SDXL_VAE), text_encoder=CLIPTextModel(_text_config(CLIP_L, vocab)),
                text_encoder_2=CLIPTextModelWithProjection(_text_config(OPENCLIP_BIGG, vocab)), tokenizer=tok, tokenizer_2=tok,
                unet=UNet2DConditionModel(**SDXL_UNET), scheduler=scheduler,
                add_watermarker=False)
        else:  # tiny-xl: the SDXL wiring (two text encoders, text_time embedding) at toy size
            tiny = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
            unet = UNet2DConditionModel(
                sample_size=8, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1, attention_head_dim=(2, 4),
                cross_attention_dim=64, use_linear_projection=True, addition_embed_type="text_time",
                addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=8)
            # ×8 down-sampling like SDXL's own VAE, so latents (and ComfyUI's EmptyLatentImage) are image side / 8
            vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=64)
            pipe = StableDiffusionXLPipeline(
                vae=vae, text_encoder=CLIPTextModel(_text_config({**tiny, "hidden_act": "quick_gelu"}, vocab)),
                text_encoder_2=CLIPTextModelWithProjection(_text_config({**tiny, "hidden_act": "gelu"}, vocab)),
                tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=scheduler,
                add_watermarker=False)
    pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save(name: str, out_dir: Path, *, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float16) -> Path:
    """Write a random-weight model of :func:`build` as a diffusers folder (safetensors, tokenizers included)."""
    return _write(build(name, device=device, dtype=dtype, seed=seed).to("cpu"), Path(out_dir))


def _write(pipe: Any, out_dir: Path) -> Path:
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    write_tokenizer(out_dir / "tokenizer")
    if getattr(pipe, "text_encoder_2", None) is not None:
        write_tokenizer(out_dir / "tokenizer_2")
    return out_dir


def save_sd15(out_dir: Path, *, seed: int = 0, single_file: bool = False, device: str = "cpu") -> Path:
    """Write the random-weight SD1.5 as a diffusers folder (safetensors) for cold-start and end-to-end runs.

    With ``single_file`` also write ``<out_dir>.safetensors`` in the original LDM layout (A1111's format).
    """
    pipe = build("sd15", device=device, dtype=torch.float16, seed=seed).to("cpu")
    out_dir = _write(pipe, Path(out_dir))
    if single_file:
        from safetensors.torch import save_file

        from sdlab.runtime.model import to_ldm_state_dict

        save_file(to_ldm_state_dict(pipe), str(out_dir.with_suffix(".safetensors")), metadata={"format": "pt"})
    return out_dir
