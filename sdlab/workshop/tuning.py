"""KEDA thresholds explored on the project's simulator (`sdlab.sim`): move `queue_length`, activation, cooldown,
polling interval and the replica bounds, and see queue depth, pods, nodes, latency percentiles and cost move.

The simulator scales with KEDA's and the HPA's own rules from the same `scaling:` values the rendered ScaledObject
carries, with the card's service times and prices of its facts table; this module only turns knobs into a
`Choice`, runs it and tabulates. `sdlab.sim.tune.write_choice` writes a choice back into `sdlab.yaml`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sdlab import sim
from sdlab.config import ScalingSettings, Settings
from sdlab.errors import SdlabError
from sdlab.sim.scenario import Choice, choice_from_config
from sdlab.sim.workload import Workload

KNOBS = ("queue_length", "activation_queue_length", "cooldown_seconds", "polling_interval_seconds", "min_replicas",
         "max_replicas")
COLUMNS = ("p50_s", "p95_s", "queue_wait_p95_s", "cost_per_1000_images_usd", "cost_usd", "gpu_hours", "gpu_utilisation",
           "max_pods", "nodes_launched", "spot_interruptions", "tasks_released_for_retry", "completed", "unfinished")


def adjust(base: ScalingSettings, **values: Any) -> ScalingSettings:
    """`base` with some knobs changed, validated (min above max, a zero queue length... are named)."""
    unknown = set(values) - set(ScalingSettings.model_fields)
    if unknown:
        raise SdlabError(f"unknown scaling value(s) {sorted(unknown)}; the knobs are {', '.join(KNOBS)}")
    try:
        return ScalingSettings.model_validate({**base.model_dump(), **values})
    except ValueError as err:
        raise SdlabError(f"scaling values refused: {err}") from err


def choice(settings: Settings, runtime: str, *, instance_type: str | None = None,
           capacity_types: tuple[str, ...] | None = None, **knobs: Any) -> Choice:
    """What the config says for `runtime` (Karpenter's pick of its instance types), with knobs and node choices changed."""
    base = choice_from_config(settings.runtime(runtime), settings.stack.region)
    return replace(base, scaling=adjust(base.scaling, **knobs), instance_type=instance_type or base.instance_type,
                   capacity_types=tuple(capacity_types or base.capacity_types))


def row(result: Any) -> dict[str, Any]:
    """The figures of one run a table shows."""
    summary = result.summary()
    return {k: summary[k] for k in COLUMNS}


def sweep(settings: Settings, runtime: str, workload: Workload, knob: str, values: list[Any], **fixed: Any) -> Any:
    """A DataFrame: one run per value of `knob` (same arrivals each time), its latency and cost figures."""
    import pandas as pd

    rows = []
    for value in values:
        result = sim.simulate(settings, runtime, workload, choice=choice(settings, runtime, **{**fixed, knob: value}))
        rows.append({knob: value, **row(result)})
    return pd.DataFrame(rows)


def show_trial(settings: Settings, runtime: str, workload: Workload, **knobs: Any) -> dict[str, Any]:
    """Run one choice, show its timeline (queue, pods, nodes) as a PNG output, return its figures."""
    from sdlab.sim import plots
    from sdlab.workshop.gallery import show_figure

    result = sim.simulate(settings, runtime, workload, choice=choice(settings, runtime, **knobs))
    show_figure(plots.timeline(result))
    return row(result)


def explorer(settings: Settings, runtime: str, workload: Workload) -> Any:
    """Sliders for every knob; the timeline and the figures re-draw as they move."""
    import ipywidgets as w
    from IPython.display import display

    base = settings.runtime(runtime).scaling
    sliders = {
        "queue_length": w.IntSlider(base.queue_length, 1, 32, description="queueLength"),
        "activation_queue_length": w.IntSlider(base.activation_queue_length, 0, 20, description="activation"),
        "cooldown_seconds": w.IntSlider(base.cooldown_seconds, 0, 900, 30, description="cooldown s"),
        "polling_interval_seconds": w.IntSlider(base.polling_interval_seconds, 1, 60, description="polling s"),
        "min_replicas": w.IntSlider(base.min_replicas, 0, 4, description="min"),
        "max_replicas": w.IntSlider(base.max_replicas, 1, 32, description="max"),
    }

    def redraw(**values: Any) -> None:
        if values["min_replicas"] > values["max_replicas"]:
            print("min is above max: raise max or lower min")
            return
        display(show_trial(settings, runtime, workload, **values))

    out = w.interactive_output(redraw, sliders)
    return w.VBox([w.HBox(list(sliders.values())[:3]), w.HBox(list(sliders.values())[3:]), out])
