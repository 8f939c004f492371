"""A queue + autoscaler simulator for tuning: what latency and cost do these KEDA values give for this traffic?

One-second steps. Tasks arrive (Poisson, at a rate that may change over time); `KedaScaler` decides replicas
from the queue like KEDA and the HPA would; a new replica serves only after `cold_start_seconds` (node launch,
image pull, model load); each replica takes one task at a time for `seconds_per_image`; Spot interruptions
release a replica's task back to the queue (the agent's warm shutdown) and cost a cold start. GPU time is
billed per replica-second from launch until scale-in.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sdlab.config import ScalingSettings
from sdlab.scaling import KedaScaler


@dataclass
class Replica:
    ready_at: float
    free_at: float = 0.0
    current: tuple[float, int] | None = None  # (arrival time, index in latencies) of the task it runs

    def busy(self, t: float) -> bool:
        return self.free_at > t


@dataclass
class SimResult:
    latencies: list[float]
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (t, replicas, queue depth)
    replica_seconds: float = 0.0
    interruptions: int = 0
    unfinished: int = 0
    arrivals: int = 0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def cost(self, price_per_hour: float) -> float:
        return self.replica_seconds / 3600 * price_per_hour

    def summary(self, price_per_hour: float) -> dict[str, float]:
        done = len(self.latencies)
        return {
            "tasks_done": done,
            "unfinished": self.unfinished,
            "p50_s": round(self.percentile(0.5), 1),
            "p95_s": round(self.percentile(0.95), 1),
            "max_s": round(max(self.latencies), 1) if done else float("nan"),
            "gpu_hours": round(self.replica_seconds / 3600, 3),
            "cost_usd": round(self.cost(price_per_hour), 3),
            "usd_per_1000_images": round(1000 * self.cost(price_per_hour) / done, 3) if done else float("nan"),
            "spot_interruptions": self.interruptions,
        }


def constant(rate_per_s: float) -> Callable[[float], float]:
    return lambda t: rate_per_s


def burst(rate_per_s: float, start_s: float, length_s: float, base_per_s: float = 0.0) -> Callable[[float], float]:
    """`base_per_s` all the time, `rate_per_s` during [start, start + length)."""
    return lambda t: rate_per_s if start_s <= t < start_s + length_s else base_per_s


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method is fine for the small per-second rates simulated here
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def simulate(scaling: ScalingSettings, rate: Callable[[float], float], *, duration_s: float, seconds_per_image: float,
             cold_start_seconds: float = 120.0, spot_interruptions_per_hour: float = 0.0, drain_s: float = 1800.0,
             seed: int = 0) -> SimResult:
    """Run arrivals for `duration_s`, then let the queue drain for up to `drain_s` more."""
    arrivals_rng = random.Random(seed)  # separate streams: every trial with this seed sees the same traffic
    spot_rng = random.Random(seed + 1)
    scaler = KedaScaler(scaling)
    queue: deque[float] = deque()  # arrival times of waiting tasks
    replicas: list[Replica] = []
    result = SimResult(latencies=[])
    t = 0.0
    while t < duration_s + drain_s:
        if t < duration_s:
            arrived = _poisson(arrivals_rng, rate(t))
            result.arrivals += arrived
            queue.extend([t] * arrived)
        # Spot interruptions: the running task goes back to the queue, the replacement starts cold
        for r in replicas:
            if spot_interruptions_per_hour and spot_rng.random() < spot_interruptions_per_hour / 3600:
                result.interruptions += 1
                if r.busy(t) and r.current is not None:
                    arrival, index = r.current
                    queue.appendleft(arrival)
                    result.latencies[index] = -1.0  # not finished after all
                r.ready_at, r.free_at, r.current = t + cold_start_seconds, t, None
        in_flight = sum(1 for r in replicas if r.busy(t))
        want = scaler.step(t, len(queue), in_flight)
        while len(replicas) < want:
            replicas.append(Replica(ready_at=t + cold_start_seconds))
        if len(replicas) > want:  # scale-in removes idle replicas first (busy pods are protected)
            replicas.sort(key=lambda r: r.busy(t))
            while len(replicas) > want and not replicas[0].busy(t):
                replicas.pop(0)
        # ready replicas take work, as many tasks as fit in this second
        for r in replicas:
            while queue and t >= r.ready_at and r.free_at < t + 1.0:
                arrival = queue.popleft()
                start_at = max(r.free_at, t)
                r.free_at = start_at + seconds_per_image
                result.latencies.append(r.free_at - arrival)
                r.current = (arrival, len(result.latencies) - 1)
        result.replica_seconds += len(replicas)
        if int(t) % 10 == 0:
            result.timeline.append((t, len(replicas), len(queue)))
        if t >= duration_s and not queue and not replicas:
            break
        t += 1.0
    result.latencies = [x for x in result.latencies if x >= 0]
    result.unfinished = len(queue)
    return result
