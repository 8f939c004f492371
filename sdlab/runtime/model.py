"""Build the project's own tiny Stable Diffusion model.

The model has the real SD 1.x architecture (CLIP text encoder, conditional UNet,
KL autoencoder with an ×8 latent factor) at a size that runs in well under a
second per 256×256 image on a laptop CPU. Weights are random but seeded, so a
given ``(variant, seed)`` always produces byte-identical files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdlab.errors import ModelError
from sdlab.runtime.vocab import BOS_TOKEN, EOS_TOKEN, MODEL_MAX_LENGTH, write_tokenizer

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_INFO_FILE = "sdlab_model.json"

# SD 1.x noise schedule, so scheduler swaps behave as they do on real checkpoints.
SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class Preset:
    """Sizes of one model variant."""

    unet_channels: tuple[int, ...]
    text_hidden: int
    text_layers: int
    text_heads: int
    attention_head_dim: int
    vae_channels: tuple[int, ...] = (16, 32, 32, 32)
    groups: int = 8
    # Per-variant colour cast of the decoder, so variants look different at a glance.
    palette: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))
    layers_per_block: int = 1
    attention_first: bool = False  # cross-attention in the first (full latent resolution) block too
    sample_size: int = 32  # latent side the UNet is trained at (its config's default image side / 8)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        unet_channels=(32, 64),
        text_hidden=32,
        text_layers=2,
        text_heads=2,
        attention_head_dim=8,
        palette=(0.35, -0.1, -0.3),
    ),
    "tiny-wide": Preset(
        unet_channels=(48, 96),
        text_hidden=64,
        text_layers=2,
        text_heads=4,
        attention_head_dim=16,
        palette=(-0.3, 0.05, 0.4),
    ),
    # The trained captioned-shapes model (sdlab.shapes): same family, sized to learn and still run < 1 s on a CPU.
    "shapes": Preset(
        unet_channels=(64, 128, 128),
        text_hidden=128,
        text_layers=3,
        text_heads=4,
        attention_head_dim=4,
        vae_channels=(32, 64, 64, 64),
        groups=16,
        attention_first=True,
        sample_size=16,
    ),
}


def _make_components(preset: Preset, vocab_size: int, bos_id: int, eos_id: int):
    """Instantiate the random UNet, VAE, text encoder and scheduler."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    n_down = len(preset.unet_channels)
    if preset.attention_first:  # SD's own layout: attention everywhere but the lowest resolution
        down = ("CrossAttnDownBlock2D",) * (n_down - 1) + ("DownBlock2D",)
    else:
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_down - 1)
    unet = UNet2DConditionModel(
        sample_size=preset.sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=preset.unet_channels,
        down_block_types=down,
        up_block_types=tuple(t.replace("Down", "Up") for t in reversed(down)),
        layers_per_block=preset.layers_per_block,
        cross_attention_dim=preset.text_hidden,
        attention_head_dim=preset.attention_head_dim,
        norm_num_groups=preset.groups,
    )
    n_vae = len(preset.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=preset.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=preset.groups,
        sample_size=preset.sample_size * 8,
        scaling_factor=0.18215,
    )
    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=preset.text_hidden,
        intermediate_size=preset.text_hidden * 4,
        num_hidden_layers=preset.text_layers,
        num_attention_heads=preset.text_heads,
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        projection_dim=preset.text_hidden,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = EulerDiscreteScheduler(**SD15_SCHEDULER)
    return unet, vae, text_encoder, scheduler


@torch.no_grad()
def _colourise(unet, vae, preset: Preset, generator: torch.Generator) -> None:
    """Rescale the random output layers so images are vivid instead of flat grey.

    A freshly initialised decoder emits values near zero, which decode to 50 % grey.
    Boosting its last conv (and giving it a colour bias) spreads pixels over the
    full range; a stronger UNet head makes the text/seed influence visible.
    """
    conv = vae.decoder.conv_out
    conv.weight.mul_(4.0)
    conv.bias.copy_(torch.tensor(preset.palette) + 0.2 * torch.randn(3, generator=generator))
    unet.conv_out.weight.mul_(4.0)


def count_parameters(*modules: torch.nn.Module) -> int:
    """Total number of parameters in ``modules``."""
    return sum(p.numel() for m in modules for p in m.parameters())


def build_tiny_model(out_dir: Path, *, seed: int = 0, variant: str = "tiny") -> Path:
    """Write a complete diffusers ``StableDiffusionPipeline`` folder to ``out_dir``.

    Args:
        out_dir: Destination folder; created if missing, files inside are overwritten.
        seed: Seed for every random weight. Same ``(seed, variant)`` ⇒ identical files.
        variant: Size preset, one of :data:`PRESETS`.

    Returns:
        ``out_dir``, loadable with ``StableDiffusionPipeline.from_pretrained(out_dir)``.
    """
    if variant not in PRESETS:
        raise ModelError(f"unknown model variant {variant!r}; choose one of {sorted(PRESETS)}")
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    preset = PRESETS[variant]
    vocab = write_tokenizer(out_dir / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(out_dir), subfolder="tokenizer", local_files_only=True)

    # Seed the global RNG because diffusers/transformers initialise weights with it.
    torch.manual_seed(seed)
    unet, vae, text_encoder, scheduler = _make_components(preset, len(vocab), vocab[BOS_TOKEN], vocab[EOS_TOKEN])
    _colourise(unet, vae, preset, torch.Generator().manual_seed(seed + 1))

    pipe: Any = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    # save_pretrained re-saves the tokenizer in its own format; put our files back on top
    # so the on-disk vocabulary is exactly the one we generated.
    write_tokenizer(out_dir / "tokenizer")

    info = {
        "name": f"sdlab-{variant}-seed{seed}",
        "variant": variant,
        "seed": seed,
        "parameters": count_parameters(unet, vae, text_encoder),
        "format_version": FORMAT_VERSION,
    }
    (out_dir / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    logger.info("built %s model (seed %d, %d parameters) in %s", variant, seed, info["parameters"], out_dir)
    return out_dir


_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_FIXED = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key_to_ldm(key: str, lpb: int, has_attention: dict[int, bool]) -> str:
    """Map one diffusers UNet key to the original LDM name (inverse of diffusers' converter)."""
    parts = key.split(".")
    for new, old in _UNET_FIXED.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    if parts[0] in ("down_blocks", "up_blocks"):
        block, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":
            return f"input_blocks.{(lpb + 1) * (block + 1)}.0.op." + ".".join(parts[5:])
        if kind == "upsamplers":
            slot = 2 if has_attention[block] else 1
            return f"output_blocks.{(lpb + 1) * block + lpb}.{slot}.conv." + ".".join(parts[5:])
        layer = int(parts[3])
        index = (lpb + 1) * block + layer + (1 if parts[0] == "down_blocks" else 0)
        prefix = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
        rest = parts[4:]
        if kind == "resnets":
            rest[0] = _UNET_RESNET[rest[0]]
            return f"{prefix}.{index}.0." + ".".join(rest)
        return f"{prefix}.{index}.1." + ".".join(rest)
    if parts[0] == "mid_block":
        kind, layer, rest = parts[1], int(parts[2]), parts[3:]
        if kind == "resnets":
            rest[0] = _UNET_RESNET[rest[0]]
            return f"middle_block.{2 * layer}." + ".".join(rest)
        return "middle_block.1." + ".".join(rest)
    raise ModelError(f"cannot map UNet weight {key!r} to the LDM layout")


def _vae_key_to_ldm(key: str, n_blocks: int) -> str:
    parts = key.split(".")
    coder, rest = parts[0], parts[1:]
    if rest[0] in _VAE_FIXED:
        return f"{coder}.{_VAE_FIXED[rest[0]]}." + ".".join(rest[1:])
    if rest[0] in ("down_blocks", "up_blocks"):
        block = int(rest[1]) if rest[0] == "down_blocks" else n_blocks - 1 - int(rest[1])
        name = "down" if rest[0] == "down_blocks" else "up"
        if rest[2] in ("downsamplers", "upsamplers"):
            return f"{coder}.{name}.{block}.{name}sample.conv." + ".".join(rest[5:])
        tail = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
        return f"{coder}.{name}.{block}.block.{rest[3]}.{tail}"
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            tail = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.mid.block_{int(rest[2]) + 1}.{tail}"
        tail = ".".join(rest[3:])
        for new, old in _VAE_ATTENTION.items():
            if tail.startswith(new + "."):
                return f"{coder}.mid.attn_1.{old}{tail[len(new) :]}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def to_ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's weights in the original SD 1.x single-file (LDM / A1111) layout."""
    unet_cfg = pipe.unet.config
    lpb = unet_cfg.layers_per_block
    has_attention = {i: "CrossAttn" in t for i, t in enumerate(unet_cfg.up_block_types)}
    n_vae = len(pipe.vae.config.block_out_channels)
    out: dict[str, torch.Tensor] = {}
    for key, value in pipe.unet.state_dict().items():
        out["model.diffusion_model." + _unet_key_to_ldm(key, lpb, has_attention)] = value
    for key, value in pipe.vae.state_dict().items():
        ldm = _vae_key_to_ldm(key, n_vae)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's VAE attention uses 1×1 convs
        out["first_stage_model." + ldm] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers ≥ 5.6 flattened CLIPTextModel; the original layout keeps `text_model.`.
        if not key.startswith("text_model."):
            key = "text_model." + key
        out["cond_stage_model.transformer." + key] = value
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def export_single_file(model_dir: Path, out_file: Path) -> Path:
    """Write a diffusers SD folder as one A1111-style ``.safetensors`` checkpoint.

    Load it back with ``load_pipeline(out_file, config=model_dir)``: a single file
    carries no configs or tokenizer, so the original folder supplies them.
    """
    from safetensors.torch import save_file

    from sdlab.runtime.loader import load_pipeline

    pipe = load_pipeline(Path(model_dir), device="cpu", dtype="fp32")
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_ldm_state_dict(pipe), str(out_file), metadata={"format": "pt", "sdlab_source": Path(model_dir).name})
    logger.info("exported %s to single file %s", model_dir, out_file)
    return out_file


def read_model_info(model_dir: Path) -> dict | None:
    """Return the ``sdlab_model.json`` of a built model, or None for other models."""
    path = Path(model_dir) / MODEL_INFO_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
