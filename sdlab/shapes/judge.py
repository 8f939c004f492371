"""The pixel-level judge: what an image shows, read from its pixels alone, and how well it matches a scene.

1. Background colour: the median of the outermost 3-pixel ring, mapped to the nearest palette colour.
2. Foreground: pixels farther than 60 (sRGB 0-255, Euclidean) from that median; holes filled, then split into
   8-connected components; components smaller than 0.25 % of the image are noise and ignored.
3. Count: the number of components left.
4. Shape colour: the median colour of the components' pixels after a 1-pixel erosion (no anti-aliased rim),
   mapped to the nearest palette colour.
5. Shape kind, per component: a star is the one shape far from convex, so a solidity (area / convex-hull area)
   under 0.75 reads as a star (a drawn star ≈ 0.55, the others ≥ 0.9); otherwise the fill ratio (area /
   bounding-box area) decides: a square fills ≈ 1.0 of its box, a circle ≈ 0.79, a triangle ≈ 0.52, with the
   thresholds half way between (0.64, 0.89). The image's kind is the most common kind among its components.

Rendered ground truth scores 100 % on all four (tests/unit/test_shapes.py holds that).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from sdlab.shapes.scenes import COLOURS, PALETTE, SHAPES, Scene, describe

FOREGROUND_DISTANCE = 60.0
MIN_AREA_FRACTION = 0.0025
STAR_SOLIDITY = 0.75
# Fill-ratio thresholds between triangle | circle | square.
KIND_THRESHOLDS = ((0.64, "triangle"), (0.89, "circle"), (float("inf"), "square"))
_TABLE = np.array(list(PALETTE.values()), dtype=np.float32)


def nearest_colour(rgb: np.ndarray) -> str:
    return COLOURS[int(np.argmin(((_TABLE - rgb) ** 2).sum(axis=1)))]


def kind_of(fill: float, solidity: float) -> str:
    if solidity < STAR_SOLIDITY:
        return "star"
    return next(kind for limit, kind in KIND_THRESHOLDS if fill < limit)


def solidity_of(comp: np.ndarray) -> float:
    """Area over convex-hull area of a boolean mask (pixel squares' corners as hull points)."""
    ys, xs = np.nonzero(comp)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    try:
        hull = ConvexHull(corners)
    except Exception:  # degenerate (a line of pixels)
        return 1.0
    return float(comp.sum() / hull.volume)


@dataclass
class Reading:
    """What the judge reads from one image."""

    background: str
    colour: str | None
    count: int
    kind: str | None
    fills: list[tuple[float, float]] = field(default_factory=list)  # (fill ratio, solidity) per component

    def caption(self) -> str:
        """The reading in the captions' words, e.g. "two blue squares on a yellow background"."""
        if not self.count or self.kind is None or self.colour is None:
            return f"no shape on a {self.background} background"
        return describe(self.count, self.colour, self.kind, self.background)

    def matches(self, asked: dict[str, object]) -> bool:
        """True when colour, kind, count and background all agree with :func:`parse_caption`'s result."""
        return (self.colour, self.kind, self.count, self.background) == (
            asked["colour"], asked["shape"], asked["count"], asked["background"])


def read_image(image: np.ndarray) -> Reading:
    """Read an (H, W, 3) uint8 or [0, 1] float image."""
    img = np.asarray(image, dtype=np.float32)
    if img.max() <= 1.0:
        img = img * 255.0
    h, w, _ = img.shape
    ring = np.ones((h, w), dtype=bool)
    ring[3:-3, 3:-3] = False
    bg_rgb = np.median(img[ring], axis=0)
    mask = np.sqrt(((img - bg_rgb) ** 2).sum(axis=2)) > FOREGROUND_DISTANCE
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    min_area = MIN_AREA_FRACTION * h * w
    kinds, fills, pixels = [], [], []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        comp = labels[box] == i
        area = int(comp.sum())
        if area < min_area:
            continue
        fill = area / comp.size
        solidity = solidity_of(comp)
        fills.append((round(fill, 3), round(solidity, 3)))
        kinds.append(kind_of(fill, solidity))
        inner = ndimage.binary_erosion(comp)
        pixels.append(img[box][inner if inner.any() else comp])
    colour = nearest_colour(np.median(np.concatenate(pixels), axis=0)) if pixels else None
    kind = Counter(kinds).most_common(1)[0][0] if kinds else None
    return Reading(nearest_colour(bg_rgb), colour, len(kinds), kind, fills)


def parse_caption(text: str) -> dict[str, object] | None:
    """Count, colour, shape and background of a caption in the model's language; None outside it.

    "two small blue squares on a yellow background" → {"count": 2, "colour": "blue", "shape": "square",
    "background": "yellow"}. Size and place words are allowed and not returned (the judge does not score them).
    """
    words = text.lower().replace(",", " ").split()
    numbers = {"a": 1, "an": 1, "two": 2, "three": 3}
    if len(words) < 6 or words[0] not in numbers or words[-4:-2] not in (["on", "a"], ["on", "an"]) \
            or words[-1] != "background" or words[-2] not in COLOURS:
        return None
    middle = words[1:-4]
    shape = next((w.removesuffix("s") for w in middle if w.removesuffix("s") in SHAPES), None)
    colour = next((w for w in middle if w in COLOURS), None)
    if shape is None or colour is None:
        return None
    return {"count": numbers[words[0]], "colour": colour, "shape": shape, "background": words[-2]}


def judge_prompt(image: np.ndarray, prompt: str) -> tuple[Reading, bool | None]:
    """What the judge reads in ``image`` and whether it is what ``prompt`` asked (None: a prompt outside the model's
    language, which nothing can agree with)."""
    reading, asked = read_image(image), parse_caption(prompt)
    return reading, (reading.matches(asked) if asked is not None else None)


@dataclass
class Scores:
    """Fractions of images judged right, by criterion."""

    n: int
    colour: float
    background: float
    kind: float
    count: float

    def as_dict(self) -> dict[str, float]:
        return {"images": self.n, "shape colour": self.colour, "background colour": self.background,
                "shape kind": self.kind, "count": self.count}


def score(scenes: Iterable[Scene], readings: Iterable[Reading]) -> Scores:
    rows = [(s.colour == r.colour, s.background == r.background, s.shape == r.kind, s.count == r.count)
            for s, r in zip(scenes, readings, strict=True)]
    if not rows:
        raise ValueError("nothing to score")
    cols = np.array(rows, dtype=float).mean(axis=0)
    return Scores(len(rows), *(float(c) for c in cols))
