"""GPU instance types and Spot: cost per 1,000 images against p95 latency, per card and capacity-type mix.

Prices are `sdlab aws plan`'s (sdlab/deploy/data/prices.yaml, each with its source). Seconds per image are per
card, SD1.5 512², 25 steps, batch 1 (the figures of /work/shared/facts, AWS's g5 figure measured at 16 steps):
replace them with `sdlab bench runtime` figures from your own cards. A Spot share `f` of the nodes pays the Spot
price on that share and sees interruptions at `f` × the per-node rate; an interrupted task goes back to its queue
(the agent's warm shutdown releases it) and runs again on a fresh node after a cold start.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sdlab.config import ScalingSettings
from sdlab.deploy.plan import node_price, prices
from sdlab.workshop.tuning import Scenario

SECONDS_PER_IMAGE = {"g4dn.xlarge": 3.4, "g5.xlarge": 2.3, "g6.xlarge": 2.5, "p5.4xlarge": 0.5}


def spot_discount() -> float:
    """The guidance's example Spot price against the on-demand price of the g5.2xlarge it was quoted for."""
    on_demand = node_price("g5.2xlarge") or 1.0
    return round(1 - float(prices()["spot_example"]["usd_per_hour"]) / on_demand, 2)


def compare(scaling: ScalingSettings, scenario: Scenario, *, instance_types: list[str] | None = None,
            spot_shares: tuple[float, ...] = (0.0, 0.5, 1.0), interruptions_per_node_hour: float = 0.1,
            discount: float | None = None) -> Any:
    """A DataFrame: one trial per (instance type, Spot share): $/1000 images, p50/p95 seconds, interruptions."""
    import pandas as pd

    off = spot_discount() if discount is None else discount
    rows = []
    for itype in instance_types or list(SECONDS_PER_IMAGE):
        price = node_price(itype)
        if price is None or itype not in SECONDS_PER_IMAGE:
            raise KeyError(f"no price or seconds per image for {itype}; known: {sorted(SECONDS_PER_IMAGE)}")
        for share in spot_shares:
            blended = price * (1 - share * off)
            trial = replace(scenario, seconds_per_image=SECONDS_PER_IMAGE[itype], usd_per_hour=blended,
                            spot_interruptions_per_hour=share * interruptions_per_node_hour)
            result = trial.run(scaling)
            rows.append({"instance": itype, "spot_share": share, "usd_per_hour": round(blended, 3),
                         **result.summary(blended), "arrivals": result.arrivals})
    return pd.DataFrame(rows)


def chart(table: Any) -> Any:
    """Cost per 1,000 images against p95 latency; one colour per instance type, marker size by Spot share."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for itype, rows in table.groupby("instance"):
        ax.plot(rows["p95_s"], rows["usd_per_1000_images"], "-o", label=itype, alpha=0.8)
        for _, r in rows.iterrows():
            ax.annotate(f"{int(r['spot_share'] * 100)}% spot", (r["p95_s"], r["usd_per_1000_images"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("p95 latency, seconds (submit to done)")
    ax.set_ylabel("USD per 1,000 images")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
