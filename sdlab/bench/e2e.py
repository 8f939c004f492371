"""The whole stack at the runtime's speed: a backlog through the HTTP API, served through SNS, SQS, the agent, the
runtime, S3 and the results topic, exactly as `sdlab up` runs it.

Figures (all from the real processes):
- end-to-end img/s: images over the window from the first task's start to the last task's end (records);
- runtime busy: seconds the runtime spent generating (its own counter, `GET /v1/info`) over that window;
- the runtime's own rate while busy (img/s): what an in-process loop at the same batches would give;
- queue wait and run time percentiles (notifications);
- overhead outside the runtime: window minus busy seconds, per task.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from sdlab.bench.runtime import _percentile
from sdlab.config import Settings
from sdlab.local import stack as local_stack
from sdlab.shapes import example_prompts


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": round(_percentile(values, 50), 3), "p95": round(_percentile(values, 95), 3),
            "max": round(max(values), 3), "mean": round(statistics.fmean(values), 3)}


def _runtime_info(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/info", timeout=30).json()


def run(settings: Settings, runtime: str, *, tasks: int, steps: int, size: int, home: Path,
        submitters: int, reference_img_s: float | None = None, timeout: float = 1800.0) -> dict[str, Any]:
    from sdlab.client import Client

    rt = settings.runtime(runtime)
    info = local_stack.up(settings, home)
    try:
        runtime_url = info["runtimes"][runtime]["runtime_url"]
        with Client.from_stack(str(home)) as client:
            # one warm-up task: the first call pays lazy initialisation (kernels, allocator), not the backlog
            warm = client.submit(runtime, "warm-up", payload={"steps": steps, "width": size, "height": size, "seed": 0})
            client.wait(warm.id, timeout=timeout)
            before = _runtime_info(runtime_url)
            t0 = time.time()
            prompts = example_prompts()

            def submit(i: int) -> str:
                return client.submit(runtime, prompts[i % len(prompts)],
                                     payload={"steps": steps, "width": size, "height": size, "seed": i}).id

            # several clients at once, so the backlog builds faster than the runtime drains it
            with ThreadPoolExecutor(max_workers=max(1, submitters)) as pool:
                ids = list(pool.map(submit, range(tasks)))
            submit_s = time.time() - t0
            notes = client.wait(ids, timeout=timeout)
            after = _runtime_info(runtime_url)
            records = [client.status(i) for i in ids]
    finally:
        local_stack.down(home)
    completed = [n for n in notes.values() if n.status.value == "completed"]
    starts = [float(r["started_at"]) for r in records if r.get("started_at")]
    ends = [float(r["finished_at"]) for r in records if r.get("finished_at")]
    window = max(ends) - min(starts)
    busy = float(after["busy_seconds"]) - float(before["busy_seconds"])
    images = sum(len(n.images) for n in completed)
    queued = [n.timings.queued_s or 0.0 for n in completed]
    ran = [n.timings.run_s or 0.0 for n in completed]
    result: dict[str, Any] = {
        "runtime": runtime, "type": rt.type, "model": rt.model.name, "device": after.get("device"),
        "cuda": after.get("cuda"), "optimize": rt.optimize, "max_batch": after.get("max_batch_512"),
        "tasks": tasks, "completed": len(completed), "images": images, "steps": steps, "size": size,
        "submitters": submitters, "submit_seconds": round(submit_s, 2), "window_seconds": round(window, 3),
        "end_to_end_img_per_s": round(images / window, 3),
        "runtime_busy_seconds": round(busy, 3), "runtime_busy_fraction": round(busy / window, 4),
        "runtime_img_per_s_while_busy": round(images / busy, 3) if busy else None,
        "batches": int(after.get("batches", 0)) - int(before.get("batches", 0)),
        "overhead_outside_runtime_ms_per_task": round(1000 * max(0.0, window - busy) / max(1, len(completed)), 2),
        "queue_wait_s": _spread(queued),
        "run_s": _spread(ran),
    }
    if reference_img_s:
        result["in_process_reference_img_per_s"] = reference_img_s
        result["fraction_of_in_process"] = round(result["end_to_end_img_per_s"] / reference_img_s, 4)
    return result
