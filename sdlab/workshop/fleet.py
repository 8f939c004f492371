"""GPU instance types and Spot: cost per 1,000 images against p95 latency, per instance type and capacity-type mix,
on the project's simulator (`sdlab.sim`: its facts table holds each card's service times, prices and Spot
interruption rates, with sources). An interrupted Spot node's task goes back to its queue (the agent's warm shutdown
releases it within the two-minute notice) and runs again elsewhere: `tasks_released_for_retry` counts them.
"""

from __future__ import annotations

from typing import Any

from sdlab import sim
from sdlab.config import Settings
from sdlab.sim.workload import Workload
from sdlab.workshop.tuning import choice, row

CAPACITY_MIXES = (("on-demand",), ("spot", "on-demand"), ("spot",))


def compare(settings: Settings, runtime: str, workload: Workload, instance_types: list[str], *,
            capacity_mixes: tuple[tuple[str, ...], ...] = CAPACITY_MIXES, interruptions_per_hour: float | None = None,
            **knobs: Any) -> Any:
    """A DataFrame: one run per (instance type, capacity mix) on the same arrivals; `interruptions_per_hour`
    overrides the facts' Spot interruption rate (to see its effect in a short run)."""
    import pandas as pd

    overrides: dict[str, Any] = {} if interruptions_per_hour is None else {"interruptions_per_hour": interruptions_per_hour}
    rows = []
    for itype in instance_types:
        for mix in capacity_mixes:
            ch = choice(settings, runtime, instance_type=itype, capacity_types=mix, **knobs)
            result = sim.simulate(settings, runtime, workload, choice=ch, **overrides)
            rows.append({"instance": itype, "capacity": "+".join(mix), **row(result)})
    return pd.DataFrame(rows)


def chart(table: Any) -> Any:
    """Cost per 1,000 images against p95 latency; one line per instance type, its points the capacity mixes."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for itype, rows in table.groupby("instance"):
        ax.plot(rows["p95_s"], rows["cost_per_1000_images_usd"], "-o", label=itype, alpha=0.8)
        for _, r in rows.iterrows():
            ax.annotate(r["capacity"], (r["p95_s"], r["cost_per_1000_images_usd"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("p95 latency, seconds (submit to done)")
    ax.set_ylabel("USD per 1,000 images")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
