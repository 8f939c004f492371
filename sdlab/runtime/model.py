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
}


def _make_components(preset: Preset, vocab_size: int, bos_id: int, eos_id: int):
    """Instantiate the random UNet, VAE, text encoder and scheduler."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    n_down = len(preset.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=preset.unet_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n_down - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n_down - 1) + ("UpBlock2D",),
        layers_per_block=1,
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
        sample_size=256,
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

    pipe = StableDiffusionPipeline(
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


def read_model_info(model_dir: Path) -> dict | None:
    """Return the ``sdlab_model.json`` of a built model, or None for other models."""
    path = Path(model_dir) / MODEL_INFO_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
