"""Where a runtime start's seconds go on this machine, step by step in one fresh process.

    python -m sdlab.bench.start_probe MODELS_DIR MODEL

It repeats what ``python -m sdlab.runtime`` does before the model load (imports, building the app, importing the
pipeline classes) and then the first use of each GPU library (CUDA context, cuBLAS, cuDNN, SDPA), printing seconds per
step. The runtime's own ``/v1/info`` ``startup`` marks time the same phases coarser; this splits them.
"""

from __future__ import annotations

import sys
import time

STARTED = time.perf_counter()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    last = time.perf_counter()

    def mark(what: str) -> None:
        nonlocal last
        now = time.perf_counter()
        print(f"{what:<40} {now - last:7.2f} s", flush=True)
        last = now

    import torch

    mark("import torch")
    from sdlab.runtime import server

    mark("import sdlab.runtime.server")
    from diffusers.utils import logging as _diffusers_logging  # noqa: F401

    mark("from diffusers.utils import logging")
    from transformers.utils import logging as _transformers_logging  # noqa: F401

    mark("from transformers.utils import logging")
    import uvicorn  # noqa: F401

    mark("import uvicorn")
    from pathlib import Path

    server.create_app(Path(argv[0]), argv[1])
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
    print(f"{'total, from interpreter start of this module':<40} {time.perf_counter() - STARTED:7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
