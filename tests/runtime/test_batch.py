"""Batching: same seed ⇒ same image batched or alone; per-image prompts and guidance; the queue's grouping."""

from __future__ import annotations

import base64
import copy
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.runtime.batch import BatchItem, BatchKey, BatchOutput, BatchQueue, bucket_size, generate_batch

STEPS, W, H = 5, 64, 96
MIXED = [
    BatchItem("a red fox in the snow", "", 11, 7.5),
    BatchItem("a lighthouse at dusk", "blurry, dark", 12, 3.0),
    BatchItem("a castle on a hill", "", 13, 1.0),  # cfg ≤ 1: no guidance, as diffusers does it alone
]


@pytest.fixture(scope="module")
def pipe(models_dir):
    from sdlab.runtime.loader import load_pipeline

    torch.set_num_threads(2)
    return load_pipeline(models_dir / "tiny-a", device="cpu")


def _alone(pipe, item: BatchItem, scheduler=None) -> np.ndarray:
    from sdlab.runtime.loader import with_scheduler

    p = with_scheduler(pipe, scheduler) if scheduler is not None else pipe
    image = p(prompt=[item.prompt], negative_prompt=[item.negative_prompt], num_inference_steps=STEPS,
              guidance_scale=item.cfg_scale, width=W, height=H, generator=[torch.Generator().manual_seed(item.seed)]).images[0]
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M Karras"])
def test_generate_batch_same_seed_same_image_as_one_by_one(pipe, sampler):
    from sdlab.runtime import samplers

    def sched():
        return samplers.sampler_for(sampler, pipe.scheduler.config)

    out = generate_batch(pipe, MIXED, steps=STEPS, width=W, height=H, scheduler=sched(), output="uint8")
    assert len(out.images) == 3 and not out.interrupted
    for item, got in zip(MIXED, out.images, strict=False):
        assert got.shape == (H, W, 3) and got.dtype == np.uint8
        diff = np.abs(_alone(pipe, item, sched()) - got.astype(np.int16))
        # fp32 on CPU: batched kernels round differently by at most a level or so
        assert diff.max() <= 2 and diff.mean() < 0.05, (item, diff.max(), diff.mean())
    # heterogeneous prompts, negatives and guidance really give different pictures
    assert len({img.tobytes() for img in out.images}) == 3


def _without_last_layers(pipe, k: int):
    """The same pipeline with the text encoder's last ``k`` layers removed: what CLIP skip ``k`` means (A1111's
    "stop at last layers" k + 1), as an independent reference for the clip-skipped embeddings."""
    short = copy.deepcopy(pipe.text_encoder)
    encoder = getattr(short, "text_model", short).encoder
    encoder.layers = encoder.layers[:-k]
    return type(pipe)(**{**pipe.components, "text_encoder": short})


def test_text_embeddings_are_encoded_once_per_text_and_equal_diffusers(pipe):
    from sdlab.runtime.text import TextCache, encode_prompts

    calls = [  # (prompts, negatives, clip_skip)
        (["a red fox", "a blue fox", "a red fox"], ["", "blurry", ""], None),
        (["a red fox", "a blue fox"], ["", "blurry"], 1),  # prompts take CLIP skip; diffusers' negatives ignore it
        (["a green fox"], [""], None),
    ]
    want = []
    for prompts, negatives, skip in calls:
        cond, _ = (_without_last_layers(pipe, skip) if skip else pipe).encode_prompt(prompts, pipe.device, 1, False)
        _, uncond = pipe.encode_prompt(prompts, pipe.device, 1, True, negatives)
        want.append((cond, uncond))
    cache = TextCache.of(pipe)
    cache.clear()
    batches: list[int] = []

    def count(module, args, kwargs, output):
        batches.append(int((args[0] if args else kwargs["input_ids"]).shape[0]))

    hook = pipe.text_encoder.register_forward_hook(count, with_kwargs=True)
    try:
        got = [encode_prompts(pipe, p, q, True, skip, pipe.device) for p, q, skip in calls]
    finally:
        hook.remove()
    for (cond, uncond, pooled, uncond_pooled), (cond_want, uncond_want) in zip(got, want, strict=True):
        assert pooled is None and uncond_pooled is None
        torch.testing.assert_close(cond, cond_want, rtol=0, atol=1e-5)
        torch.testing.assert_close(uncond, uncond_want, rtol=0, atol=1e-5)
    assert not torch.allclose(got[0][0][:2], got[1][0])  # CLIP skip changed the prompts' embeddings
    # the four distinct texts in one call; then only the prompts under CLIP skip 1; then only the new prompt
    assert batches == [4, 2, 1]
    assert TextCache.of(pipe) is cache and len(cache) == 7


def test_generate_batch_is_deterministic_and_order_independent(pipe):
    first = generate_batch(pipe, MIXED, steps=STEPS, width=W, height=H, output="uint8").images
    reordered = generate_batch(pipe, MIXED[::-1], steps=STEPS, width=W, height=H, output="uint8").images[::-1]
    again = generate_batch(pipe, MIXED, steps=STEPS, width=W, height=H, output="uint8").images
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=False))
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 2 for a, b in zip(first, reordered, strict=False))


def test_generate_batch_stops_when_asked_and_returns_partial_images(pipe):
    steps_seen = []
    out = generate_batch(pipe, MIXED[:2], steps=50, width=W, height=H, output="pil",
                         should_stop=lambda: len(steps_seen) >= 2, on_step=lambda done, total: steps_seen.append((done, total)))
    assert out.interrupted and steps_seen == [(1, 50), (2, 50)]
    assert len(out.images) == 2 and out.images[0].size == (W, H)


def test_generate_batch_sdxl_matches_the_sdxl_pipeline():
    from sdlab.bench.models import build

    xl = build("tiny-xl", device="cpu", dtype=torch.float32)
    items = MIXED[:2]
    out = generate_batch(xl, items, steps=4, width=64, height=64, output="uint8")
    for item, got in zip(items, out.images, strict=False):
        gen = [torch.Generator().manual_seed(item.seed)]
        ref = xl(prompt=[item.prompt], negative_prompt=[item.negative_prompt], num_inference_steps=4,
                 guidance_scale=item.cfg_scale, width=64, height=64, generator=gen).images[0]
        assert np.abs(np.asarray(ref, dtype=np.int16) - got).max() <= 2


def test_sdxl_text_embeddings_equal_diffusers_with_and_without_clip_skip():
    from sdlab.bench.models import build
    from sdlab.runtime.text import encode_prompts

    xl = build("tiny-xl", device="cpu", dtype=torch.float32)
    prompts, negatives = ["a red fox", "a lighthouse at dusk"], ["", "blurry"]
    for skip in (None, 1):
        got = encode_prompts(xl, prompts, negatives, True, skip, xl.device)
        want = xl.encode_prompt(prompt=prompts, device=xl.device, num_images_per_prompt=1,
                                do_classifier_free_guidance=True, negative_prompt=negatives, clip_skip=skip)
        # diffusers returns (cond, uncond, pooled, uncond_pooled), as encode_prompts does
        for ours, theirs in zip(got, want, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_generate_batch_rejects_bad_input(pipe):
    from sdlab.errors import ValidationError

    with pytest.raises(ValidationError, match="at least one"):
        generate_batch(pipe, [], steps=2, width=W, height=H)
    with pytest.raises(ValidationError, match="multiples of 8"):
        generate_batch(pipe, MIXED, steps=2, width=65, height=H)


def test_bucket_size():
    assert [bucket_size(n, (1, 2, 4, 8, 16)) for n in (1, 2, 3, 5, 8, 9, 17)] == [1, 2, 4, 8, 8, 16, 17]


# -- the queue ---------------------------------------------------------------------------------------


class _Recorder:
    """A runner that records each batch's key and item count, and answers one fake image per item."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[tuple[BatchKey, int]] = []
        self.seconds = seconds

    def __call__(self, key, jobs):
        items = [it for job in jobs for it in job.items]
        self.batches.append((key, len(items)))
        time.sleep(self.seconds)
        return BatchOutput([it.seed for it in items])


def test_queue_merges_compatible_jobs_and_splits_incompatible_ones():
    runner = _Recorder()
    a, b = BatchKey(model="m", steps=20), BatchKey(model="m", steps=30)  # different steps: not compatible
    queue = BatchQueue(runner, max_batch=lambda key: 8, max_wait_ms=300)
    futures = [queue.submit(a, [BatchItem("x", seed=1)]), queue.submit(b, [BatchItem("y", seed=2)]),
               queue.submit(a, [BatchItem("z", seed=3), BatchItem("z", seed=4)])]
    results = [f.result(timeout=10) for f in futures]
    assert [r.images for r in results] == [[1], [2], [3, 4]]  # each job gets exactly its own images
    assert sorted((k.steps, n) for k, n in runner.batches) == [(20, 3), (30, 1)]
    queue.close()


def test_queue_respects_max_batch_and_splits_large_jobs():
    runner = _Recorder()
    key = BatchKey(model="m")
    queue = BatchQueue(runner, max_batch=lambda k: 3, max_wait_ms=200)
    big = queue.submit(key, [BatchItem("p", seed=i) for i in range(7)])
    assert big.result(timeout=10).images == list(range(7))
    assert all(n <= 3 for _, n in runner.batches) and sum(n for _, n in runner.batches) == 7
    queue.close()


def test_queue_does_not_wait_once_the_batch_is_full():
    runner = _Recorder()
    queue = BatchQueue(runner, max_batch=lambda k: 2, max_wait_ms=5000)
    started = time.monotonic()
    futures = [queue.submit(BatchKey(model="m"), [BatchItem("p", seed=i)]) for i in range(2)]
    assert [f.result(timeout=10).images for f in futures] == [[0], [1]]
    assert time.monotonic() - started < 2  # full at 2: no 5 s wait
    queue.close()


def test_queue_failure_reaches_every_job_of_the_batch():
    def boom(key, jobs):
        raise RuntimeError("out of memory")

    queue = BatchQueue(boom, max_batch=lambda k: 4, max_wait_ms=100)
    futures = [queue.submit(BatchKey(model="m"), [BatchItem("p")]) for _ in range(2)]
    for f in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            f.result(timeout=10)
    assert queue.call(lambda: 42).result(timeout=10) == 42  # the worker survives
    queue.close()


# -- through the server (a real process) ------------------------------------------------------------


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.int16)


@pytest.mark.integration
def test_native_generate_heterogeneous_tasks_with_per_task_errors(server):
    tasks = [
        {"id": "fox", "prompt": "a red fox", "seed": 5, "steps": 6, "width": 64, "height": 64, "cfg_scale": 7},
        {"id": "sea", "prompt": "the sea", "negative_prompt": "boats", "seed": 6, "steps": 6, "width": 64, "height": 64,
         "cfg_scale": 2.5, "batch_size": 2},
        {"id": "big", "prompt": "a tower", "seed": 7, "steps": 4, "width": 96, "height": 64},  # another size: own batch
        {"id": "bad", "prompt": "x", "sampler_name": "Warp Drive"},
        {"id": "odd", "prompt": "x", "width": 65},
    ]
    reply = server.post("/v1/generate", json=tasks)
    assert reply.status_code == 200, reply.text
    results = {r["id"]: r for r in reply.json()["results"]}
    assert [r["id"] for r in reply.json()["results"]] == ["fox", "sea", "big", "bad", "odd"]
    assert results["fox"]["status"] == "ok" and len(results["fox"]["images"]) == 1
    assert len(results["sea"]["images"]) == 2 and results["sea"]["info"]["all_seeds"] == [6, 7]
    assert _pixels(results["big"]["images"][0]).shape == (64, 96, 3)
    assert results["bad"]["status"] == "error" and results["bad"]["error"]["status"] == 422
    assert "Warp Drive" in json.dumps(results["bad"]["error"])
    assert results["odd"]["error"]["status"] == 422
    # same seed, same image: the batched task equals the same task through the A1111 route alone
    alone = server.post("/sdapi/v1/txt2img", json={k: v for k, v in tasks[0].items() if k != "id"}).json()
    diff = np.abs(_pixels(alone["images"][0]) - _pixels(results["fox"]["images"][0]))
    assert diff.max() <= 2 and diff.mean() < 0.05


@pytest.mark.integration
def test_concurrent_a1111_requests_share_batches(server):
    before = server.get("/v1/info").json()
    body = {"prompt": "a red fox", "steps": 12, "width": 64, "height": 64}
    replies = []

    def call(seed):
        replies.append(server.post("/sdapi/v1/txt2img", json={**body, "seed": seed}))

    threads = [threading.Thread(target=call, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [r.status_code for r in replies] == [200] * 4
    after = server.get("/v1/info").json()
    # 4 requests arriving together need fewer than 4 batches (the CPU default max batch is 4)
    assert after["batches"] - before["batches"] < 4
    assert {json.loads(r.json()["info"])["seed"] for r in replies} == {0, 1, 2, 3}


@pytest.mark.integration
def test_native_generate_rejects_what_is_not_a_task_list(server):
    assert server.post("/v1/generate", json={"prompt": "x"}).status_code == 422
    assert server.post("/v1/generate", json=[]).status_code == 422
    reply = server.post("/v1/generate", json={"tasks": [{"id": "i2i", "prompt": "x", "init_images": ["abc"]}]})
    assert reply.json()["results"][0]["error"]["status"] == 422


@pytest.mark.gpu
def test_compiled_batch_equals_one_by_one_on_gpu():
    """bf16 + channels_last + fused QKV + compile with CUDA graphs: a batched image equals the same task alone."""
    from sdlab.bench.models import build
    from sdlab.runtime import optimize

    pipe = build("tiny", device="cuda", dtype=torch.float16)
    optimize.apply(pipe, optimize.Optimizations.fast(batch_buckets=(1, 4)))
    alone = generate_batch(pipe, MIXED[:1], steps=STEPS, width=W, height=H, output="uint8").images[0]
    batched = generate_batch(pipe, MIXED, steps=STEPS, width=W, height=H, output="uint8")
    assert batched.padded_to == 4
    diff = np.abs(alone.astype(np.int16) - batched.images[0].astype(np.int16))
    assert diff.mean() < 1.0  # bf16: batched kernels may round differently


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["tiny", "tiny-xl"])
def test_text_encoders_as_cuda_graphs_equal_eager_on_gpu(model):
    """The graphed encoders give the eager embeddings: one text (padded to a graph of 1), three (padded to 4), and more
    texts than the largest graph (split), with and without CLIP skip."""
    from sdlab.bench.models import build
    from sdlab.runtime import optimize
    from sdlab.runtime.text import TextCache, encode_texts

    pipe = build(model, device="cuda", dtype=torch.float16)
    texts = [f"a fox number {i}" for i in range(11)]
    optimize.apply(pipe, optimize.Optimizations(dtype="fp16"))
    assert pipe._sdlab_text_graphs is None
    eager = {(n, skip): encode_texts(pipe, texts[:n], skip) for n in (1, 3, 11) for skip in (None, 1)}
    optimize.apply(pipe, optimize.Optimizations(dtype="fp16", text_graphs=True, batch_buckets=(1, 4)))
    graphs = pipe._sdlab_text_graphs
    assert graphs is not None and graphs.max_rows == 8 and len(TextCache.of(pipe)) == 0
    for (n, skip), (embeds, pooled) in eager.items():
        TextCache.of(pipe).clear()
        got, got_pooled = encode_texts(pipe, texts[:n], skip)
        torch.testing.assert_close(got, embeds, rtol=0, atol=2e-3)
        if pooled is not None:
            torch.testing.assert_close(got_pooled, pooled, rtol=0, atol=2e-3)
    assert not graphs._eager and {rows for _, rows in graphs._graphs} == {1, 4, 8}
    out = generate_batch(pipe, MIXED, steps=STEPS, width=W, height=H, output="uint8")
    assert len(out.images) == 3
