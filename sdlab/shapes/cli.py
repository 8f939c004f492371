"""`sdlab model train`, `sdlab model eval` and `sdlab model bench`: the captioned-shapes model's recipe and checks."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _cmd_train(args: argparse.Namespace) -> int:
    from sdlab.shapes.train import TrainConfig, train

    cfg = TrainConfig.from_json(Path(args.config).read_text()) if args.config else TrainConfig()
    overrides = {k: v for k, v in {"seed": args.seed, "steps": args.steps, "vae_steps": args.vae_steps,
                                   "batch": args.batch}.items() if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    print(f"training in {args.out} with {json.dumps(dataclasses.asdict(cfg))}", flush=True)
    model = train(Path(args.out), cfg, device=args.device, time_budget_s=args.time_budget,
                  export_to=Path(args.export_to) if args.export_to else None, export_partial=args.export_partial,
                  init_from=Path(args.init_from) if args.init_from else None)
    if model is None:
        print(f"stopped at the time budget; run the same command again to resume from {Path(args.out) / 'checkpoint'}")
        return 0
    print(f"model written to {model}")
    return 0


def _model_dir(arg: str | None) -> Path:
    from sdlab.shapes import bundled_model_dir

    return Path(arg) if arg else bundled_model_dir()


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from sdlab.shapes.evaluate import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    model = _model_dir(args.model)
    ev = evaluate(model, n=args.n, size=args.size, steps=args.steps, guidance=args.guidance, seed=args.seed,
                  batch=args.batch, device=args.device)
    print(f"model {model}: {args.n} held-out captions, {args.size}x{args.size}, {args.steps} steps, cfg {args.guidance}")
    print(ev.report())
    if args.sheet:
        ev.sheet().save(args.sheet)
        print(f"first images: {args.sheet}")
    return 0 if ev.passed() else 1


def _cmd_sheet(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from sdlab.runtime.loader import load_pipeline
    from sdlab.shapes import example_prompts
    from sdlab.shapes.judge import judge_prompt
    from sdlab.workshop.gallery import contact_sheet

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = args.prompt or example_prompts()
    pipe = load_pipeline(_model_dir(args.model), device=args.device)
    out = pipe(prompt=prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, width=args.size,
               height=args.size, generator=[torch.Generator("cpu").manual_seed(args.seed + i) for i in range(len(prompts))])
    agree = 0
    for prompt, image in zip(prompts, out.images, strict=True):
        reading, matches = judge_prompt(np.asarray(image), prompt)
        agree += bool(matches)
        print(f"{'yes' if matches else 'no ':<4} {prompt}  →  judge reads: {reading.caption()}")
    contact_sheet(out.images, prompts, tile_px=args.tile, columns=args.columns).save(args.out)
    print(f"{agree} of {len(prompts)} pictures show what their prompt asked; sheet: {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from sdlab.runtime.bench_cpu import smoke_bench

    torch.set_num_threads(args.threads)
    result = smoke_bench(_model_dir(args.model), width=args.size, height=args.size, steps=args.steps,
                         repeats=args.repeats, device="cpu", prompt="two small red circles on a blue background")
    print(f"fastest run {result['min_s']:.3f} s per image (the least disturbed by other work on the machine)")
    return 0


def register(models: Any) -> None:
    """Add train/eval/bench to the `sdlab model` subcommands."""
    t = models.add_parser("train", help="train the captioned-shapes model (CPU or GPU; resumes from --out)")
    t.add_argument("--out", default="outputs/shapes-train", help="run folder: checkpoint/ inside, resumed when present")
    t.add_argument("--config", default=None, help="JSON file of TrainConfig settings")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--steps", type=int, default=None, help="diffusion (UNet + text encoder) steps")
    t.add_argument("--vae-steps", type=int, default=None, help="autoencoder steps")
    t.add_argument("--batch", type=int, default=None, help="diffusion batch size")
    t.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    t.add_argument("--time-budget", type=float, default=None, help="stop (checkpointed) after this many seconds")
    t.add_argument("--export-partial", action="store_true",
                   help="at the time budget, export the diffusion steps done so far (recorded as the step count)")
    t.add_argument("--export-to", default=None, help="model folder to write (default OUT/model)")
    t.add_argument("--init-from", default=None,
                   help="a fresh run starts from this exported model (autoencoder kept, UNet + text encoder trained on)")
    t.set_defaults(fn=_cmd_train)

    e = models.add_parser("eval", help="generate held-out captions and score them with the pixel judge")
    e.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    e.add_argument("--n", type=int, default=200)
    e.add_argument("--size", type=int, default=128)
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--guidance", type=float, default=7.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch", type=int, default=25)
    e.add_argument("--device", default=None)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--sheet", default=None, help="write the first 32 images as one PNG here")
    e.set_defaults(fn=_cmd_eval)

    sh = models.add_parser("sheet", help="one picture per prompt, captioned, in one PNG, with what the judge reads in each")
    sh.add_argument("--out", default="outputs/shapes-sheet.png")
    sh.add_argument("--prompt", action="append", default=None, help="a prompt (repeat; default: the example prompts)")
    sh.add_argument("--model", default=None)
    sh.add_argument("--size", type=int, default=128)
    sh.add_argument("--steps", type=int, default=20)
    sh.add_argument("--guidance", type=float, default=7.0)
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--tile", type=int, default=256, help="tile side in the sheet (pixels)")
    sh.add_argument("--columns", type=int, default=3)
    sh.add_argument("--device", default=None)
    sh.add_argument("--threads", type=int, default=None)
    sh.set_defaults(fn=_cmd_sheet)

    b = models.add_parser("bench", help="CPU seconds per image of a model (default: the bundled one)")
    b.add_argument("--model", default=None)
    b.add_argument("--size", type=int, default=128)
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--repeats", type=int, default=5)
    b.set_defaults(fn=_cmd_bench)


def main(argv: list[str] | None = None) -> int:
    """`python -m sdlab.shapes.cli train ...`: the same commands without the rest of the CLI's imports."""
    parser = argparse.ArgumentParser(prog="python -m sdlab.shapes.cli")
    register(parser.add_subparsers(dest="action", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
