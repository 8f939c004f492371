"""What a run gives: latency and queue-wait percentiles, throughput, cost per 1,000 images with a breakdown,
GPU utilisation, and timelines of queue depth, pods and nodes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TIMELINE_COLUMNS = ("t_s", "visible", "in_flight", "desired", "pods_ready", "pods", "nodes")


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def _r(x: float, nd: int = 3) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


@dataclass
class Result:
    label: str
    raw: dict[str, Any]
    overhead_s: float
    fixed_usd_per_hour: float
    per_image_usd: float
    sqs_request_usd: float
    queues_polled: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> np.ndarray:
        return ~np.isnan(self.raw["finish"])

    @property
    def latencies(self) -> np.ndarray:
        """End to end: submit to notification (runtime call + queue wait + the fixed overhead outside them)."""
        ok = self.finished
        return self.raw["finish"][ok] - self.raw["arrivals"][ok] + self.overhead_s

    @property
    def waits(self) -> np.ndarray:
        ok = self.finished
        return self.raw["start"][ok] - self.raw["arrivals"][ok]

    @property
    def timeline(self) -> np.ndarray:
        """Rows of TIMELINE_COLUMNS, one per KEDA poll (or SageMaker evaluation)."""
        return self.raw["timeline"]

    def percentile(self, q: float) -> float:
        """Latency percentile, q in [0, 1] (kept for callers of the old simulator)."""
        return _pct(self.latencies, q * 100)

    @property
    def drain_s(self) -> float:
        """First submit to last completion."""
        f = self.raw["finish"]
        if not len(f) or np.isnan(f).all():
            return math.nan
        return float(np.nanmax(f) - self.raw["arrivals"][0])

    def cost(self) -> dict[str, float]:
        raw = self.raw
        hours = raw["end_s"] / 3600.0
        done = raw["done"]
        return {
            "gpu_spot_usd": raw["gpu_usd"]["spot"],
            "gpu_on_demand_usd": raw["gpu_usd"]["on-demand"],
            "fixed_usd": self.fixed_usd_per_hour * hours,
            "requests_usd": self.per_image_usd * done,
            "keda_polling_usd": raw["polls"] * self.queues_polled * self.sqs_request_usd,
        }

    def summary(self) -> dict[str, Any]:
        raw, lat, wait = self.raw, self.latencies, self.waits
        done = raw["done"]
        cost = self.cost()
        total = sum(cost.values())
        per_k = (lambda usd: _r(1000 * usd / done, 4)) if done else (lambda usd: None)
        gpu_s = sum(raw["node_seconds"].values()) * raw["gpus_per_node"]
        tl = raw["timeline"]
        return {
            "label": self.label,
            "tasks": len(raw["arrivals"]),
            "completed": done,
            "unfinished": len(raw["arrivals"]) - done,
            "p50_s": _r(_pct(lat, 50)), "p95_s": _r(_pct(lat, 95)), "p99_s": _r(_pct(lat, 99)),
            "max_s": _r(lat.max() if len(lat) else math.nan),
            "queue_wait_p50_s": _r(_pct(wait, 50)), "queue_wait_p95_s": _r(_pct(wait, 95)),
            "queue_wait_p99_s": _r(_pct(wait, 99)),
            "throughput_per_s": _r(done / raw["duration_s"], 4) if raw["duration_s"] else None,
            "drain_s": _r(self.drain_s, 1),
            "simulated_s": _r(raw["end_s"], 1),
            "cost_usd": _r(total, 4),
            "cost_per_1000_images_usd": per_k(total),
            "cost_breakdown_per_1000_images_usd": {k: per_k(v) for k, v in cost.items()},
            "cost_breakdown_usd": {k: _r(v, 4) for k, v in cost.items()},
            "gpu_hours": _r(gpu_s / 3600.0, 3),
            "gpu_utilisation": _r(raw["busy_gpu_s"] / gpu_s, 4) if gpu_s else None,
            "max_pods": int(tl[:, 5].max()) if len(tl) else 0,
            "max_nodes": int(tl[:, 6].max()) if len(tl) else 0,
            "nodes_launched": raw["counters"]["nodes_launched"],
            "spot_interruptions": raw["counters"]["interruptions"],
            "tasks_released_for_retry": raw["counters"]["released"],
            "spot_unavailable": raw["counters"]["spot_unavailable"],
            "settings": self.settings,
        }

    def timeline_dict(self, every: int = 1) -> dict[str, list[float]]:
        tl = self.timeline[::every]
        return {name: tl[:, i].tolist() for i, name in enumerate(TIMELINE_COLUMNS)}
