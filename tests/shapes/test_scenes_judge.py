"""The captioned-shapes data and the pixel judge, on rendered ground truth (no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdlab.shapes import example_prompts, scenes
from sdlab.shapes.judge import read_image, score
from sdlab.shapes.train import TrainConfig


@pytest.mark.parametrize(("size", "n"), [(128, 60), (256, 16)])
def test_judge_reads_rendered_ground_truth_perfectly(size, n):
    rng = np.random.default_rng(7)
    drawn = [scenes.sample_scene(rng, split="train") for _ in range(n)] + \
            [scenes.sample_scene(rng, split="held_out") for _ in range(n // 3)]
    images = scenes.render(drawn, size).permute(0, 2, 3, 1).numpy()
    result = score(drawn, [read_image(img) for img in images])
    assert (result.colour, result.background, result.kind, result.count) == (1.0, 1.0, 1.0, 1.0)


def test_judge_reads_a_blank_image_as_no_shape():
    reading = read_image(np.full((128, 128, 3), (40, 70, 220), dtype=np.uint8))
    assert (reading.background, reading.count, reading.kind, reading.colour) == ("blue", 0, None, None)


def test_held_out_combinations_never_reach_training():
    held = scenes.held_out_combinations()
    assert len(held) == 40 and all(colour != bg for colour, _, bg in held)
    rng = np.random.default_rng(0)
    seen = {(s.colour, s.shape, s.background) for s in (scenes.sample_scene(rng) for _ in range(4000))}
    assert not seen & held
    # each word is still taught: every colour, shape and background appears in training
    assert {c for c, _, _ in seen} == {b for _, _, b in seen} == set(scenes.COLOURS)
    assert {s for _, s, _ in seen} == set(scenes.SHAPES)


def test_captions_are_plain_english_and_seeded():
    scene = scenes.Scene("circle", "red", "blue", "small", ((0.3, 0.3), (0.7, 0.7)), 0.1)
    assert scene.caption() == "two small red circles on a blue background"
    one = scenes.Scene("star", "orange", "white", "large", ((0.2, 0.5),), 0.2, "on the left")
    assert one.caption() == "a large orange star on the left on a white background"
    assert scenes.Scene("star", "orange", "white", "large", ((0.5, 0.5),), 0.2).caption(size_word=False) == \
        "an orange star on a white background"
    a = scenes.sample_captioned(np.random.default_rng([3, 1, 5]), 16, drop=0.1)[1]
    b = scenes.sample_captioned(np.random.default_rng([3, 1, 5]), 16, drop=0.1)[1]
    assert a == b


def test_every_caption_word_is_one_token_of_the_projects_vocabulary(tmp_path):
    from transformers import CLIPTokenizer

    from sdlab.runtime.vocab import write_tokenizer

    write_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    rng = np.random.default_rng(1)
    words = {w for _ in range(300) for w in scenes.sample_scene(rng).caption().split()}
    words |= {w for p in example_prompts() for w in p.split()}
    assert {w: tokenizer.tokenize(w) for w in words if len(tokenizer.tokenize(w)) != 1} == {}


def test_train_config_names_an_unknown_setting():
    with pytest.raises(ValueError, match="stepz"):
        TrainConfig.from_json(json.dumps({"stepz": 3}))


def test_the_judge_reads_rendered_scenes_back_as_their_own_captions():
    from sdlab.shapes.judge import parse_caption

    rng = np.random.default_rng(7)
    drawn = [scenes.sample_scene(rng) for _ in range(24)]
    images = (scenes.render(drawn, 128).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for scene, image in zip(drawn, images, strict=True):
        asked = parse_caption(scene.caption())
        reading = read_image(image)
        assert asked is not None and reading.matches(asked), (scene.caption(), reading.caption())
        assert parse_caption(reading.caption()) == asked  # the reading is a caption of the same language


def test_captions_outside_the_models_language_parse_to_nothing():
    from sdlab.shapes.judge import parse_caption

    assert parse_caption("a red fox in the snow, detailed oil painting") is None
    assert parse_caption("two purple hexagons on a red background") is None  # no such shape
    assert parse_caption("an orange star at the top on a blue background") == {
        "count": 1, "colour": "orange", "shape": "star", "background": "blue"}
