"""KEDA thresholds explored on the simulator: move `queue_length`, activation, cooldown, polling interval and the
replica bounds, and see replicas, queue depth, latency percentiles and cost move with them.

The simulator (`sdlab.sim`) scales with KEDA's own formula (`sdlab.scaling`), from the same `scaling:` values the
rendered ScaledObject carries, so what is chosen here is what EKS applies. `write_scaling` writes the choice back
into a copy of `sdlab.yaml` (only that runtime's `scaling:` line changes; comments stay).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlab import sim
from sdlab.config import ScalingSettings, load_config
from sdlab.errors import SdlabError

KNOBS = ("queue_length", "activation_queue_length", "cooldown_seconds", "polling_interval_seconds", "min_replicas",
         "max_replicas")


@dataclass(frozen=True)
class Scenario:
    """The traffic and the card a trial runs: a burst over a background rate, one card's speed and price."""

    burst_per_s: float = 1.0
    burst_s: float = 300.0
    base_per_s: float = 0.02
    duration_s: float = 900.0
    seconds_per_image: float = 2.3
    usd_per_hour: float = 1.006
    cold_start_seconds: float = 150.0
    spot_interruptions_per_hour: float = 0.0
    seed: int = 0

    def run(self, scaling: ScalingSettings) -> sim.SimResult:
        traffic = sim.burst(self.burst_per_s, 60, self.burst_s, base_per_s=self.base_per_s)
        return sim.simulate(scaling, traffic, duration_s=self.duration_s, seconds_per_image=self.seconds_per_image,
                            cold_start_seconds=self.cold_start_seconds,
                            spot_interruptions_per_hour=self.spot_interruptions_per_hour, seed=self.seed)


def adjust(base: ScalingSettings, **values: Any) -> ScalingSettings:
    """`base` with some knobs changed, validated (min above max, a zero queue length... are named)."""
    unknown = set(values) - set(ScalingSettings.model_fields)
    if unknown:
        raise SdlabError(f"unknown scaling value(s) {sorted(unknown)}; the knobs are {', '.join(KNOBS)}")
    try:
        return ScalingSettings.model_validate({**base.model_dump(), **values})
    except ValueError as err:
        raise SdlabError(f"scaling values refused: {err}") from err


def sweep(base: ScalingSettings, scenario: Scenario, knob: str, values: list[Any]) -> Any:
    """A DataFrame: one row per value of `knob`, with latency percentiles, GPU hours and cost of the trial."""
    import pandas as pd

    rows = [{knob: v, **scenario.run(adjust(base, **{knob: v})).summary(scenario.usd_per_hour)} for v in values]
    return pd.DataFrame(rows)


def plot(result: sim.SimResult, scaling: ScalingSettings, scenario: Scenario) -> Any:
    """Replicas and queue depth over time beside the latency distribution with its p50/p95."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    t = [p[0] / 60 for p in result.timeline]
    left.plot(t, [p[2] for p in result.timeline], label="queue depth", color="tab:orange")
    left.set_xlabel("minutes")
    left.set_ylabel("messages")
    twin = left.twinx()
    twin.step(t, [p[1] for p in result.timeline], where="post", label="replicas", color="tab:blue")
    twin.set_ylabel("replicas")
    left.set_title(f"queue_length={scaling.queue_length} activation={scaling.activation_queue_length} "
                   f"cooldown={scaling.cooldown_seconds}s", fontsize=9)
    right.hist(result.latencies or [0], bins=30, color="tab:gray")
    for q, style in ((0.5, "--"), (0.95, ":")):
        right.axvline(result.percentile(q), linestyle=style, color="k", label=f"p{int(q * 100)} {result.percentile(q):.0f}s")
    right.set_xlabel("seconds from submit to done")
    right.legend(fontsize=8)
    right.set_title(f"${result.cost(scenario.usd_per_hour):.2f} for {len(result.latencies)} images", fontsize=9)
    fig.tight_layout()
    return fig


def show_trial(base: ScalingSettings, scenario: Scenario, **values: Any) -> dict[str, Any]:
    """Run one trial, show its plot (a PNG output), return its summary: what each slider move calls."""
    from sdlab.workshop.gallery import show_figure

    scaling = adjust(base, **values)
    result = scenario.run(scaling)
    show_figure(plot(result, scaling, scenario))
    return result.summary(scenario.usd_per_hour)


def explorer(base: ScalingSettings, scenario: Scenario) -> Any:
    """Sliders for every knob; the plot and the summary re-draw as they move."""
    import ipywidgets as w
    from IPython.display import display

    sliders = {
        "queue_length": w.IntSlider(base.queue_length, 1, 32, description="queueLength"),
        "activation_queue_length": w.IntSlider(base.activation_queue_length, 0, 20, description="activation"),
        "cooldown_seconds": w.IntSlider(base.cooldown_seconds, 0, 900, 30, description="cooldown s"),
        "polling_interval_seconds": w.IntSlider(base.polling_interval_seconds, 1, 60, description="polling s"),
        "min_replicas": w.IntSlider(base.min_replicas, 0, 4, description="min"),
        "max_replicas": w.IntSlider(max(base.max_replicas, 1), 1, 32, description="max"),
    }

    def redraw(**values: Any) -> None:
        if values["min_replicas"] > values["max_replicas"]:
            print("min is above max: raise max or lower min")
            return
        display(show_trial(base, scenario, **values))

    out = w.interactive_output(redraw, sliders)
    return w.VBox([w.HBox(list(sliders.values())[:3]), w.HBox(list(sliders.values())[3:]), out])


def write_scaling(config: str | os.PathLike[str], runtime: str, scaling: ScalingSettings,
                  out: str | os.PathLike[str]) -> Path:
    """Copy `config` to `out` with `runtime`'s `scaling:` line replaced by `scaling`; the copy is checked by loading it."""
    lines = Path(config).read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(rf"\s*- name:\s*{re.escape(runtime)}\s*$", line)), None)
    if start is None:
        raise SdlabError(f"runtime {runtime!r} not found in {config} (looked for a line '- name: {runtime}')")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s*- name:", lines[i])), len(lines))
    flow = "{" + ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}"
                           for k, v in scaling.model_dump().items()) + "}"
    new = " " * indent + f"scaling: {flow}"
    where = next((i for i in range(start, end) if lines[i].strip().startswith("scaling:")), None)
    if where is not None and lines[where].rstrip().endswith("}"):
        lines[where] = new
    elif where is None:
        lines.insert(end, new)
    else:
        raise SdlabError(f"{runtime}'s scaling: in {config} is a block; write it as one line {{...}} to update it here")
    path = Path(out)
    path.write_text("\n".join(lines) + "\n")
    load_config(path)  # the copy must still be a valid config
    return path
