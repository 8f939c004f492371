"""Speed of the simulator: a simulated day of one million requests (target < 30 s on the 2-core dev box).

Run: `python -m sdlab.sim.bench [--requests N] [--polling S]`. Prints wall time, events per second and the run's summary.
"""

from __future__ import annotations

import argparse
import json
import time

from sdlab.config import ScalingSettings
from sdlab.sim import run_plan
from sdlab.sim.scenario import Choice, plan
from sdlab.sim.workload import diurnal_day


def bench(requests: int = 1_000_000, polling_s: int = 1, max_batch: int = 1, seed: int = 0) -> dict:
    workload = diurnal_day(requests, seed=seed)
    scaling = ScalingSettings(queue_length=10, polling_interval_seconds=polling_s, max_replicas=60, cooldown_seconds=300)
    p = plan(Choice("g6.2xlarge", ("spot", "on-demand"), scaling, max_batch=max_batch), workload.model)
    t0 = time.perf_counter()
    arrivals = workload.times()
    t1 = time.perf_counter()
    result = run_plan(p, workload)
    t2 = time.perf_counter()
    summary = result.summary()
    return {"requests": len(arrivals), "simulated_hours": round(summary["simulated_s"] / 3600, 2),
            "arrivals_s": round(t1 - t0, 2), "simulate_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
            "summary_s": round(time.perf_counter() - t2, 2), "p95_s": summary["p95_s"],
            "cost_per_1000_images_usd": summary["cost_per_1000_images_usd"], "max_pods": summary["max_pods"],
            "spot_interruptions": summary["spot_interruptions"], "gpu_utilisation": summary["gpu_utilisation"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--polling", type=int, default=1, help="KEDA polling interval (1 s: the most control events)")
    ap.add_argument("--max-batch", type=int, default=1)
    args = ap.parse_args(argv)
    out = bench(args.requests, args.polling, args.max_batch)
    print(json.dumps(out, indent=2))
    print(f"a simulated day of {out['requests']:,} requests took {out['total_s']} s (target < 30 s)")


if __name__ == "__main__":
    main()
