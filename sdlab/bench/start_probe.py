"""Where a runtime start's seconds go on this machine, step by step in one fresh process.

    python -m sdlab.bench.start_probe MODELS_DIR MODEL [--generate] [--steps N]

It repeats what ``python -m sdlab.runtime`` does before the model load (imports, building the app, importing the
pipeline classes) and then the first use of each GPU library (CUDA context, cuBLAS, cuDNN, SDPA), printing seconds per
step. The runtime's own ``/v1/info`` ``startup`` marks time the same phases coarser; this splits them.

``--generate`` then loads the model as the server does (eager) and splits the first image: the first and second call
of the text encoders, the UNet (at the CFG batch) and the VAE decoder, then a whole image twice. An eager pod's first
image takes seconds longer than its second; this shows which part pays. Both UNet calls are also split by module
class (time spent in each class's own code, its submodules' time taken out), which shows the kind of layer whose first
use pays: attention, on a fresh H200 machine (docs/benchmarks.md). ``--prewarm`` starts the server's kernel pre-load
(sdlab/runtime/prewarm.py) right after ``import torch`` and waits for its end before the first image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdlab.bench.start_probe", description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path, help="folder of models, as the runtime's --models-dir")
    parser.add_argument("model", help="the startup model's title")
    parser.add_argument("--generate", action="store_true", help="then split the first eager image by part")
    parser.add_argument("--steps", type=int, default=25, help="steps of the whole images")
    parser.add_argument("--prewarm", action="store_true",
                        help="pre-load the model's GPU kernels in a side thread during the imports, as the server does")
    args = parser.parse_args(argv)
    last = time.perf_counter()

    def mark(what: str) -> None:
        nonlocal last
        now = time.perf_counter()
        print(f"{what:<40} {now - last:7.2f} s", flush=True)
        last = now

    import torch

    mark("import torch")
    prewarming = None
    if args.prewarm:
        import logging

        from sdlab.runtime import prewarm
        from sdlab.runtime.loader import resolve_dtype

        logging.basicConfig(level=logging.INFO, format="    (%(threadName)s) %(message)s")
        prewarming = prewarm.start(args.models_dir / args.model, device="cuda", dtype=resolve_dtype(None, "cuda"))
    from sdlab.runtime import server

    mark("import sdlab.runtime.server")
    from diffusers.utils import logging as _diffusers_logging  # noqa: F401

    mark("from diffusers.utils import logging")
    from transformers.utils import logging as _transformers_logging  # noqa: F401

    mark("from transformers.utils import logging")
    import uvicorn  # noqa: F401

    mark("import uvicorn")
    app = server.create_app(args.models_dir, args.model)
    mark("create_app")
    from sdlab.runtime.loader import import_pipelines

    import_pipelines()
    mark("import the pipeline classes")
    if torch.cuda.is_available():
        half = torch.float16
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        mark("CUDA context")
        a = torch.randn(1024, 1024, device="cuda", dtype=half)
        (a @ a).sum().item()
        mark("first fp16 matmul (cuBLAS)")
        conv = torch.nn.Conv2d(4, 320, 3, padding=1).cuda().half()
        conv(torch.randn(2, 4, 64, 64, device="cuda", dtype=half)).sum().item()
        mark("first fp16 convolution (cuDNN)")
        conv = torch.nn.Conv2d(320, 640, 3, padding=1).cuda().half()
        conv(torch.randn(2, 320, 32, 32, device="cuda", dtype=half)).sum().item()
        mark("a second convolution shape")
        q = torch.randn(2, 8, 4096, 40, device="cuda", dtype=half)
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().item()
        mark("first SDPA")
    if prewarming is not None:
        prewarming.join()
        mark("the pre-load's end awaited")
    if args.generate:
        _first_image(app.state.runtime.registry.get(args.model), args.steps, mark)
    print(f"{'total, from interpreter start of this module':<40} {time.perf_counter() - STARTED:7.2f} s")
    return 0


def _first_image(pipe, steps: int, mark) -> None:
    """The first and second call of each part of an eager txt2img, then a whole image twice (the loader's dtype)."""
    import torch

    from sdlab.bench.runtime import unet_inputs
    from sdlab.runtime.batch import BatchItem, generate_batch
    from sdlab.runtime.text import TextCache, encode_texts

    cuda = pipe.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    mark("load the model (eager)")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    with torch.inference_mode():
        for call in ("first", "second"):
            encode_texts(pipe, [f"a red fox, {call} call", ""])
            sync()
            mark(f"{call} text encoding")
        x, t, ehs, added = unet_inputs(pipe, 2, size)
        for call in ("first", "second"):
            with ModuleSplit(pipe.unet, sync) as split:
                pipe.unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs=added, return_dict=False)
                sync()
            mark(f"{call} UNet call ({size}², CFG batch 2)")
            split.report()
        z = torch.randn(1, pipe.vae.config.latent_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor,
                        device=pipe.device, dtype=pipe.vae.dtype)
        for call in ("first", "second"):
            pipe.vae.decode(z, return_dict=False)
            sync()
            mark(f"{call} VAE decode")
    TextCache.of(pipe).clear()
    for call in ("first", "second"):
        generate_batch(pipe, [BatchItem(f"a lighthouse at dusk, {call}", seed=1)], steps=steps, width=size, height=size,
                       output="uint8")
        sync()
        mark(f"{call} whole image ({steps} steps)")


class ModuleSplit:
    """Seconds of one forward pass by module class, each module's own time (its submodules' time taken out), with
    the device synchronised at every module boundary so that the time lands where it was spent."""

    def __init__(self, root, sync) -> None:
        self.root, self.sync = root, sync
        self.stack: list[list[float]] = []  # [start, children's seconds] per open module
        self.own: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.handles: list = []

    def __enter__(self) -> ModuleSplit:
        for module in self.root.modules():
            self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def _pre(self, module, args) -> None:
        self.sync()
        self.stack.append([time.perf_counter(), 0.0])

    def _post(self, module, args, output) -> None:
        self.sync()
        start, children = self.stack.pop()
        spent = time.perf_counter() - start
        name = type(module).__name__
        self.own[name] = self.own.get(name, 0.0) + spent - children
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.stack:
            self.stack[-1][1] += spent

    def report(self, top: int = 8) -> None:
        for name, seconds in sorted(self.own.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {name:<28} {self.calls[name]:4d} calls {seconds:7.3f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
