"""Source of notebooks/03_tune_scaling.ipynb (`python tools/nb03_tune_scaling.py` rewrites it, without outputs)."""

from __future__ import annotations

from pathlib import Path

from make_notebook import write_notebook

CELLS = [
    ("md", """
# 03 · Tune scaling: KEDA thresholds, instance types, Spot

**Goal:** choose `queue_length`, `activation_queue_length`, `cooldown_seconds` and the GPU instance type for your
traffic, by simulating the queue with KEDA's own formula (`sdlab.scaling`, the values the rendered ScaledObject
applies) and the per-image times and prices of each card.

**Prerequisites:** none (a simulation; nothing is started).

**Cost on AWS:** none. The printed dollar figures are what the simulated GPU time would cost at the given prices.
"""),
    ("params", """
target = "local"  # the simulation is the same for both targets
config = "../sdlab.yaml"  # scaling values of the runtime below are the starting point
runtime = "webui-a"  # which runtime's `scaling:` to start from
burst_rate_per_s = 2.0  # tasks per second during the burst
burst_minutes = 10  # burst length
base_rate_per_s = 0.05  # background traffic outside the burst
cold_start_seconds = 150  # node launch + image pull + model load (docs: 1.5-3 min with cached images)
spot_interruptions_per_hour = 0.05  # per node
queue_lengths = [1, 2, 4, 8]  # candidates for `scaling.queue_length`
seed = 0  # random arrivals are reproducible
"""),
    ("code", """
import sdlab
"""),
    ("md", "## 1. Start from the configured values"),
    ("code", """
settings = sdlab.load_config(config)
base = settings.runtime(runtime).scaling
traffic = sdlab.sim.burst(burst_rate_per_s, 60, burst_minutes * 60, base_per_s=base_rate_per_s)
duration = (burst_minutes + 10) * 60
base
"""),
    ("md", """
## 2. Cards: seconds per image and price

SD1.5, 512², 25 steps, batch 1. Prices: us-east-1 on-demand (Karpenter's table, 2026-07-20); Spot about 50 % off.
Per-image times: `g5.xlarge` 1.5 s is AWS's measured figure at 16 steps; the others are the estimates in the
project's facts (`docs/benchmarks.md` has the runtime's own measured figures). Replace them with yours.
"""),
    ("code", """
cards = {  # instance: (seconds per image, $/h on-demand)
    "g4dn.xlarge (T4)": (3.4, 0.526),
    "g5.xlarge (A10G)": (2.3, 1.006),
    "g6.xlarge (L4)": (2.5, 0.8048),
    "p5.4xlarge (H100)": (0.5, 6.88),
}
"""),
    ("md", "## 3. Which `queue_length`? (on the g5.xlarge)"),
    ("code", """
spi, price = cards["g5.xlarge (A10G)"]
rows = []
for ql in queue_lengths:
    trial = base.model_copy(update={"queue_length": ql, "max_replicas": max(base.max_replicas, 16)})
    result = sdlab.sim.simulate(trial, traffic, duration_s=duration, seconds_per_image=spi,
                                cold_start_seconds=cold_start_seconds,
                                spot_interruptions_per_hour=spot_interruptions_per_hour, seed=seed)
    rows.append({"queue_length": ql, **result.summary(price)})
sdlab.display.timings_table(rows)
"""),
    ("md", "## 4. Which card? (with the best `queue_length` above)"),
    ("code", """
best = min(rows, key=lambda r: (r["p95_s"], r["cost_usd"]))["queue_length"]
tuned = base.model_copy(update={"queue_length": best, "max_replicas": max(base.max_replicas, 16)})
by_card = []
for card, (spi, price) in cards.items():
    result = sdlab.sim.simulate(tuned, traffic, duration_s=duration, seconds_per_image=spi,
                                cold_start_seconds=cold_start_seconds,
                                spot_interruptions_per_hour=spot_interruptions_per_hour, seed=seed)
    by_card.append({"card": card, **result.summary(price), "usd_per_1000_spot": round(result.summary(price / 2)["usd_per_1000_images"], 3)})
sdlab.display.timings_table(by_card)
"""),
    ("md", "## 5. What this notebook should have achieved"),
    ("code", """
assert all(r["unfinished"] == 0 for r in rows + by_card), "every simulated task was served"
assert len({r["tasks_done"] for r in rows + by_card}) == 1, "every trial saw the same traffic"
assert rows[0]["gpu_hours"] >= rows[-1]["gpu_hours"], "fewer messages per replica means more replicas"
best
"""),
]

if __name__ == "__main__":
    write_notebook(Path(__file__).resolve().parents[1] / "notebooks" / "03_tune_scaling.ipynb", CELLS)
