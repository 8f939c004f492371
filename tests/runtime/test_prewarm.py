"""The kernel pre-load runs the attention shapes a model's first image really uses: every scaled-dot-product call of
a real txt2img (recorded at torch's SDPA entry point) is one of the shapes read from the model's config files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdlab.runtime import prewarm
from sdlab.runtime.batch import BatchItem, generate_batch
from sdlab.runtime.loader import load_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _recorded(pipe, monkeypatch) -> set[prewarm.AttentionShape]:
    """The attention calls of one 2-step txt2img at the model's native size (batch 1, CFG)."""
    seen: set[prewarm.AttentionShape] = set()
    real = torch.nn.functional.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        batch, heads, q_len, width = q.shape
        seen.add(prewarm.AttentionShape(batch, heads, q_len, k.shape[2], width, bool(is_causal)))
        assert attn_mask is None  # the pre-load runs no masks; a masked call would need another kernel
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", record)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    generate_batch(pipe, [BatchItem("two red squares", seed=1)], steps=2, width=side, height=side, output="uint8")
    return seen


@pytest.fixture(scope="module")
def folders(models_dir, tmp_path_factory):
    from sdlab.bench.models import save

    xl = save("tiny-xl", tmp_path_factory.mktemp("prewarm") / "xl", dtype=torch.float32)
    return {"shapes": ROOT / "sdlab" / "shapes" / "model", "tiny": models_dir / "tiny-a", "tiny-xl": xl}


@pytest.mark.parametrize("name", ["shapes", "tiny", "tiny-xl"])
def test_preloaded_shapes_are_the_first_images_attention_calls(folders, name, monkeypatch):
    folder = folders[name]
    expected = set(prewarm.attention_shapes(folder))
    got = _recorded(load_pipeline(folder, device="cpu"), monkeypatch)
    assert got == expected, (sorted(got - expected, key=str), sorted(expected - got, key=str))
    assert any(s.causal for s in got) and any(s.kv_len == prewarm.TEXT_TOKENS and not s.causal for s in got)


def test_single_file_checkpoints_have_no_shapes_and_cpu_gets_no_thread(models_dir):
    assert prewarm.attention_shapes(models_dir / "tiny-a-single.safetensors") == []
    assert prewarm.start(models_dir / "tiny-a", device="cpu", dtype=torch.float32) is None


def test_preload_runs_every_shape_and_a_config_it_cannot_read_only_logs(models_dir, tmp_path, caplog, monkeypatch):
    ran = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: ran.append((q.shape, k.shape)) or real(q, k, v, **kw))
    with caplog.at_level("INFO", logger="sdlab.runtime.prewarm"):
        assert prewarm.preload(models_dir / "tiny-a", device="cpu", dtype=torch.float32) > 0
    assert len(ran) == len(prewarm.attention_shapes(models_dir / "tiny-a")) and "pre-loaded" in caplog.text
    broken = tmp_path / "broken" / "unet"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"sample_size": 64}')  # no block_out_channels
    with caplog.at_level("WARNING", logger="sdlab.runtime.prewarm"):
        assert prewarm.preload(broken.parent, device="cpu", dtype=torch.float32) is None
    assert "pre-load stopped: KeyError" in caplog.text and "block_out_channels" in caplog.text
