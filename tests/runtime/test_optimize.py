"""Optimisation switches: validated settings, CLI flags, and the same pictures with them on (CPU)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from sdlab.runtime import optimize
from sdlab.runtime.batch import BatchItem, generate_batch

ITEMS = [BatchItem("a red fox", "", 3, 7.5), BatchItem("a blue whale", "", 4, 5.0)]


def test_optimizations_defaults_change_nothing_and_bad_values_are_named():
    assert optimize.Optimizations().describe() == "none"
    assert not optimize.Optimizations().compiled
    fast = optimize.Optimizations.fast()
    assert fast.compiled and fast.cuda_graphs and fast.dtype == "bf16" and fast.channels_last and fast.fuse_qkv
    with pytest.raises(ValueError, match="compile='turbo'") as err:
        optimize.Optimizations(compile="turbo", vae_batch=-1)
    assert "vae_batch=-1" in str(err.value)  # every problem at once
    with pytest.raises(ValueError, match="unknown optimisation preset"):
        optimize.Optimizations.preset("warp")


def test_cli_flags_override_the_preset():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default=None)
    optimize.add_arguments(parser)
    opts = optimize.from_args(parser.parse_args(["--opt", "fast", "--no-fuse-qkv", "--compile", "default", "--vae-batch", "2",
                                                 "--batch-buckets", "1,4", "--compile-cache-dir", "/tmp/cc"]))
    assert opts.dtype == "bf16" and opts.channels_last and not opts.fuse_qkv
    assert (opts.compile, opts.vae_batch, opts.batch_buckets, opts.cache_dir) == ("default", 2, (1, 4), "/tmp/cc")
    plain = optimize.from_args(parser.parse_args(["--dtype", "fp32"]))
    assert plain == optimize.Optimizations(dtype="fp32")


def test_eager_switches_keep_the_pictures(models_dir):
    from sdlab.runtime.loader import load_pipeline

    torch.set_num_threads(2)
    plain = load_pipeline(models_dir / "tiny-a", device="cpu")
    before = generate_batch(plain, ITEMS, steps=4, width=64, height=64, output="uint8").images
    opts = optimize.Optimizations(channels_last=True, fuse_qkv=True, vae_batch=1)
    tuned = load_pipeline(models_dir / "tiny-a", device="cpu", optimizations=opts)  # the loader's hook
    assert optimize.settings_of(tuned) is opts
    assert "Fused" in type(next(iter(tuned.unet.attn_processors.values()))).__name__
    after = generate_batch(tuned, ITEMS, steps=4, width=64, height=64, output="uint8").images
    for a, b in zip(before, after, strict=False):
        assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 2
    # applying again (other settings) starts from the same modules: still the same pictures
    optimize.apply(tuned, optimize.Optimizations())
    again = generate_batch(tuned, ITEMS, steps=4, width=64, height=64, output="uint8").images
    assert all(np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 2 for a, b in zip(before, again, strict=False))


def test_compile_cache_round_trip_without_compiling(tmp_path):
    optimize.use_cache_dir(tmp_path / "cc")
    assert (tmp_path / "cc").is_dir()
    assert optimize.load_compile_cache(tmp_path / "cc") is False  # nothing saved yet
    saved = optimize.save_compile_cache(tmp_path / "cc")
    assert saved is None or saved.is_file()


@pytest.mark.gpu
def test_fast_settings_compile_and_reuse_the_cache(tmp_path):
    from sdlab.bench.models import build

    pipe = build("tiny", device="cuda", dtype=torch.float16)
    optimize.apply(pipe, optimize.Optimizations.fast(cache_dir=str(tmp_path), batch_buckets=(1,)))
    seconds = optimize.warmup(pipe, batch_sizes=[1], width=64, height=64)
    assert seconds > 0 and optimize.save_compile_cache(tmp_path) is not None


def test_a_saved_cache_is_shipped_next_to_the_model_once_and_only_where_it_may_be_written(tmp_path, caplog):
    saved = tmp_path / "cc" / optimize.MEGA_CACHE_FILE
    saved.parent.mkdir()
    saved.write_bytes(b"compiled artifacts")
    model = tmp_path / "models" / "sd15"
    model.mkdir(parents=True)
    shipped = optimize.ship_compile_cache(saved, model)
    assert shipped == optimize.shipped_cache_file(model) == model / "compile-cache" / f"{optimize.cache_key()}.bin"
    assert shipped.read_bytes() == b"compiled artifacts" and not list(shipped.parent.glob("*.tmp"))
    assert optimize.ship_compile_cache(saved, model) is None  # already there: kept, not rewritten
    assert optimize.ship_compile_cache(None, tmp_path / "other") is None  # nothing was saved
    mounted = tmp_path / "mounted"
    mounted.write_text("a file where the model folder would be: nothing can be written under it")
    assert optimize.ship_compile_cache(saved, mounted) is None
    assert "upload" in caplog.text and optimize.cache_key() in caplog.text
    assert optimize.load_cache_file(tmp_path / "missing.bin") is False


def test_only_shapes_compiled_at_start_run_compiled_others_run_eagerly(models_dir, caplog):
    """A size (or a CFG-less batch) the warm-up did not compile runs the eager UNet instead of compiling mid-service.
    torch.compile with the `eager` backend stands in for inductor: dynamo traces, and counts, every new shape."""
    from torch._dynamo.utils import counters

    from sdlab.runtime.loader import load_pipeline

    torch._dynamo.reset()
    pipe = load_pipeline(models_dir / "tiny-a", device="cpu")
    eager_pictures = generate_batch(pipe, ITEMS[:1], steps=2, width=48, height=48, output="uint8").images
    pipe.unet = torch.compile(pipe.unet, backend="eager", fullgraph=True, dynamic=False)
    split: dict = {}
    optimize.warmup(pipe, batch_sizes=[1], width=64, height=64, split=split)
    assert pipe._sdlab_compiled_shapes == {(2, 4, 8, 8)}  # one image, CFG: two UNet rows
    # where the warm-up went: the first call traced (dynamo's own metrics say so), the second did not
    assert split["batch 1 first call s"] > split["batch 1 second call s"] > 0 and "text graphs s" in split
    assert split["dynamo"]["_compile.compile_inner"] > 0
    graphs = counters["stats"]["unique_graphs"]
    generate_batch(pipe, ITEMS[:1], steps=2, width=64, height=64, output="uint8")  # compiled at start: no new graph
    assert counters["stats"]["unique_graphs"] == graphs
    with caplog.at_level("WARNING", logger="sdlab.runtime.optimize"):
        other = generate_batch(pipe, ITEMS[:1], steps=2, width=48, height=48, output="uint8").images
        generate_batch(pipe, [BatchItem("a red fox", "", 3, 1.0)], steps=2, width=64, height=64, output="uint8")
    assert counters["stats"]["unique_graphs"] == graphs  # neither traced a new graph
    assert (other[0] == eager_pictures[0]).all()
    told = [r.message.split(" was")[0] for r in caplog.records if r.name == "sdlab.runtime.optimize"]
    assert told == ["UNet input (2, 4, 6, 6)", "UNet input (1, 4, 8, 8)"]
