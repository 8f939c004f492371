"""Galleries as PNG outputs, and user mistakes as one line: what a notebook cell shows."""

from __future__ import annotations

import base64

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image

from sdlab.workshop import friendly, gallery


def test_contact_sheet_grid_of_tiles_with_captions():
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue", "white", "black")]
    sheet = gallery.contact_sheet(images, [f"#{i}" for i in range(5)], tile_px=32, columns=4)
    assert sheet.size == (4 * 36, 2 * (32 + gallery.CAPTION_PX + 4))
    assert sheet.getpixel((2 + 5, 2 + 5)) == (255, 0, 0) and sheet.getpixel((36 + 2 + 5, 2 + 5)) == (0, 128, 0)


def test_contact_sheet_without_images_says_why():
    with pytest.raises(ValueError, match="returned none"):
        gallery.contact_sheet([])


def test_judged_reads_each_image_against_the_prompt():
    import numpy as np

    from sdlab.shapes import scenes
    from sdlab.shapes.judge import parse_caption

    drawn = [scenes.sample_scene(np.random.default_rng(3)) for _ in range(2)]
    arrays = (scenes.render(drawn, 128).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    images = [Image.fromarray(a) for a in arrays]
    table = gallery.judged(images, drawn[0].caption())
    same = parse_caption(drawn[1].caption()) == parse_caption(drawn[0].caption())
    assert list(table["match"]) == [True, same]
    assert parse_caption(table.loc[0, "judge reads"]) == parse_caption(drawn[0].caption())
    outside = gallery.judged(images[:1], "a red fox in the snow")
    assert not outside.loc[0, "match"] and outside.loc[0, "asked"] == "(outside the model's language)"


def test_show_emits_a_png_output():
    InteractiveShell.instance()  # display() publishes through the running shell, as in a kernel
    try:
        with capture_output() as captured:
            gallery.show([Image.new("RGB", (16, 16), "red")], ["one"], tile_px=16)
    finally:
        InteractiveShell.clear_instance()
    data = captured.outputs[0].data
    expected = gallery.png_bytes(gallery.contact_sheet([Image.new("RGB", (16, 16), "red")], ["one"], tile_px=16))
    assert base64.b64decode(data["image/png"]) == expected


def test_friendly_error_is_one_line_and_the_cell_still_fails(capsys):
    shell = InteractiveShell.instance()
    try:
        assert friendly.install(shell)
        cell = "from sdlab.errors import SdlabError\nraise SdlabError('size 100 is not a multiple of 8; use 96')"
        result = shell.run_cell(cell)
        out = capsys.readouterr().out
        assert not result.success and isinstance(result.error_in_exec, Exception)
        assert "SdlabError: size 100 is not a multiple of 8; use 96" in out and "Traceback" not in out
        other = shell.run_cell("1 / 0")  # not a project error: the full traceback, as usual
        assert not other.success and "ZeroDivisionError" in capsys.readouterr().out
    finally:
        shell.set_custom_exc((), None)
        InteractiveShell.clear_instance()
