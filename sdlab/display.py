"""Notebook display helpers: images inline, tables of task timings."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any


def image_grid(images: Sequence[Any], titles: Sequence[str] | None = None, *, width_px: int = 192) -> Any:
    """An ipywidgets grid of PIL images with optional captions (renders inline in JupyterLab)."""
    import ipywidgets as widgets

    cells = []
    for i, image in enumerate(images):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        picture = widgets.Image(value=buf.getvalue(), format="png", width=width_px)
        caption = widgets.Label(titles[i] if titles else f"#{i}")
        cells.append(widgets.VBox([picture, caption]))
    return widgets.GridBox(cells, layout=widgets.Layout(grid_template_columns=f"repeat(auto-fill, {width_px + 8}px)"))


def show_images(images: Sequence[Any], titles: Sequence[str] | None = None, *, width_px: int = 192) -> None:
    """Display images inline; falls back to plain PIL display where widgets are not rendered."""
    from IPython.display import display

    display(image_grid(images, titles, width_px=width_px))


def timings_table(rows: Sequence[dict[str, Any]]) -> Any:
    """An HTML table (IPython) of dict rows with the same keys."""
    from IPython.display import HTML

    if not rows:
        return HTML("<p>no rows</p>")
    keys = list(rows[0])
    head = "".join(f"<th>{k}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{r.get(k, '')}</td>" for k in keys) + "</tr>" for r in rows)
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
