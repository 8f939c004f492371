"""Live previews: while someone watches a generation, its first image's latents decoded every few steps.

SD WebUI answers `GET /sdapi/v1/progress` with a `current_image` while it generates (its "live preview"); so does
this runtime. A linear latent → RGB map ("Approx cheap") does not carry over between autoencoders (on the
project's own model it gets even the background colour wrong), so the preview is the model's own VAE decoder, run on
the generating thread between two steps (never concurrently with the batch), eagerly (a compiled decoder would
compile a new shape), for one image, and only while a client has asked for previews in the last few seconds:
nobody watching, no cost.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from typing import Any

import torch

EVERY_STEPS = 5  # decode at most every this many steps (SD WebUI's default live-preview period is 10)
WATCH_SECONDS = 5.0  # a progress request asking for the image keeps previews on this long
SIDE = 256  # longer edge of a preview


class LivePreview:
    """The latest preview of the running generation; written by the generating thread, read by progress requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched_until = 0.0
        self.image: str | None = None  # base64 PNG, as SD WebUI's `current_image`

    def watch(self) -> str | None:
        """A client wants previews: keep making them for a while; returns the latest one."""
        with self._lock:
            self._watched_until = time.monotonic() + WATCH_SECONDS
            return self.image

    def reset(self) -> None:
        with self._lock:
            self.image = None

    def maybe_update(self, pipe: Any, step: int, latents: torch.Tensor) -> None:
        """Called after each step with the batch's latents; decodes the first image now and then, while watched."""
        if time.monotonic() > self._watched_until or (step % EVERY_STEPS and self.image is not None):
            return
        image = decode(pipe, latents[:1])
        with self._lock:
            self.image = image


@torch.inference_mode()
def decode(pipe: Any, latents: torch.Tensor) -> str:
    """One image's latents as a base64 PNG (longer edge SIDE), through the eager VAE decoder."""
    from PIL import Image

    from sdlab.runtime.batch import decode_latents, to_uint8

    image = Image.fromarray(to_uint8(decode_latents(pipe, latents, eager=True))[0])
    image.thumbnail((SIDE, SIDE))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
