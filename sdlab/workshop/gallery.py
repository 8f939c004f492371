"""Images as real PNG outputs: a contact sheet (one PNG with captions) shown through IPython's display.

A PNG output is stored in the notebook itself, so an executed notebook (papermill, GitHub, nbviewer, HTML export)
shows its images anywhere, where a live widget would show nothing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

CAPTION_PX = 14


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(images: Sequence[Image.Image], titles: Sequence[str] | None = None, *, tile_px: int = 160,
                  columns: int = 4) -> Image.Image:
    """The images scaled to `tile_px`, `columns` per row, each captioned with its title."""
    if not images:
        raise ValueError("no images to show: the tasks returned none (check their status and error)")
    cols = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / cols)
    cell_h = tile_px + CAPTION_PX + 4
    sheet = Image.new("RGB", (cols * (tile_px + 4), rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        x, y = (i % cols) * (tile_px + 4), (i // cols) * cell_h
        sheet.paste(image.convert("RGB").resize((tile_px, tile_px)), (x + 2, y + 2))
        caption = titles[i] if titles else f"#{i}"
        draw.text((x + 2, y + tile_px + 3), caption[: tile_px // 6], fill="black")
    return sheet


def show(images: Sequence[Image.Image], titles: Sequence[str] | None = None, *, tile_px: int = 160,
         columns: int = 4) -> Image.Image:
    """Display the contact sheet as a PNG output; returns it."""
    from IPython.display import Image as PngOutput
    from IPython.display import display

    sheet = contact_sheet(images, titles, tile_px=tile_px, columns=columns)
    display(PngOutput(data=png_bytes(sheet), format="png"))
    return sheet


def judged(images: Sequence[Image.Image], prompt: str) -> Any:
    """What the pixel judge (``sdlab.shapes.judge``, the one ``sdlab model eval`` scores with) reads in each image,
    beside what the prompt asked: a check by pixels, not by eye. ``asked`` is empty for a prompt outside the
    default model's language (then nothing can match)."""
    import numpy as np
    import pandas as pd

    from sdlab.shapes.judge import judge_prompt

    rows = []
    for i, image in enumerate(images):
        reading, matches = judge_prompt(np.asarray(image.convert("RGB")), prompt)
        rows.append({"image": i, "asked": prompt if matches is not None else "(outside the model's language)",
                     "judge reads": reading.caption(), "match": bool(matches)})
    return pd.DataFrame(rows).set_index("image")


def show_figure(fig: Any) -> None:
    """Display a matplotlib figure as a PNG output and close it (no second copy from the inline backend)."""
    import matplotlib.pyplot as plt
    from IPython.display import Image as PngOutput
    from IPython.display import display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    display(PngOutput(data=buf.getvalue(), format="png"))
