"""``sdlab bench ...``: registered on the main parser by :func:`register`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _cmd_runtime(args: argparse.Namespace) -> int:
    import torch

    from sdlab.bench import runtime

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    models_ = args.models.split(",") if args.models else (["sd15", "sdxl"] if gpu else ["tiny"])
    batches = _ints(args.batch_sizes) if args.batch_sizes else ((1, 4, 8, 16) if gpu else (1, 2))
    compiled = _ints(args.compiled_batch_sizes) if args.compiled_batch_sizes else ((1, 8, 16) if gpu else batches)
    repeats = args.repeats or (5 if gpu else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    extra: list[tuple[str, tuple[int, ...]]] = []
    for spec in filter(None, (args.extra or "").split(",")):
        name, _, sizes = spec.partition("@")
        if name not in runtime.EXTRA_VARIANTS:
            raise SystemExit(f"unknown --extra {name!r}; use {', '.join(runtime.EXTRA_VARIANTS)}")
        extra.append((name, _ints(sizes.replace("/", ",")) if sizes else (8,)))
    result = runtime.run(models_=models_, device=device, batches=batches, compiled_batches=compiled, repeats=repeats,
                         ablation=args.ablation, steps=args.steps, size=args.size, cache_dir=args.compile_cache_dir,
                         extra=tuple(extra), dtype=args.dtype)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


def _cmd_attention(args: argparse.Namespace) -> int:
    from sdlab.bench import attention

    images = {"sd15": args.sd15_images, "sdxl": args.sdxl_images}
    result: dict = {"kernels": attention.kernels(images)}
    for row in result["kernels"]:
        print(json.dumps(row), flush=True)
    result["unet_ms"] = [attention.unet(m, images[m]) for m in args.unet_models.split(",") if m]
    for row in result["unet_ms"]:
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def _cmd_coldstart(args: argparse.Namespace) -> int:
    from sdlab.bench import serving

    rows = serving.cold_starts(Path(args.models_dir), args.model, compiled=args.compiled, batch=args.batch,
                               eager_starts=args.eager_starts, extra=args.runtime_args or [], timeout=args.timeout,
                               steps=args.steps, size=args.size)
    for row in rows:
        print(json.dumps(row), flush=True)
    print(serving.starts_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0 if all(row.get("ready_s") is not None for row in rows) else 1


def _cmd_http(args: argparse.Namespace) -> int:
    from sdlab.bench import serving

    result = serving.http_burst(args.url, tasks=args.tasks, per_request=args.per_request, concurrency=args.concurrency,
                                steps=args.steps, size=args.size)
    print(json.dumps(result))
    return 0 if result["failed"] == 0 else 1


def _cmd_e2e(args: argparse.Namespace) -> int:
    from sdlab.bench import e2e
    from sdlab.config import load_config

    settings = load_config(args.config)
    runtime = args.runtime or next((r.name for r in settings.runtimes if r.type == "diffusers"), settings.runtimes[0].name)
    settings = settings.model_copy(update={"runtimes": (settings.runtime(runtime),)})  # the measured runtime alone
    home = Path(args.home).resolve()
    result = e2e.run(settings, runtime, tasks=args.tasks, steps=args.steps, size=args.size, home=home,
                     reference_img_s=args.reference, submitters=args.submitters)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0 if result["completed"] == args.tasks else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench runtime``, ``coldstart``, ``http`` and ``e2e`` to the ``sdlab`` command."""
    bench = sub.add_parser("bench", help="measure the runtime (GPU or a CPU smoke run)")
    bench = bench.add_subparsers(dest="action", required=True)

    r = bench.add_parser("runtime", help="the project runtime beside plain diffusers: img/s, latency, memory, utilisation")
    r.add_argument("--models", default=None, help="sd15,sdxl (GPU default) or tiny,tiny-xl (CPU default: tiny)")
    r.add_argument("--batch-sizes", default=None, help="e.g. 1,4,8,16 (GPU default), 1,2 (CPU)")
    r.add_argument("--compiled-batch-sizes", default=None, help="batch sizes of the compiled runtime (GPU default 1,8,16)")
    r.add_argument("--repeats", type=int, default=None, help="timed calls per point after warm-up")
    r.add_argument("--steps", type=int, default=None, help="override the model's default (25 SD1.5, 30 SDXL)")
    r.add_argument("--size", type=int, default=None, help="override the model's default side (512, 1024)")
    r.add_argument("--ablation", action="store_true", help="also measure each optimisation step on its own (GPU)")
    r.add_argument("--extra", default=None,
                   help="more variants after the full set, NAME@BATCHES: e.g. dcompiled@1/16 (diffusers + torch.compile), "
                        "cudnn@16, flash@16, nographs@1, tuned@16, vae4@8/16")
    r.add_argument("--compile-cache-dir", default=None, help="compile caches here; the mega-cache is saved at the end")
    r.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"],
                   help="precision of every variant on the GPU, plain diffusers included (equal-precision images)")
    r.add_argument("--device", default=None)
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--json", default=None, help="write every figure here")
    r.set_defaults(fn=_cmd_runtime)

    a = bench.add_parser("attention", help="each SDPA backend at SD1.5/SDXL attention shapes and in an eager UNet (GPU)")
    a.add_argument("--sd15-images", type=int, default=16)
    a.add_argument("--sdxl-images", type=int, default=1)
    a.add_argument("--unet-models", default="sd15,sdxl")
    a.add_argument("--json", default=None)
    a.set_defaults(fn=_cmd_attention)

    c = bench.add_parser("coldstart", help="seconds from `python -m sdlab.runtime` to a healthy server and a first image")
    c.add_argument("--models-dir", required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--timeout", type=float, default=600.0)
    c.add_argument("--compiled", action="store_true",
                   help="also a compiled start from cold (it ships its cache next to the model) and a new pod on that cache")
    c.add_argument("--batch", type=int, default=16, help="the compiled starts' batch (max batch and only bucket)")
    c.add_argument("--eager-starts", type=int, default=1, help="eager starts one after the other")
    c.add_argument("--steps", type=int, default=25, help="steps of the first and second image")
    c.add_argument("--size", type=int, default=None, help="side of those images (default: the runtime's, 512)")
    c.add_argument("--json", default=None, help="write every start here")
    c.add_argument("runtime_args", nargs=argparse.REMAINDER, help="-- then extra runtime flags, e.g. -- --opt fast")
    c.set_defaults(fn=_cmd_coldstart)

    h = bench.add_parser("http", help="a burst of txt2img tasks through POST /v1/generate of a running runtime")
    h.add_argument("--url", required=True)
    h.add_argument("--tasks", type=int, default=200)
    h.add_argument("--per-request", type=int, default=4, help="tasks per /v1/generate call")
    h.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    h.add_argument("--steps", type=int, default=25)
    h.add_argument("--size", type=int, default=512)
    h.set_defaults(fn=_cmd_http)

    e = bench.add_parser("e2e", help="a backlog through the whole local stack (API → SNS → SQS → agent → runtime → S3)")
    e.add_argument("--config", default=None, help="sdlab.yaml to take the runtime from (default: ./sdlab.yaml)")
    e.add_argument("--runtime", default=None, help="which runtime (default: the first of type diffusers)")
    e.add_argument("--tasks", type=int, default=200)
    e.add_argument("--steps", type=int, default=25)
    e.add_argument("--size", type=int, default=512)
    e.add_argument("--reference", type=float, default=None, help="in-process img/s to compare with (sdlab bench runtime)")
    e.add_argument("--submitters", type=int, default=8, help="clients submitting the backlog at once")
    e.add_argument("--home", default=".sdlab-bench", help="state folder of the benchmark's stack")
    e.add_argument("--json", default=None, help="write the figures here too")
    e.set_defaults(fn=_cmd_e2e)
