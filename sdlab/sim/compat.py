"""The old simulator's API (`sdlab/sim.py` until issue 11), run by the new engine; for notebooks not yet moved."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdlab.config import ScalingSettings
from sdlab.sim.engine import Plan, run
from sdlab.sim.facts import ServiceCurve


def constant(rate_per_s: float) -> Callable[[float], float]:
    return lambda t: rate_per_s


def burst(rate_per_s: float, start_s: float, length_s: float, base_per_s: float = 0.0) -> Callable[[float], float]:
    """`base_per_s` all the time, `rate_per_s` during [start, start + length)."""
    return lambda t: rate_per_s if start_s <= t < start_s + length_s else base_per_s


@dataclass
class SimResult:
    latencies: list[float]
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (t, replicas, queue depth)
    replica_seconds: float = 0.0
    interruptions: int = 0
    unfinished: int = 0
    arrivals: int = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q * 100)) if self.latencies else math.nan

    def cost(self, price_per_hour: float) -> float:
        return self.replica_seconds / 3600 * price_per_hour

    def summary(self, price_per_hour: float) -> dict[str, Any]:
        done = len(self.latencies)
        return {
            "tasks_done": done, "unfinished": self.unfinished,
            "p50_s": round(self.percentile(0.5), 1), "p95_s": round(self.percentile(0.95), 1),
            "max_s": round(max(self.latencies), 1) if done else math.nan,
            "gpu_hours": round(self.replica_seconds / 3600, 3), "cost_usd": round(self.cost(price_per_hour), 3),
            "usd_per_1000_images": round(1000 * self.cost(price_per_hour) / done, 3) if done else math.nan,
            "spot_interruptions": self.interruptions,
        }


def simulate_rate(scaling: ScalingSettings, rate: Callable[[float], float], *, duration_s: float, seconds_per_image: float,
                  cold_start_seconds: float = 120.0, spot_interruptions_per_hour: float = 0.0, drain_s: float = 1800.0,
                  seed: int = 0) -> SimResult:
    """Poisson arrivals at `rate(t)` per second for `duration_s`, one GPU per node, a fixed cold start."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(int(duration_s))
    counts = rng.poisson([max(rate(float(t)), 0.0) for t in seconds]) if len(seconds) else np.zeros(0, int)
    times = np.sort(np.repeat(seconds, counts) + rng.uniform(0, 1, int(counts.sum())))
    p = Plan(scaling=scaling, service=ServiceCurve("any", "any", "any", ((1, seconds_per_image),), ("given",)), max_batch=1,
             gpus_per_node=1, node_ready_s=cold_start_seconds, image_pull_s=0.0, model_load_s=0.0,
             price_per_hour={"spot": 1.0, "on-demand": 1.0}, capacity_types=("spot",),
             interruptions_per_hour=spot_interruptions_per_hour, consolidate_after_s=0.0, max_drain_s=drain_s,
             prefetch=False)  # the old simulator's replicas took one task at a time
    raw = run(p, times, duration_s, seed=seed)
    ok = ~np.isnan(raw["finish"])
    tl = raw["timeline"]
    return SimResult(latencies=(raw["finish"][ok] - times[ok]).tolist(),
                     timeline=[(float(r[0]), int(r[5]), int(r[1])) for r in tl[::10]],
                     replica_seconds=sum(raw["node_seconds"].values()), interruptions=raw["counters"]["interruptions"],
                     unfinished=len(times) - raw["done"], arrivals=len(times))
