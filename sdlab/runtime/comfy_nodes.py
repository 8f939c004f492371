"""The ComfyUI node types the sdlab runtime executes, mapped onto its diffusers pieces.

Each node is declared the way ComfyUI's ``nodes.py`` declares it (required inputs with their
types and limits, return types, whether it is an output node), so ``/object_info`` answers what
ComfyUI clients expect and ``/prompt`` validates links and values as ComfyUI does. The work
itself reuses the runtime: checkpoints come from the :class:`ModelRegistry`, schedulers from
:mod:`sdlab.runtime.samplers`, pipelines from :func:`sdlab.runtime.loader.with_scheduler`.

Values flowing along links: MODEL, CLIP and VAE are a :class:`CheckpointRef` (the checkpoint
title; the registry keeps it loaded), CONDITIONING is a :class:`Conditioning` (text-encoder
output), LATENT is a :class:`Latent` (UNet latent space, i.e. already times the VAE scaling
factor), IMAGE is a list of RGB PIL images and MASK a list of ``"L"`` PIL images.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image, ImageOps, PngImagePlugin

from sdlab.errors import ValidationError
from sdlab.runtime import samplers
from sdlab.runtime.loader import ModelRegistry, with_scheduler
from sdlab.runtime.text import encode_texts

MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION
LATENT_CHANNELS = 4  # SD 1.x

# ComfyUI sampler names -> the A1111 names sdlab.runtime.samplers maps onto diffusers.
COMFY_SAMPLERS: dict[str, str] = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "ddim": "DDIM",
    "uni_pc": "UniPC",
}
# ComfyUI schedulers -> (A1111 noise schedule, extra scheduler config). "simple" and "sgm_uniform"
# space steps evenly from the last training timestep, which diffusers calls "trailing".
COMFY_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "normal": ("automatic", {}),
    "karras": ("karras", {}),
    "exponential": ("exponential", {}),
    "sgm_uniform": ("automatic", {"timestep_spacing": "trailing"}),
    "simple": ("automatic", {"timestep_spacing": "trailing"}),
    "ddim_uniform": ("automatic", {"timestep_spacing": "leading"}),
}


class Interrupted(Exception):
    """``/interrupt`` was called while this prompt ran (ComfyUI's InterruptProcessingException)."""


@dataclass(frozen=True)
class CheckpointRef:
    title: str


@dataclass(frozen=True)
class Conditioning:
    embeds: torch.Tensor  # (1, tokens, hidden)
    pooled: torch.Tensor | None = None  # SDXL: the second text encoder's pooled output (1, projection)


@dataclass(frozen=True)
class Latent:
    samples: torch.Tensor  # (batch, 4, height / 8, width / 8), UNet latent space


class Catalog(Protocol):
    """What the input lists of ``/object_info`` and validation depend on."""

    def checkpoints(self) -> list[str]: ...

    def input_files(self) -> list[str]: ...


@dataclass
class NodeContext:
    """What a running node may use; one per prompt."""

    registry: ModelRegistry
    prompt: dict[str, Any]
    read_input: Callable[[str], bytes]  # LoadImage: name -> file bytes
    save_image: Callable[[bytes, str, str], dict[str, str]]  # (png, filename_prefix, type) -> {filename, subfolder, type}
    progress: Callable[[int, int], None]  # (value, max) of the running node
    interrupted: Callable[[], bool]
    node_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def check_interrupt(self) -> None:
        if self.interrupted():
            raise Interrupted()


NodeResult = tuple[tuple[Any, ...], dict[str, Any] | None]  # (outputs, ui)


@dataclass(frozen=True)
class NodeType:
    """One node class: ``required(catalog)`` is ComfyUI's ``INPUT_TYPES()["required"]``."""

    name: str
    display_name: str
    category: str
    required: Callable[[Catalog], dict[str, tuple]]
    outputs: tuple[str, ...]
    run: Callable[..., NodeResult]
    output_node: bool = False
    description: str = ""

    def info(self, catalog: Catalog) -> dict[str, Any]:
        """The node's ``/object_info`` entry."""
        required = self.required(catalog)
        return {
            "input": {"required": required},
            "input_order": {"required": list(required)},
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.outputs),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": "nodes",
            "category": self.category,
            "output_node": self.output_node,
        }


# -- node implementations -------------------------------------------------------------------------


def _checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> NodeResult:
    title = ctx.registry.find(ckpt_name).title
    ctx.registry.get(title)  # load now, as ComfyUI does in this node
    ref = CheckpointRef(title)
    return (ref, ref, ref), None


def _clip_text_encode(ctx: NodeContext, text: str, clip: CheckpointRef) -> NodeResult:
    pipe = ctx.registry.get(clip.title)
    embeds, pooled = encode_texts(pipe, [text])  # SDXL: both encoders, and the pooled vector
    return (Conditioning(embeds, pooled),), None


def _empty_latent(ctx: NodeContext, width: int, height: int, batch_size: int) -> NodeResult:
    return (Latent(torch.zeros(batch_size, LATENT_CHANNELS, height // 8, width // 8)),), None


def _scheduler(base_config: Any, sampler_name: str, scheduler: str):
    schedule, extra = COMFY_SCHEDULERS[scheduler]
    try:
        built = samplers.sampler_for(COMFY_SAMPLERS[sampler_name], base_config, schedule)
    except ValidationError as exc:
        # diffusers lacks some pairs ComfyUI has (e.g. euler_ancestral + karras): say which ones work
        usable = [s for s in COMFY_SCHEDULERS if _pair_supported(sampler_name, s)]
        raise ValueError(f"sampler_name {sampler_name!r} cannot use scheduler {scheduler!r} on the sdlab runtime; "
                         f"use one of {usable}") from exc
    extra = {k: v for k, v in extra.items() if k in built.config}
    return type(built).from_config({**built.config, **extra}) if extra else built


def _pair_supported(sampler_name: str, scheduler: str) -> bool:
    try:
        samplers.resolve(COMFY_SAMPLERS[sampler_name], COMFY_SCHEDULERS[scheduler][0])
    except ValidationError:
        return False
    return True


def _ksampler(ctx: NodeContext, model: CheckpointRef, seed: int, steps: int, cfg: float, sampler_name: str,
              scheduler: str, positive: Conditioning, negative: Conditioning, latent_image: Latent,
              denoise: float) -> NodeResult:
    base = ctx.registry.get(model.title)
    latent = latent_image.samples
    if latent.shape[1] != base.unet.config.in_channels:
        raise ValueError(f"latent has {latent.shape[1]} channels; model {model.title} expects {base.unet.config.in_channels}")
    if denoise <= 0:
        return (latent_image,), None
    batch, device, dtype = latent.shape[0], base.device, base.unet.dtype
    generator = torch.Generator("cpu").manual_seed(seed)  # CPU noise: same image on any device

    def on_step_end(pipe, step, timestep, callback_kwargs):
        ctx.progress(step + 1, pipe.num_timesteps)
        if ctx.interrupted():
            pipe._interrupt = True
        return callback_kwargs

    common: dict[str, Any] = {
        "prompt_embeds": positive.embeds.to(device, dtype).expand(batch, -1, -1),
        "negative_prompt_embeds": negative.embeds.to(device, dtype).expand(batch, -1, -1),
        "guidance_scale": cfg,
        "generator": generator,
        "output_type": "latent",
        "callback_on_step_end": on_step_end,
    }
    if positive.pooled is not None and negative.pooled is not None:
        common["pooled_prompt_embeds"] = positive.pooled.to(device, dtype).expand(batch, -1)
        common["negative_pooled_prompt_embeds"] = negative.pooled.to(device, dtype).expand(batch, -1)
    sched = _scheduler(base.scheduler.config, sampler_name, scheduler)
    with torch.inference_mode():
        if denoise >= 1:
            pipe = with_scheduler(base, sched)
            noise = torch.randn(latent.shape, generator=generator).to(device, dtype)
            out = pipe(latents=noise, num_inference_steps=steps, height=latent.shape[2] * 8,
                       width=latent.shape[3] * 8, **common)
        else:
            # ComfyUI runs `steps` steps over the last `denoise` part of a longer schedule.
            pipe = with_scheduler(base, sched, img2img=True)
            out = pipe(image=latent.to(device, dtype), strength=denoise,
                       num_inference_steps=max(steps, round(steps / denoise)), **common)
    ctx.check_interrupt()
    return (Latent(out.images.float().cpu()),), None


def _vae_decode(ctx: NodeContext, samples: Latent, vae: CheckpointRef) -> NodeResult:
    pipe = ctx.registry.get(vae.title)
    with torch.inference_mode():
        latents = samples.samples.to(pipe.device, pipe.vae.dtype) / pipe.vae.config.scaling_factor
        pixels = pipe.vae.decode(latents, return_dict=False)[0]
        images = pipe.image_processor.postprocess(pixels, output_type="pil")
    return (images,), None


def _vae_encode(ctx: NodeContext, pixels: list[Image.Image], vae: CheckpointRef) -> NodeResult:
    pipe = ctx.registry.get(vae.title)
    with torch.inference_mode():
        tensor = pipe.image_processor.preprocess(pixels).to(pipe.device, pipe.vae.dtype)  # sides rounded down to 8
        latents = pipe.vae.encode(tensor).latent_dist.mode() * pipe.vae.config.scaling_factor
    return (Latent(latents.float().cpu()),), None


def _load_image(ctx: NodeContext, image: str) -> NodeResult:
    picture = ImageOps.exif_transpose(Image.open(io.BytesIO(ctx.read_input(image))))
    if "A" in picture.getbands():
        mask = ImageOps.invert(picture.getchannel("A"))  # ComfyUI: mask = 1 - alpha
    else:
        mask = Image.new("L", (64, 64), 0)
    return ([picture.convert("RGB")], [mask]), None


def _png(image: Image.Image, prompt: dict[str, Any]) -> bytes:
    meta = PngImagePlugin.PngInfo()
    meta.add_text("prompt", json.dumps(prompt))  # as ComfyUI does: the image carries its workflow
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta, compress_level=4)
    return buf.getvalue()


def _save_image(ctx: NodeContext, images: list[Image.Image], filename_prefix: str) -> NodeResult:
    saved = [ctx.save_image(_png(im, ctx.prompt), filename_prefix, "output") for im in images]
    return (), {"images": saved}


def _preview_image(ctx: NodeContext, images: list[Image.Image]) -> NodeResult:
    saved = [ctx.save_image(_png(im, ctx.prompt), "ComfyUI_temp", "temp") for im in images]
    return (), {"images": saved}


# -- the catalogue --------------------------------------------------------------------------------

_SIDE = ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8})

NODE_TYPES: dict[str, NodeType] = {
    n.name: n
    for n in (
        NodeType("CheckpointLoaderSimple", "Load Checkpoint", "loaders",
                 lambda c: {"ckpt_name": (c.checkpoints(),)}, ("MODEL", "CLIP", "VAE"), _checkpoint_loader,
                 description="Loads a diffusion model checkpoint from the runtime's models folder."),
        NodeType("CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning",
                 lambda c: {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP",)},
                 ("CONDITIONING",), _clip_text_encode),
        NodeType("EmptyLatentImage", "Empty Latent Image", "latent",
                 lambda c: {"width": _SIDE, "height": _SIDE,
                            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})},
                 ("LATENT",), _empty_latent),
        NodeType("KSampler", "KSampler", "sampling",
                 lambda c: {
                     "model": ("MODEL",),
                     "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                     "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                     "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                     "sampler_name": (list(COMFY_SAMPLERS),),
                     "scheduler": (list(COMFY_SCHEDULERS),),
                     "positive": ("CONDITIONING",),
                     "negative": ("CONDITIONING",),
                     "latent_image": ("LATENT",),
                     "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                 },
                 ("LATENT",), _ksampler),
        NodeType("VAEDecode", "VAE Decode", "latent", lambda c: {"samples": ("LATENT",), "vae": ("VAE",)},
                 ("IMAGE",), _vae_decode),
        NodeType("VAEEncode", "VAE Encode", "latent", lambda c: {"pixels": ("IMAGE",), "vae": ("VAE",)},
                 ("LATENT",), _vae_encode),
        NodeType("LoadImage", "Load Image", "image",
                 lambda c: {"image": (sorted(c.input_files()), {"image_upload": True})}, ("IMAGE", "MASK"), _load_image),
        NodeType("SaveImage", "Save Image", "image",
                 lambda c: {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                 (), _save_image, output_node=True, description="Saves the input images to the runtime's output store."),
        NodeType("PreviewImage", "Preview Image", "image", lambda c: {"images": ("IMAGE",)}, (), _preview_image,
                 output_node=True),
    )
}
