"""The demo: a few prompts to every runtime through the real asynchronous path, images written to disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdlab.client import Client

PROMPTS = (
    "a lighthouse on a cliff at dusk, oil painting",
    "a red fox in fresh snow, photograph",
    "a bowl of ramen, studio lighting",
)


@dataclass
class DemoRow:
    task: str
    runtime: str
    status: str
    queued_s: float | None
    run_s: float | None
    path: str


def run_demo(client: Client, runtimes: list[str], out_dir: Path, *, per_runtime: int = 3, size: int = 256,
             steps: int = 20, timeout: float = 300.0) -> list[DemoRow]:
    """Submit `per_runtime` prompts to each runtime, wait for all notifications, save the PNGs."""
    submitted = []
    for runtime in runtimes:
        for i in range(per_runtime):
            payload = {"steps": steps, "width": size, "height": size, "seed": 1000 + i}
            submitted.append(client.submit(runtime, PROMPTS[i % len(PROMPTS)], payload=payload))
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
        rows.append(DemoRow(s.id[:8], s.runtime, note.status.value, note.timings.queued_s, note.timings.run_s,
                            ", ".join(paths) or (note.error or "")))
    return rows


def format_table(rows: list[DemoRow]) -> str:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    header = ("task", "runtime", "status", "queued s", "running s", "image")
    lines = [(r.task, r.runtime, r.status, num(r.queued_s), num(r.run_s), r.path) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*ln) for ln in lines])
