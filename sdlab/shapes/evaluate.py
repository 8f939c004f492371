"""Evaluate a model on held-out captions: generate one image per caption, read it with the judge, score it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdlab.shapes.judge import Reading, Scores, read_image, score
from sdlab.shapes.scenes import Scene, sample_scene

TARGETS = {"shape colour": 0.90, "background colour": 0.90, "shape kind": 0.75, "count": 0.75}


def held_out_scenes(n: int, seed: int = 0) -> list[Scene]:
    """`n` scenes whose (colour, shape, background) combination was never in training; fixed by `seed`."""
    rng = np.random.default_rng([seed, 99])
    return [sample_scene(rng, split="held_out") for _ in range(n)]


@dataclass
class Evaluation:
    scores: Scores
    scenes: list[Scene]
    readings: list[Reading]
    images: list[Any]  # PIL images

    def sheet(self, limit: int = 32, columns: int = 8):
        """The first `limit` images in a grid (PIL), each titled with what it was asked for, for a look by eye."""
        from sdlab.workshop.gallery import contact_sheet

        titles = [s.caption(size_word=False, position_word=False) for s in self.scenes[:limit]]
        return contact_sheet(self.images[:limit], titles, tile_px=160, columns=columns)

    def report(self) -> str:
        lines = []
        for name, value in self.scores.as_dict().items():
            if name == "images":
                lines.append(f"{'images':<18} {value}")
                continue
            target = TARGETS[name]
            verdict = "ok" if value >= target else "BELOW TARGET"
            lines.append(f"{name:<18} {100 * value:5.1f} %   (target ≥ {100 * target:.0f} %)  {verdict}")
        return "\n".join(lines)

    def passed(self) -> bool:
        return all(self.scores.as_dict()[k] >= v for k, v in TARGETS.items())


def evaluate(pipe_or_path: Any, *, n: int = 200, size: int = 128, steps: int = 20, guidance: float = 7.0,
             seed: int = 0, batch: int = 25, device: str | None = None) -> Evaluation:
    """Generate `n` held-out captions with `pipe_or_path` (a pipeline or a model folder) and judge them."""
    if isinstance(pipe_or_path, (str, Path)):
        from sdlab.runtime.loader import load_pipeline

        pipe = load_pipeline(Path(pipe_or_path), device=device)
    else:
        pipe = pipe_or_path
    scenes = held_out_scenes(n, seed)
    images = []
    for start in range(0, n, batch):
        chunk = scenes[start:start + batch]
        generators = [torch.Generator(device="cpu").manual_seed(seed * 100_000 + start + i) for i in range(len(chunk))]
        out = pipe(prompt=[s.caption() for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                   width=size, height=size, generator=generators)
        images.extend(out.images)
    readings = [read_image(np.asarray(img)) for img in images]
    return Evaluation(score(scenes, readings), scenes, readings, images)


@torch.no_grad()
def round_trip_scores(vae: Any, *, n: int = 200, size: int = 128, seed: int = 0, device: Any = "cpu") -> dict[str, float]:
    """The judge's scores on held-out scenes encoded and decoded by `vae` (the latent's mode, no noise).

    The ceiling of what the diffusion model can draw through this autoencoder: a shape the round trip blurs into
    the wrong colour or kind cannot come out right from any latent the UNet makes.
    """
    from sdlab.runtime.batch import to_uint8
    from sdlab.shapes.scenes import render

    scenes = held_out_scenes(n, seed)
    x = render(scenes, size, device=device) * 2 - 1
    dtype = next(vae.parameters()).dtype
    out = [vae.decode(vae.encode(chunk.to(dtype)).latent_dist.mode()).sample.float() for chunk in x.split(50)]
    images = to_uint8(torch.cat(out))
    scores = score(scenes, [read_image(img) for img in images]).as_dict()
    return {k: round(float(v), 4) for k, v in scores.items()}
