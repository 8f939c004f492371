"""A calibrated simulator of the EKS stack: SQS, KEDA + HPA, Karpenter, Spot, GPU service times, billing.

The API the CLI and the notebooks use:
- `simulate(settings, runtime, workload, ...) -> Result`: one run of a runtime of `sdlab.yaml` on a workload;
  `Result.summary()` gives p50/p95/p99, queue wait, throughput, cost per 1,000 images with a breakdown, GPU
  utilisation; `Result.timeline` the queue depth, pods and nodes over time;
- `sdlab.sim.workload`: `load_workload(path)`, `steady`, `bursty`, `diurnal_day`, `read_trace`, `write_trace`;
- `sdlab.sim.scenario`: `Choice`, `plan`, `sagemaker_plan` and `run_plan(plan, workload)` for what-ifs;
- `sdlab.sim.tune.tune(...)`: the Pareto front of cost vs p95 and the cheapest settings meeting a p95 target;
- `sdlab.sim.plots`: `timeline(result)`, `pareto(front)` (matplotlib);
- `sdlab.sim.facts.load_facts()`: the dated facts table with sources.
The old one-second simulator's `simulate(scaling, rate_fn, duration_s=..., seconds_per_image=...)`, `constant`
and `burst` still work (`sdlab.sim.compat`), run by the new engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdlab.sim.engine import Plan
    from sdlab.sim.result import Result
    from sdlab.sim.scenario import Choice
    from sdlab.sim.workload import Workload

__all__ = ["Choice", "Plan", "Result", "Workload", "burst", "constant", "load_facts", "load_workload", "plan",
           "run_plan", "sagemaker_plan", "simulate", "simulate_rate"]
# names served lazily, so `sdlab --help` does not import numpy
_LAZY = {"burst": "compat", "constant": "compat", "simulate_rate": "compat", "Plan": "engine", "run": "engine",
         "load_facts": "facts", "Result": "result", "Choice": "scenario", "plan": "scenario", "sagemaker_plan": "scenario",
         "choice_from_config": "scenario", "runtime_settings": "scenario", "Workload": "workload", "load_workload": "workload"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"sdlab.sim.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'sdlab.sim' has no attribute {name!r}")


def run_plan(p: Plan, workload: Workload, seed: int | None = None, settings: dict[str, Any] | None = None) -> Result:
    """Run one plan on one workload (same seed, same arrivals)."""
    from sdlab.sim.engine import run
    from sdlab.sim.result import Result

    seed = workload.seed if seed is None else seed
    raw = run(p, workload.times(seed), workload.duration_s, seed=seed)
    return Result(label=p.label, raw=raw, overhead_s=p.overhead_s, fixed_usd_per_hour=p.fixed_usd_per_hour,
                  per_image_usd=p.per_image_usd, sqs_request_usd=p.sqs_request_usd, queues_polled=p.queues_polled,
                  settings=settings or {})


def simulate(settings: Any, runtime: Any = None, workload: Workload | None = None, *args: Any, choice: Choice | None = None,
             region: str | None = None, seed: int | None = None, **kwargs: Any) -> Any:
    """Simulate one runtime of `sdlab.yaml` (`settings`) on `workload`; `choice` overrides what the config says.

    Called the old way — `simulate(scaling_settings, rate_fn, duration_s=..., seconds_per_image=...)` — it runs
    `compat.simulate_rate` and returns the old result shape.
    """
    from sdlab.config import Settings
    from sdlab.sim.facts import load_facts
    from sdlab.sim.scenario import RUNTIME_KINDS, choice_from_config, plan, runtime_settings
    from sdlab.wiring import timing

    if callable(runtime):
        from sdlab.sim.compat import simulate_rate

        return simulate_rate(settings, runtime, *args, **kwargs)
    if not isinstance(settings, Settings):
        raise TypeError("simulate(settings, runtime, workload): settings is a loaded sdlab.yaml (sdlab.config.load_config)")
    if workload is None:
        raise TypeError("simulate(settings, runtime, workload): give a workload (sdlab.sim.workload.load_workload)")
    rt = runtime_settings(settings, runtime)
    region = region or settings.stack.region
    facts = load_facts()
    chosen = choice or choice_from_config(rt, region, facts)
    p = plan(chosen, workload.model, region=region, runtime_kind=RUNTIME_KINDS.get(rt.type), facts=facts,
             grace_s=float(timing(rt).agent_grace_seconds), **kwargs)
    return run_plan(p, workload, seed, settings={"runtime": rt.name, "model": workload.model, **chosen.describe()})
