"""Captioned flat-shape scenes: a seeded sampler, the captions, the held-out combinations and a renderer.

A scene is 1–3 shapes of one kind, colour and size on a plain background. Coordinates are fractions of the
image side, so one scene renders at any resolution. Rendering is plain torch (CPU or GPU), anti-aliased by
supersampling, so training draws fresh batches on the accelerator and the judge's tests draw them on a CPU.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "star")
# Ten well separated colours (sRGB, 0-255): the nearest-colour judge needs every pair ≥ 80 apart.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 220),
    "purple": (140, 60, 190),
    "pink": (245, 140, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS = tuple(PALETTE)
SIZES = ("small", "large")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
# Where a single shape sits: ranges of its centre (x lo, x hi, y lo, y hi), fractions of the side.
POSITIONS: dict[str, tuple[float, float, float, float]] = {
    "at the top": (0.3, 0.7, 0.0, 0.34),
    "at the bottom": (0.3, 0.7, 0.66, 1.0),
    "on the left": (0.0, 0.34, 0.3, 0.7),
    "on the right": (0.66, 1.0, 0.3, 0.7),
    "in the middle": (0.42, 0.58, 0.42, 0.58),
}
# Radius ranges (fraction of the side) by size word and count: three large shapes must still fit apart.
RADII = {("small", 1): (0.09, 0.11), ("small", 2): (0.09, 0.11), ("small", 3): (0.09, 0.11),
         ("large", 1): (0.20, 0.25), ("large", 2): (0.15, 0.18), ("large", 3): (0.13, 0.15)}
MARGIN = 0.02

# Shape outlines, in units of the shape's radius, centred on their bounding box; y grows downwards.
_TRIANGLE_R = 1.2  # circumradius of the equilateral triangle, so it looks as large as the circle
_STAR_R, _STAR_INNER = 1.25, 0.42
_SQUARE_HALF = 0.85


def _star_vertices() -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = _STAR_R if i % 2 == 0 else _STAR_R * _STAR_INNER
        ang = -math.pi / 2 + i * math.pi / 5
        pts.append((rad * math.cos(ang), rad * math.sin(ang)))
    ys = [p[1] for p in pts]
    shift = -(max(ys) + min(ys)) / 2
    return [(x, y + shift) for x, y in pts]


def _triangle_vertices() -> list[tuple[float, float]]:
    r = _TRIANGLE_R
    pts = [(0.0, -r), (r * math.sqrt(3) / 2, r / 2), (-r * math.sqrt(3) / 2, r / 2)]
    shift = -(r / 2 - r) / 2  # centre the bounding box vertically
    return [(x, y + shift) for x, y in pts]


POLYGONS = {"triangle": _triangle_vertices(), "star": _star_vertices()}


@dataclass(frozen=True)
class Scene:
    """One captioned image: every shape shares kind, colour and radius."""

    shape: str
    colour: str
    background: str
    size: str
    centres: tuple[tuple[float, float], ...]
    radius: float
    position: str | None = None  # the phrase of a single shape's place, when the caption names it

    @property
    def count(self) -> int:
        return len(self.centres)

    def caption(self, *, size_word: bool = True, background_word: bool = True, position_word: bool = True) -> str:
        """Plain English, e.g. "two small red circles on a blue background"."""
        return describe(self.count, self.colour, self.shape, self.background if background_word else None,
                        size=self.size if size_word else None, position=self.position if position_word else None)


def describe(count: int, colour: str, shape: str, background: str | None, *, size: str | None = None,
             position: str | None = None) -> str:
    """The captions' words for a scene, or for what the judge read in a picture (a count past three as digits)."""
    words = [COUNT_WORDS.get(count, str(count))]
    if size:
        words.append(size)
    words += [colour, shape + ("s" if count > 1 else "")]
    if position:
        words.append(position)
    if background:
        words.append(f"on a {background} background")
    return " ".join(words).replace("a orange", "an orange")


@functools.cache
def held_out_combinations() -> frozenset[tuple[str, str, str]]:
    """(colour, shape, background) triples never shown in training: 40 of the 360, by a fixed rule (no RNG).

    For each shape and colour one background is held out, so every colour, shape and background (and every
    colour-shape pair) is still seen in training, only never together in that triple.
    """
    return frozenset((c, shape, COLOURS[(i + 3 + 2 * s) % len(COLOURS)])
                     for s, shape in enumerate(SHAPES) for i, c in enumerate(COLOURS))


def _place(rng: np.random.Generator, n: int, radius: float, box: tuple[float, float, float, float] | None):
    """Centres of `n` non-touching shapes, and the radius used (shrunk a little when they do not fit)."""
    while True:
        lo, hi = radius + MARGIN, 1 - radius - MARGIN
        for _ in range(300):
            if box is None:
                pts = rng.uniform(lo, hi, size=(n, 2))
            else:
                x0, x1, y0, y1 = max(box[0], lo), min(box[1], hi), max(box[2], lo), min(box[3], hi)
                pts = np.stack([rng.uniform(x0, max(x0, x1), n), rng.uniform(y0, max(y0, y1), n)], axis=1)
            gaps = [np.hypot(*(pts[i] - pts[j])) for i in range(n) for j in range(i + 1, n)]
            if all(g > 2.3 * radius + MARGIN for g in gaps):
                return tuple((float(x), float(y)) for x, y in pts), radius
        radius *= 0.97


def sample_scene(rng: np.random.Generator, *, split: str = "train") -> Scene:
    """One random scene. `split` "train" never yields a held-out combination; "held_out" yields only those."""
    held = held_out_combinations()
    if split == "held_out":
        colour, shape, background = sorted(held)[int(rng.integers(len(held)))]
    elif split == "train":
        while True:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = COLOURS[int(rng.integers(len(COLOURS)))]
            background = COLOURS[int(rng.integers(len(COLOURS)))]
            if background != colour and (colour, shape, background) not in held:
                break
    else:
        raise ValueError(f"split must be 'train' or 'held_out', not {split!r}")
    count = int(rng.integers(1, 4))
    size = SIZES[int(rng.integers(2))]
    lo, hi = RADII[(size, count)]
    radius = float(rng.uniform(lo, hi))
    position = None
    if count == 1 and rng.random() < 0.5:
        position = list(POSITIONS)[int(rng.integers(len(POSITIONS)))]
    centres, radius = _place(rng, count, radius, POSITIONS[position] if position else None)
    return Scene(shape, colour, background, size, centres, radius, position)


def sample_captioned(rng: np.random.Generator, n: int, *, split: str = "train", drop: float = 0.0):
    """`n` scenes with training captions: words left out at random (size 20 %, background 10 %), and the
    whole caption dropped with probability `drop` (classifier-free guidance)."""
    scenes, captions = [], []
    for _ in range(n):
        scene = sample_scene(rng, split=split)
        u = rng.random(4)
        caption = scene.caption(size_word=u[0] >= 0.2, background_word=u[1] >= 0.1)
        scenes.append(scene)
        captions.append("" if u[3] < drop else caption)
    return scenes, captions


def _inside_polygon(x: torch.Tensor, y: torch.Tensor, verts: list[tuple[float, float]]) -> torch.Tensor:
    inside = torch.zeros_like(x, dtype=torch.bool)
    for (ax, ay), (bx, by) in zip(verts, verts[1:] + verts[:1], strict=True):
        if ay == by:
            continue
        crosses = ((ay > y) != (by > y)) & (x < (bx - ax) * (y - ay) / (by - ay) + ax)
        inside ^= crosses
    return inside


def shape_mask(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boolean mask of a unit-radius `kind` at the origin, for coordinates already divided by the radius."""
    if kind == "circle":
        return x * x + y * y <= 1.0
    if kind == "square":
        return (x.abs() <= _SQUARE_HALF) & (y.abs() <= _SQUARE_HALF)
    return _inside_polygon(x, y, POLYGONS[kind])


def to_device(array: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """A host array on `device`; to a GPU through pinned memory without waiting, so the host can run ahead."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def render(scenes: list[Scene], size: int = 128, *, device: str | torch.device = "cpu", supersample: int = 2) -> torch.Tensor:
    """Images of `scenes` as a float tensor (N, 3, size, size) in [0, 1], drawn on `device` in one pass."""
    n = len(scenes)
    hi = size * supersample
    centres = np.full((n, 3, 2), 10.0, dtype=np.float32)  # unused slots far outside the image
    for i, scene in enumerate(scenes):
        centres[i, : scene.count] = scene.centres
    numbers = np.array([(s.radius, SHAPES.index(s.shape), COLOURS.index(s.colour), COLOURS.index(s.background))
                        for s in scenes], dtype=np.float32).reshape(n, 4)
    c = to_device(centres, device)
    per_scene = to_device(numbers, device)
    table = to_device(np.array(list(PALETTE.values()), dtype=np.float32) / 255, device)
    coords = (torch.arange(hi, device=device, dtype=torch.float32) + 0.5) / hi
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    radius = per_scene[:, 0, None, None, None]
    x = (xx - c[:, :, 0, None, None]) / radius
    y = (yy - c[:, :, 1, None, None]) / radius
    kind = per_scene[:, 1].long()[:, None, None, None]
    mask = torch.zeros_like(x, dtype=torch.bool)
    for k, name in enumerate(SHAPES):
        mask = torch.where(kind == k, shape_mask(name, x, y), mask)
    cover = torch.nn.functional.avg_pool2d(mask.any(dim=1, keepdim=True).float(), supersample)
    fg = table[per_scene[:, 2].long()][:, :, None, None]
    bg = table[per_scene[:, 3].long()][:, :, None, None]
    return bg + (fg - bg) * cover
