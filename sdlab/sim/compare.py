"""The comparison in docs/tuning.md: the AWS guidance's defaults (Spot, On-Demand) vs tuned settings vs SageMaker
Asynchronous Inference, on a bursty and a steady reference workload, same arrivals and service times for all.

Run: `python -m sdlab.sim.compare [--out docs/img]` (prints a Markdown table; about a minute).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from sdlab.config import HpaBehavior, HpaPolicy, HpaRules, ScalingSettings, parse_config
from sdlab.sim import run_plan
from sdlab.sim.result import Result
from sdlab.sim.scenario import Choice, plan, sagemaker_plan
from sdlab.sim.tune import tune
from sdlab.sim.workload import load_workload

GUIDANCE_TYPES = ("g6.2xlarge", "g5.2xlarge")

# The guidance chart's defaults (facts/upstream-guidance.md): queueLength 10, pollingInterval 1, cooldownPeriod 60,
# maxReplicaCount 20, scaleOnInFlight false, no HPA behaviour (Kubernetes' defaults: scale-down window 300 s, 100 %/15 s).
GUIDANCE_SCALING = ScalingSettings(min_replicas=0, max_replicas=20, queue_length=10, activation_queue_length=0,
                                   scale_on_in_flight=False, polling_interval_seconds=1, cooldown_seconds=60,
                                   hpa=HpaBehavior(scale_down=HpaRules(stabilization_window_seconds=300, policies=(
                                       HpaPolicy(type="Percent", value=100, period_seconds=15),))))

WORKLOADS = {"bursty": (load_workload("bursty"), 240.0), "steady": (load_workload("steady"), 20.0)}  # (workload, p95 target)

TUNE_CONFIG = {"version": 1, "stack": {"name": "cmp", "region": "us-east-1"},
               "runtimes": [{"name": "webui", "type": "sdwebui", "model": {"name": "sd15"},
                             "nodes": {"instance_types": list(GUIDANCE_TYPES), "capacity_types": ["spot", "on-demand"]}}]}


def guidance(capacity: tuple[str, ...]) -> Choice:
    return Choice("g6.2xlarge", capacity, GUIDANCE_SCALING, max_batch=1, image_mode="soci")


def row(name: str, r: Result) -> dict[str, Any]:
    s = r.summary()
    return {"label": name, "p50_s": s["p50_s"], "p95_s": s["p95_s"], "p99_s": s["p99_s"],
            "cost_per_1000_images_usd": s["cost_per_1000_images_usd"],
            "gpu_per_1000_usd": round((s["cost_breakdown_per_1000_images_usd"]["gpu_spot_usd"] or 0)
                                      + (s["cost_breakdown_per_1000_images_usd"]["gpu_on_demand_usd"] or 0), 4),
            "gpu_utilisation": s["gpu_utilisation"], "max_pods": s["max_pods"], "unfinished": s["unfinished"],
            "spot_interruptions": s["spot_interruptions"]}


def compare(out: str | None = None) -> dict[str, Any]:
    settings = parse_config(TUNE_CONFIG, "compare")
    report: dict[str, Any] = {}
    for wname, (workload, target) in WORKLOADS.items():
        results: list[tuple[str, Result]] = []
        for cap, label in ((("spot", "on-demand"), "guidance defaults, Spot"), (("on-demand",), "guidance defaults, On-Demand")):
            results.append((label, run_plan(plan(guidance(cap), workload.model, label=label), workload)))
        label = "guidance defaults, Spot, pre-pulled image snapshot"
        results.append((label, run_plan(plan(replace(guidance(("spot", "on-demand")), image_mode="snapshot"), workload.model,
                                             label=label), workload)))
        tuned = tune(settings, "webui", workload, target)
        chosen = tuned.chosen or tuned.front[-1]
        c = chosen.choice
        cap_name = "Spot" if "spot" in c.capacity_types else "OD"
        tuned_label = (f"tuned: {c.instance_type} {cap_name}, qLen {c.scaling.queue_length}, "
                       f"min {c.scaling.min_replicas}, max {c.scaling.max_replicas}, cooldown {c.scaling.cooldown_seconds}")
        results.append((tuned_label, run_plan(plan(c, workload.model, label=tuned_label), workload)))
        for target_backlog in (5.0, 1.0):
            p = sagemaker_plan("ml.g5.xlarge", workload.model, target_backlog_per_instance=target_backlog, max_instances=20)
            results.append((p.label, run_plan(p, workload)))
        rows = [row(n, r) for n, r in results]
        report[wname] = {"tasks": len(workload.times()), "p95_target_s": target, "rows": rows,
                         "tuned": chosen.row(), "evaluated": len(tuned.points)}
        if out:
            from pathlib import Path

            from sdlab.sim.plots import compare_bars, pareto, timeline

            Path(out).mkdir(parents=True, exist_ok=True)
            timeline(results[0][1], results[3][1], results[4][1], path=f"{out}/timeline_{wname}.png",
                     title=f"{wname} workload")
            pareto(tuned, path=f"{out}/pareto_{wname}.png")
            compare_bars(rows, path=f"{out}/compare_{wname}.png")
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = []
    for wname, rep in report.items():
        lines.append(f"\n**{wname}** ({rep['tasks']} tasks; tuner target p95 ≤ {rep['p95_target_s']:g} s, "
                     f"{rep['evaluated']} settings simulated)\n")
        lines.append("| setting | p50 s | p95 s | p99 s | $ / 1,000 images | of which GPU | GPU util. | max pods |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in rep["rows"]:
            lines.append(f"| {r['label']} | {r['p50_s']} | {r['p95_s']} | {r['p99_s']} | {r['cost_per_1000_images_usd']} | "
                         f"{r['gpu_per_1000_usd']} | {r['gpu_utilisation']} | {r['max_pods']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="folder for the PNGs (docs/img)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = compare(args.out)
    print(json.dumps(report, indent=2) if args.json else markdown(report))


if __name__ == "__main__":
    main()
