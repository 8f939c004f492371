"""Train the captioned-shapes model: the autoencoder first, then the UNet and the text encoder together.

Every batch is drawn fresh from the seeded scene sampler (:mod:`sdlab.shapes.scenes`), keyed by (seed, stage,
step), so a run stopped and resumed from its checkpoint folder sees exactly the batches an unbroken run sees.
The result is a diffusers ``StableDiffusionPipeline`` folder with fp16 safetensors weights and, next to them,
``sdlab_model.json`` recording the config, the steps, the time and the hardware.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sdlab.shapes.scenes import render, sample_captioned, to_device

log = logging.getLogger(__name__)

PRESET = "shapes"
CHECKPOINT = "checkpoint.pt"
CONFIG_FILE = "train_config.json"


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (with the code's version)."""

    seed: int = 0
    resolution: int = 128
    vae_steps: int = 4000
    vae_batch: int = 64
    vae_lr: float = 1e-3
    vae_lr_final: float = 2e-5  # cosine decay over vae_steps: flat colours need the last, small steps
    vae_kl_weight: float = 1e-6
    steps: int = 8000
    batch: int = 256
    lr: float = 4e-4
    warmup: int = 300
    ema_decay: float = 0.999
    cond_dropout: float = 0.1  # captions dropped for classifier-free guidance
    offset_noise: float = 0.1  # lets the model reach flat dark and bright backgrounds under SD's noise schedule
    checkpoint_every: int = 500
    supersample: int = 2
    round_trip_images: int = 200  # held-out scenes judged after the autoencoder stage (its ceiling, recorded)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**data)


def _fixed(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with the run it resumes: all but the step counts."""
    return {k: v for k, v in settings.items() if k not in ("steps", "vae_steps", "checkpoint_every")}


def _batch(cfg: TrainConfig, stage: int, step: int, n: int, device: torch.device, drop: float):
    rng = np.random.default_rng([cfg.seed, stage, step])
    scenes, captions = sample_captioned(rng, n, drop=drop)
    images = render(scenes, cfg.resolution, device=device, supersample=cfg.supersample)
    return images * 2 - 1, captions


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class Trainer:
    """One training run in `out_dir` (its `checkpoint/` is resumed when present)."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, device: str | None = None, init_from: Path | None = None) -> None:
        from diffusers import DDPMScheduler
        from transformers import CLIPTokenizer

        from sdlab.runtime.model import PRESETS, SD15_SCHEDULER, _make_components
        from sdlab.runtime.vocab import BOS_TOKEN, EOS_TOKEN, write_tokenizer

        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoint"
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # every batch has the same shape
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        saved = self.ckpt_dir / CONFIG_FILE
        if saved.exists() and _fixed(json.loads(saved.read_text())) != _fixed(dataclasses.asdict(cfg)):
            raise ValueError(f"{saved} holds another config; resume with the same settings (only the step counts "
                             "may grow) or use a new folder")
        saved.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

        vocab = write_tokenizer(self.ckpt_dir / "tokenizer")
        self.tokenizer = CLIPTokenizer.from_pretrained(str(self.ckpt_dir / "tokenizer"), local_files_only=True)
        torch.manual_seed(cfg.seed)
        self.unet, self.vae, self.text_encoder, self.scheduler = _make_components(
            PRESETS[PRESET], len(vocab), vocab[BOS_TOKEN], vocab[EOS_TOKEN])
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(self.device)
        self.noise: Any = DDPMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "timestep_spacing"})
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        self.opt = torch.optim.AdamW(list(self.unet.parameters()) + list(self.text_encoder.parameters()),
                                     lr=cfg.lr, weight_decay=0.01)
        self.vae_step = 0
        self.step = 0
        self.seconds = 0.0
        self.log: list[dict[str, Any]] = []
        self.init_from: dict[str, Any] | None = None
        self.warm_from = 0  # the step the learning-rate warm-up counts from (an init_from run warms up again)
        self._token_cache: dict[str, list[int]] = {}
        self.round_trip: dict[str, float] | None = None  # the judge's scores on autoencoder round trips
        if not self._load() and init_from is not None:
            self._init_from(Path(init_from))

    # -- checkpoints -------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "vae": self.vae.state_dict(), "unet": self.unet.state_dict(), "text": self.text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(), "ema_text": self.ema_text.state_dict(),
            "vae_opt": self.vae_opt.state_dict(), "opt": self.opt.state_dict(),
            "vae_step": self.vae_step, "step": self.step, "seconds": self.seconds, "log": self.log,
            "scaling_factor": self.vae.config.scaling_factor, "init_from": self.init_from,
            "warm_from": self.warm_from, "autoencoder_round_trip": self.round_trip,
        }

    def save(self) -> None:
        tmp = self.ckpt_dir / (CHECKPOINT + ".tmp")
        torch.save(self._state(), tmp)
        tmp.replace(self.ckpt_dir / CHECKPOINT)

    def _load(self) -> bool:
        path = self.ckpt_dir / CHECKPOINT
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.vae.load_state_dict(state["vae"])
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text"])
        self.ema_unet.load_state_dict(state["ema_unet"])
        self.ema_text.load_state_dict(state["ema_text"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.opt.load_state_dict(state["opt"])
        self.vae_step, self.step, self.seconds, self.log = state["vae_step"], state["step"], state["seconds"], state["log"]
        self.vae.register_to_config(scaling_factor=state["scaling_factor"])
        self.init_from = state.get("init_from")
        self.warm_from = state.get("warm_from", 0)
        self.round_trip = state.get("autoencoder_round_trip")
        log.info("resumed from %s: autoencoder step %d, diffusion step %d", path, self.vae_step, self.step)
        return True

    def _init_from(self, model_dir: Path) -> None:
        """Start from an exported model (e.g. the bundled one): its autoencoder as is, its UNet and text encoder
        trained on from its recorded step. Optimiser state is not in an export, so Adam starts afresh."""
        from safetensors.torch import load_file

        from sdlab.runtime.model import read_model_info

        info = read_model_info(model_dir) or {}
        trained = info.get("trained", {})
        for module, sub, name in ((self.vae, "vae", "diffusion_pytorch_model"), (self.unet, "unet", "diffusion_pytorch_model"),
                                  (self.text_encoder, "text_encoder", "model")):
            state = load_file(str(model_dir / sub / f"{name}.safetensors"))
            module.load_state_dict({k: v.float() for k, v in state.items()})
        self.ema_unet.load_state_dict(self.unet.state_dict())
        self.ema_text.load_state_dict(self.text_encoder.state_dict())
        scaling = json.loads((model_dir / "vae" / "config.json").read_text())["scaling_factor"]
        self.vae.register_to_config(scaling_factor=scaling)
        self.vae_step = self.cfg.vae_steps
        self.step = int(trained.get("diffusion_steps", 0))
        self.warm_from = self.step  # Adam starts afresh: warm its steps up again
        self.round_trip = trained.get("autoencoder_round_trip")
        self.seconds = float(trained.get("train_seconds", 0.0))
        self.log = list(trained.get("log", []))
        self.init_from = {"model": info.get("name", model_dir.name), "autoencoder_steps": trained.get("autoencoder_steps"),
                          "diffusion_steps": self.step, "train_seconds": self.seconds, "hardware": trained.get("hardware")}
        log.info("initialised from %s at diffusion step %d", model_dir, self.step)

    # -- stages ------------------------------------------------------------------------------------
    def train_vae(self, deadline: float) -> bool:
        cfg = self.cfg
        self.vae.train()
        while self.vae_step < cfg.vae_steps:
            if time.monotonic() > deadline:
                return False
            started = time.monotonic()
            x, _ = _batch(cfg, 0, self.vae_step, cfg.vae_batch, self.device, 0.0)
            gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + 500_000 + self.vae_step)
            with _autocast(self.device):
                post = self.vae.encode(x).latent_dist
                recon = self.vae.decode(post.sample(generator=gen)).sample
            loss_rec = F.mse_loss(recon.float(), x) + F.l1_loss(recon.float(), x)
            loss = loss_rec + cfg.vae_kl_weight * post.kl().mean()
            progress = self.vae_step / max(1, cfg.vae_steps - 1)
            for group in self.vae_opt.param_groups:
                group["lr"] = cfg.vae_lr_final + 0.5 * (cfg.vae_lr - cfg.vae_lr_final) * (1 + math.cos(math.pi * progress))
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
            self.vae_opt.step()
            self.vae_step += 1
            self.seconds += time.monotonic() - started
            if self.vae_step % 100 == 0 or self.vae_step == cfg.vae_steps:
                self._record("autoencoder", self.vae_step, loss_rec.item())
            if self.vae_step == cfg.vae_steps:
                self._set_scaling()
                self._judge_round_trip()
            if self.vae_step % cfg.checkpoint_every == 0 or self.vae_step == cfg.vae_steps:
                self.save()
        return True

    @torch.no_grad()
    def _set_scaling(self) -> None:
        self.vae.eval()
        x, _ = _batch(self.cfg, 2, 0, 64, self.device, 0.0)
        std = float(self.vae.encode(x).latent_dist.mode().std())
        self.vae.register_to_config(scaling_factor=1.0 / std)
        log.info("latent std %.4f: scaling factor %.4f", std, 1.0 / std)

    @torch.no_grad()
    def _judge_round_trip(self) -> None:
        """What the diffusion stage can reach at best: the judge's scores on encoded-then-decoded held-out scenes."""
        from sdlab.shapes.evaluate import round_trip_scores

        self.vae.eval()
        self.round_trip = round_trip_scores(self.vae, n=self.cfg.round_trip_images, size=self.cfg.resolution,
                                            device=self.device)
        log.info("autoencoder round trip, judged: %s", self.round_trip)

    def _tokens(self, captions: list[str]) -> torch.Tensor:
        new = sorted({c for c in captions if c not in self._token_cache})
        if new:  # the caption language is small: each distinct caption is tokenised once
            ids = self.tokenizer(new, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True).input_ids
            self._token_cache.update(zip(new, ids, strict=True))
        return to_device(np.array([self._token_cache[c] for c in captions], dtype=np.int64), self.device)

    def train_diffusion(self, deadline: float) -> bool:
        cfg = self.cfg
        self.vae.eval().requires_grad_(False)
        self.unet.train()
        self.text_encoder.train()
        scale = self.vae.config.scaling_factor
        params = [p for g in self.opt.param_groups for p in g["params"]]
        while self.step < cfg.steps:
            if time.monotonic() > deadline:
                return False
            started = time.monotonic()
            x, captions = _batch(cfg, 1, self.step, cfg.batch, self.device, cfg.cond_dropout)
            gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + self.step)
            with torch.no_grad(), _autocast(self.device):
                latents = self.vae.encode(x).latent_dist.sample(generator=gen).float() * scale
            noise = torch.randn(latents.shape, generator=gen, device=self.device)
            noise += cfg.offset_noise * torch.randn(latents.shape[0], latents.shape[1], 1, 1, generator=gen, device=self.device)
            t = torch.randint(0, self.noise.config.num_train_timesteps, (latents.shape[0],), generator=gen, device=self.device)
            noisy = self.noise.add_noise(latents, noise, t)
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (self.step + 1 - self.warm_from) / cfg.warmup)
            with _autocast(self.device):
                context = self.text_encoder(self._tokens(captions))[0]
                pred = self.unet(noisy, t, encoder_hidden_states=context).sample
            loss = F.mse_loss(pred.float(), noise)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.opt.step()
            self._ema()
            self.step += 1
            self.seconds += time.monotonic() - started
            if self.step % 100 == 0 or self.step == cfg.steps:
                self._record("diffusion", self.step, loss.item())
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        return True

    @torch.no_grad()
    def _ema(self) -> None:
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for ema, live in ((self.ema_unet, self.unet), (self.ema_text, self.text_encoder)):
            for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                e.lerp_(p.detach(), 1 - decay)

    def _record(self, stage: str, step: int, loss: float) -> None:
        self.log.append({"stage": stage, "step": step, "loss": round(loss, 5), "seconds": round(self.seconds, 1)})
        log.info("%s step %d loss %.4f (%.0f s)", stage, step, loss, self.seconds)

    # -- export ------------------------------------------------------------------------------------
    def export(self, model_dir: Path) -> Path:
        """Write the EMA weights as a diffusers folder with fp16 safetensors and the training record."""
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        from sdlab.runtime.model import FORMAT_VERSION, MODEL_INFO_FILE, SD15_SCHEDULER, count_parameters
        from sdlab.runtime.vocab import write_tokenizer

        model_dir = Path(model_dir)
        unet, text = copy.deepcopy(self.ema_unet).cpu().half(), copy.deepcopy(self.ema_text).cpu().half()
        vae = copy.deepcopy(self.vae).cpu().half()
        pipe: Any = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=self.tokenizer, unet=unet,
                                            scheduler=EulerDiscreteScheduler(**SD15_SCHEDULER), safety_checker=None,
                                            feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(str(model_dir), safe_serialization=True)
        write_tokenizer(model_dir / "tokenizer")
        info = {
            "name": "sdlab-shapes",
            "variant": PRESET,
            "seed": self.cfg.seed,
            "parameters": count_parameters(unet, vae, text),
            "format_version": FORMAT_VERSION,
            "trained": {
                "config": dataclasses.asdict(self.cfg),
                "autoencoder_steps": self.vae_step,
                "diffusion_steps": self.step,
                "train_seconds": round(self.seconds, 1),
                "hardware": _hardware(self.device),
                "initialised_from": self.init_from,
                "autoencoder_round_trip": self.round_trip,
                "torch": torch.__version__,
                "log": self.log[-5:],
            },
        }
        (model_dir / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        log.info("exported %s (%d parameters)", model_dir, info["parameters"])
        return model_dir


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def train(out_dir: Path, cfg: TrainConfig | None = None, *, device: str | None = None,
          time_budget_s: float | None = None, export_to: Path | None = None, export_partial: bool = False,
          init_from: Path | None = None) -> Path | None:
    """Train (or resume) in `out_dir`; export to `export_to` (default `out_dir/model`) once all steps are done.

    With `time_budget_s` it stops cleanly at the budget, checkpointed, and returns None: call again to resume.
    With `export_partial` too, a run stopped during the diffusion stage exports what it has, recorded with the
    steps it reached: the learning rate does not depend on the planned total, so a run configured with that
    many steps trains the same weights. `init_from` (a fresh run only) starts from an exported model.
    """
    cfg = cfg or TrainConfig()
    deadline = time.monotonic() + (time_budget_s if time_budget_s is not None else float("inf"))
    trainer = Trainer(out_dir, cfg, device, init_from)
    if not (trainer.train_vae(deadline) and trainer.train_diffusion(deadline)):
        trainer.save()
        log.info("time budget reached: checkpoint in %s; run again to resume", trainer.ckpt_dir)
        if not (export_partial and trainer.vae_step == cfg.vae_steps and trainer.step > 0):
            return None
        trainer.cfg = dataclasses.replace(cfg, steps=trainer.step)
    return trainer.export(export_to or Path(out_dir) / "model")
