"""The demo: a few prompts to every runtime through the real asynchronous path, images written to disk.

Each runtime gets the request its type speaks: an SD WebUI txt2img body for `sdwebui` and `diffusers`
runtimes, a `pipeline` task naming the bundled ComfyUI template `txt2img-basic` for `comfyui` ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from sdlab.client import Client
from sdlab.shapes import example_prompts

# In the default model's domain (docs/model.md): flat shapes, colours, counts, sizes, backgrounds.
PROMPTS = tuple(example_prompts())


@dataclass
class DemoRow:
    task: str
    runtime: str
    status: str
    queued_s: float | None
    run_s: float | None
    path: str
    prompt: str = ""
    drawn: str = ""  # what the pixel judge reads in the first image, in the captions' words
    matches: bool | None = None  # None: no image, or a prompt outside the default model's language


def request_for(runtime_type: str, model: str | None, prompt: str, *, seed: int, size: int, steps: int) -> dict[str, Any]:
    """`Client.submit` keyword arguments for one prompt to a runtime of `runtime_type`."""
    if runtime_type == "comfyui":
        params: dict[str, Any] = {"prompt": prompt, "seed": seed, "steps": steps, "width": size, "height": size}
        if model:
            params["ckpt_name"] = model
        return {"task_type": "pipeline", "payload": {"workflow": "txt2img-basic", "params": params}}
    return {"prompt": prompt, "payload": {"steps": steps, "width": size, "height": size, "seed": seed}}


def run_demo(client: Client, runtimes: Mapping[str, Mapping[str, Any]] | Sequence[str], out_dir: Path, *,
             per_runtime: int = 3, size: int = 128, steps: int = 20, timeout: float = 300.0) -> list[DemoRow]:
    """Submit `per_runtime` prompts to each runtime, wait for all notifications, save the PNGs.

    `runtimes`: the stack's runtimes (`stack.json`: name -> {"type", "model", ...}); a bare list of names
    is taken as SD WebUI runtimes.
    """
    specs = runtimes if isinstance(runtimes, Mapping) else {name: {"type": "sdwebui"} for name in runtimes}
    submitted = []
    prompts: dict[str, str] = {}
    for r, (runtime, spec) in enumerate(specs.items()):
        for i in range(per_runtime):  # each runtime its own prompts, so routing shows in the pictures
            prompt = PROMPTS[(r * per_runtime + i) % len(PROMPTS)]
            request = request_for(spec.get("type", "sdwebui"), spec.get("model"), prompt,
                                  seed=1000 + i, size=size, steps=steps)
            submitted.append(client.submit(runtime, **request))
            prompts[submitted[-1].id] = prompt
    notes = client.wait([s.id for s in submitted], timeout=timeout)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in submitted:
        note = notes[s.id]
        paths = []
        for n, data in enumerate(client.image_bytes(note)):
            path = out_dir / f"{s.runtime}-{s.id[:8]}-{n}.png"
            path.write_bytes(data)
            paths.append(str(path))
        drawn, matches = _judge(Path(paths[0]), prompts[s.id]) if paths else ("", None)
        rows.append(DemoRow(s.id[:8], s.runtime, note.status.value, note.timings.queued_s, note.timings.run_s,
                            ", ".join(paths) or (note.error or ""), prompts[s.id], drawn, matches))
    return rows


def _judge(path: Path, prompt: str) -> tuple[str, bool | None]:
    """The pixel judge's reading of one image and whether it is what the prompt asked."""
    import numpy as np
    from PIL import Image

    from sdlab.shapes.judge import judge_prompt

    with Image.open(path) as img:
        reading, matches = judge_prompt(np.asarray(img.convert("RGB")), prompt)
    return reading.caption(), matches


def format_table(rows: list[DemoRow]) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def verdict(r: DemoRow) -> str:
        return {True: "yes", False: "no", None: "-"}[r.matches]

    header = ("task", "runtime", "status", "queued s", "running s", "asked", "drawn (pixel judge)", "match", "image")
    lines = [(r.task, r.runtime, r.status, num(r.queued_s), num(r.run_s), r.prompt, r.drawn, verdict(r), r.path)
             for r in rows]
    table = [tabulate(lines, headers=header, tablefmt="simple", disable_numparse=True)]
    judged = [r for r in rows if r.matches is not None]
    if judged:
        table.append(f"\n{sum(bool(r.matches) for r in judged)} of {len(judged)} pictures show what their prompt asked "
                     "(colour, kind and count of the shapes, background), as read from their pixels by the judge of "
                     "`sdlab model eval` (docs/model.md)")
    return "\n".join(table)
