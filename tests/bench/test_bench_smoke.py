"""`sdlab bench runtime` on CPU: the tiny smoke configuration runs and prints figures that parse (not timed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^(tiny)\s+(\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$")


def test_bench_runtime_smoke_prints_both_implementations(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sdlab", "bench", "runtime", "--threads", "2", "--repeats", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [m.groups() for line in proc.stdout.splitlines() if (m := ROW.match(line.strip()))]
    impls = {r[1] for r in rows}
    assert impls == {"diffusers", "runtime"}, proc.stdout
    for _, _, batch, img_s, p50, p95, _peak, util, _compile in rows:
        assert int(batch) in (1, 2) and float(img_s) > 0 and 0 < float(p50) <= float(p95)
        assert 0 < float(util) <= 100
    assert re.search(r"^# matmul ceiling [\d.]+ TFLOP/s", proc.stdout, re.M)
    assert re.search(r"^# tiny runtime: best [\d.]+ img/s at batch \d", proc.stdout, re.M)
    data = json.loads(out.read_text())
    assert data["env"]["card"] == "cpu" and data["models"]["tiny"]["notes"]["tflop_per_image"] > 0
    assert len(data["models"]["tiny"]["rows"]) == len(rows) == 4


def test_a_compile_cache_folder_keeps_each_variant_on_its_own_path():
    """With --compile-cache-dir the variants are rebuilt; diffusers + torch.compile must still run diffusers' own
    __call__ (a rebuild that dropped `via` once measured the project's loop under that label)."""
    from sdlab.bench.runtime import EXTRA_VARIANTS, Variant, with_cache_dir

    plain, compiled = Variant("diffusers", None, (1,)), EXTRA_VARIANTS["dcompiled"]((1, 16))
    kept = with_cache_dir([plain, compiled], "/cache")
    assert kept[0] == plain
    assert (kept[1].label, kept[1].via, kept[1].batches) == ("diffusers-compiled", "diffusers", (1, 16))
    assert kept[1].opts is not None and kept[1].opts.cache_dir == "/cache" and kept[1].opts.compile == "reduce-overhead"


@pytest.mark.integration
def test_bench_coldstart_times_each_phase_of_a_fresh_runtime(tmp_path):
    """`sdlab bench coldstart` starts the runtime as a pod would and splits the start with the runtime's own marks."""
    import torch

    from sdlab.bench.models import save

    save("tiny", tmp_path / "models" / "tiny-a", dtype=torch.float32)
    out = tmp_path / "starts.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sdlab", "bench", "coldstart", "--models-dir", str(tmp_path / "models"), "--model",
           "tiny-a", "--steps", "2", "--size", "64", "--timeout", "120", "--json", str(out), "--", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["start"] == "--threads 1" and row["status"] == 200 and row["first_image_s"] > 0
    marks = row["startup"]
    assert 0 < marks["main_s"] <= marks["server_s"] <= marks["before_load_s"] <= marks["ready_s"] and marks["load_s"] > 0
    assert marks["imports_s"] > 0 and "cuda_init_s" not in marks and "warmup_s" not in marks  # CPU, nothing compiled
    header, rule, line = ([c.strip() for c in row.strip().strip("|").split("|")] for row in proc.stdout.splitlines()[-3:])
    assert header[:7] == ["start", "ready", "before load", "of which imports", "of which CUDA init", "load", "warm-up"]
    assert all(set(c) <= set("-:") for c in rule) and line[0] == "--threads 1" and "—" in line  # no warm-up on CPU


@pytest.mark.integration
def test_bench_e2e_runs_a_backlog_through_the_whole_stack(tmp_path):
    """`sdlab bench e2e` as the GPU machine runs it (a config with batch settings), at toy size on CPU."""
    config = tmp_path / "e2e.yaml"
    config.write_text(
        "version: 1\nstack: {name: benchsmoke}\nruntimes:\n"
        "  - name: sd\n    type: diffusers\n    model: {name: shapes, source: bundled}\n"
        "    batch: {max_batch: 2, max_wait_ms: 30, buckets: [2]}\n"
    )
    out = tmp_path / "e2e.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sdlab", "bench", "e2e", "--config", str(config), "--tasks", "4", "--steps", "2",
           "--size", "64", "--reference", "10", "--submitters", "3", "--home", str(tmp_path / "home"), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert (result["runtime"], result["tasks"], result["completed"], result["images"]) == ("sd", 4, 4, 4)
    assert result["submitters"] == 3 and result["submit_seconds"] > 0
    assert result["max_batch"] == 2 and 1 <= result["batches"] <= 4  # the config's batch reached the runtime
    assert 0 < result["runtime_busy_fraction"] <= 1 and result["end_to_end_img_per_s"] > 0
    assert result["fraction_of_in_process"] == round(result["end_to_end_img_per_s"] / 10, 4)
    assert result["queue_wait_s"]["p50"] <= result["queue_wait_s"]["p95"] and result["run_s"]["max"] > 0


def test_start_probe_splits_the_start_of_a_real_model():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "sdlab.bench.start_probe", str(ROOT / "sdlab" / "shapes"), "model", "--generate",
           "--steps", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    steps = dict(re.findall(r"^(.+?)\s+([\d.]+) s$", proc.stdout, re.M))
    assert {"import torch", "from diffusers.utils import logging", "create_app", "import the pipeline classes"} <= set(steps)
    assert {"first UNet call (128², CFG batch 2)", "second VAE decode", "first whole image (2 steps)"} <= set(steps)
    assert all(float(v) >= 0 for v in steps.values())
    bad = subprocess.run([sys.executable, "-m", "sdlab.bench.start_probe"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "models_dir" in bad.stderr  # argparse names what is missing
