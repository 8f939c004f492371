"""The runtime as a server: cold start to first image, and a burst of tasks over HTTP."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from tabulate import tabulate

from sdlab.bench.runtime import PROMPTS, _percentile
from sdlab.runtime.optimize import SHIPPED_CACHE_DIR


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cold_start(models_dir: Path, model: str, *, extra: list[str], timeout: float = 600.0, steps: int = 25,
               size: int | None = None) -> dict[str, Any]:
    """Start ``python -m sdlab.runtime`` and time: healthy (model loaded, compiled if asked), first and second image."""
    extra = [a for a in extra if a != "--"]
    port = _free_port()
    log = Path(tempfile.mkdtemp(prefix="sdlab-coldstart-")) / "runtime.log"
    cmd = [sys.executable, "-m", "sdlab.runtime", "--models-dir", str(models_dir), "--model", model,
           "--host", "127.0.0.1", "--port", str(port), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result: dict[str, Any] = {"args": extra, "ready_s": None}
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=timeout) as http:
            while time.perf_counter() - t0 < timeout:
                if proc.poll() is not None:
                    result["error"] = f"runtime exited with {proc.returncode}"
                    break
                try:
                    if http.get("/healthz", timeout=2).status_code == 200:
                        result["ready_s"] = round(time.perf_counter() - t0, 2)
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            if result["ready_s"] is not None:
                body = {"prompt": "a red fox", "steps": steps, "seed": 1, "cfg_scale": 7.5}
                if size:
                    body |= {"width": size, "height": size}
                for label in ("first_image_s", "second_image_s"):
                    t1 = time.perf_counter()
                    reply = http.post("/sdapi/v1/txt2img", json=body)
                    result[label] = round(time.perf_counter() - t1, 3)
                    result["status"] = reply.status_code
                result["to_first_image_s"] = round(result["ready_s"] + result["first_image_s"], 2)
                result["startup"] = http.get("/v1/info").json().get("startup")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    result["log_ready_line"] = next((line for line in text.splitlines() if "ready:" in line), None)
    if result["ready_s"] is None:
        result["log_tail"] = text[-2000:]
    return result


def cold_starts(models_dir: Path, model: str, *, compiled: bool = False, batch: int = 16, eager_starts: int = 1,
                extra: list[str] | None = None, timeout: float = 600.0, steps: int = 25,
                size: int | None = None) -> list[dict[str, Any]]:
    """The starts a pod can have, each a fresh ``python -m sdlab.runtime``: eager (``eager_starts`` times: the first
    on a fresh machine also reads the packages from disk); with ``compiled``, a cold compile
    (an empty local cache, nothing next to the model; it ships its cache next to the model) and then a new pod
    (an empty local cache again, only the cache shipped next to the model). A cache already shipped before the
    first compiled start makes that start a new pod's too, and it is labelled so."""
    extra = [a for a in (extra or []) if a != "--"]
    first = " ".join(extra) if extra else "eager"  # runtime flags given after -- name the start
    rows = []
    for i in range(eager_starts):
        label = first if i == 0 else f"{first}, again ({i + 1})"
        rows.append({"start": label, **cold_start(models_dir, model, extra=extra, timeout=timeout, steps=steps, size=size)})
    if compiled:
        flags = ["--opt", "fast", "--max-batch", str(batch), "--batch-buckets", str(batch)]
        shipped_dir = Path(models_dir) / model / SHIPPED_CACHE_DIR
        labels = ["compiled, new pod (shipped cache only)"]
        if not any(shipped_dir.glob("*.bin")):
            labels.insert(0, "compiled, cold (no cache anywhere)")
        for label in labels:
            local = tempfile.mkdtemp(prefix="sdlab-compile-cache-")  # a new pod's empty local cache
            rows.append({"start": label, **cold_start(models_dir, model, timeout=timeout, steps=steps, size=size,
                                                      extra=[*extra, *flags, "--compile-cache-dir", local])})
    return rows


START_COLUMNS = (("ready", "ready_s"), ("before load", "before_load_s"), ("of which imports", "imports_s"),
                 ("of which CUDA init", "cuda_init_s"), ("load", "load_s"), ("warm-up", "warmup_s"),
                 ("first image", "first_image_s"), ("second image", "second_image_s"))


def starts_table(rows: list[dict[str, Any]]) -> str:
    """The starts as the Markdown table docs/benchmarks.md shows (seconds; — where a start has no such phase)."""

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            value = (row.get("startup") or {}).get(key)
        return "—" if value is None else f"{value:.2f} s"

    body = [[row["start"], *(cell(row, key) for _, key in START_COLUMNS)] for row in rows]
    return tabulate(body, headers=["start", *(name for name, _ in START_COLUMNS)], tablefmt="github",
                    disable_numparse=True)


def http_burst(url: str, *, tasks: int, per_request: int, concurrency: int, steps: int, size: int) -> dict[str, Any]:
    """``tasks`` txt2img tasks in calls of ``per_request``, ``concurrency`` calls in flight; images/s end to end."""
    bodies = []
    for start in range(0, tasks, per_request):
        bodies.append([{"id": f"t{i}", "prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "steps": steps, "width": size,
                        "height": size, "cfg_scale": 7.5} for i in range(start, min(tasks, start + per_request))])
    with httpx.Client(base_url=url, timeout=3600) as http:
        before = http.get("/v1/info").json()

        def post(body):
            t0 = time.perf_counter()
            reply = http.post("/v1/generate", json=body)
            seconds = time.perf_counter() - t0
            results = reply.json()["results"] if reply.status_code == 200 else []
            ok = sum(1 for r in results if r.get("status") == "ok")
            return seconds, ok, len(body) - ok

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            outcomes = list(pool.map(post, bodies))
        wall = time.perf_counter() - t0
        after = http.get("/v1/info").json()
    latencies = [o[0] for o in outcomes]
    ok = sum(o[1] for o in outcomes)
    busy = after["busy_seconds"] - before["busy_seconds"]
    return {"tasks": tasks, "ok": ok, "failed": sum(o[2] for o in outcomes), "wall_s": round(wall, 2),
            "images_per_s": round(ok / wall, 3), "request_p50_s": round(statistics.median(latencies), 3),
            "request_p95_s": round(_percentile(latencies, 95), 3), "batches": after["batches"] - before["batches"],
            "runtime_busy_fraction": round(busy / wall, 3), "runtime_images_per_busy_s": round(ok / busy, 3) if busy else None}
