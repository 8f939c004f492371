"""`sdlab sim` and `sdlab tune` (argparse only here; numpy and the engine load when a command runs)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _workload(path: str | None) -> Any:
    from sdlab.sim.workload import bursty, load_workload

    return load_workload(path) if path else bursty()


def _cmd_sim(args: argparse.Namespace) -> int:
    from sdlab.config import config_path, load_config
    from sdlab.sim import simulate
    from sdlab.sim.bench import bench
    from sdlab.sim.scenario import choice_from_config, runtime_settings

    if args.bench:
        out = bench(args.requests)
        print(json.dumps(out, indent=2) if args.json else
              f"a simulated day of {out['requests']:,} requests took {out['total_s']} s (target < 30 s)")
        return 0
    settings = load_config(args.config)
    rt = runtime_settings(settings, args.runtime)
    workload = _workload(args.workload)
    choice = choice_from_config(rt, settings.stack.region)
    if args.instance_type or args.capacity:
        from dataclasses import replace

        choice = replace(choice, instance_type=args.instance_type or choice.instance_type,
                         capacity_types=tuple(args.capacity.split(",")) if args.capacity else choice.capacity_types)
    if args.sagemaker:  # the managed alternative on the same workload
        from sdlab.sim import run_plan
        from sdlab.sim.scenario import sagemaker_plan

        p = sagemaker_plan(args.sagemaker, workload.model, target_backlog_per_instance=args.backlog_target,
                           min_instances=rt.scaling.min_replicas, max_instances=rt.scaling.max_replicas,
                           region=settings.stack.region)
        result = run_plan(p, workload, args.seed, settings={"sagemaker": args.sagemaker, "backlog_target": args.backlog_target})
    else:
        result = simulate(settings, rt.name, workload, choice=choice, seed=args.seed)
    summary = result.summary()
    summary["config"] = str(config_path(args.config))
    summary["workload"] = {"name": workload.name, "duration_s": workload.duration_s, "model": workload.model}
    if args.timeline:
        summary["timeline"] = result.timeline_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{rt.name} on {workload.name} ({summary['tasks']} tasks, {workload.model}): {summary['label']}")
    for key in ("p50_s", "p95_s", "p99_s", "queue_wait_p95_s", "drain_s", "cost_per_1000_images_usd", "gpu_utilisation",
                "max_pods", "max_nodes", "spot_interruptions", "unfinished"):
        print(f"  {key:<26} {summary[key]}")
    for key, value in summary["cost_breakdown_per_1000_images_usd"].items():
        print(f"    {key:<24} {value}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from sdlab.config import config_path, load_config
    from sdlab.sim.tune import tune, write_choice
    from sdlab.sim.workload import load_workload

    settings = load_config(args.config)
    workload = load_workload(args.workload)
    types = tuple(args.instance_types.split(",")) if args.instance_types else None
    result = tune(settings, args.runtime, workload, args.p95, instance_types=types)
    if args.plot:
        from sdlab.sim.plots import pareto

        pareto(result, path=args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"{len(result.points)} settings simulated on {workload.name}; Pareto front (cost per 1,000 images vs p95):")
        print(f"  {'type':<12} {'capacity':<18} {'qLen':>4} {'act':>3} {'min':>3} {'max':>3} {'cool':>5} "
              f"{'p95 s':>8} {'$/1000':>8}")
        for p in result.front:
            r = p.row()
            print(f"  {r['instance_type']:<12} {'+'.join(r['capacity_types']):<18} {r['queue_length']:>4} "
                  f"{r['activation_queue_length']:>3} {r['min_replicas']:>3} {r['max_replicas']:>3} {r['cooldown_seconds']:>5} "
                  f"{r['p95_s']:>8} {r['cost_per_1000_images_usd']:>8}")
        for note in result.notes:
            print(f"note: {note}")
        if result.chosen:
            print(f"chosen (cheapest with p95 ≤ {args.p95} s): {json.dumps(result.chosen.row())}")
    if result.chosen is None:
        return 1
    if args.write:
        path = config_path(args.config)
        write_choice(path, args.runtime, result.chosen.choice)
        print(f"wrote the chosen settings into {path}; `sdlab k8s render` renders them")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sim", help="simulate a runtime on EKS (KEDA, Karpenter, Spot): latency, cost, timelines")
    # --config here as well as before the command (`sdlab sim --config sdlab.yaml`); SUPPRESS keeps the global value
    s.add_argument("--config", default=argparse.SUPPRESS, help="config file (as `sdlab --config`)")
    s.add_argument("--runtime", default=None, help="runtime name (default: the first)")
    s.add_argument("--workload", default=None,
                   help="workload YAML, trace CSV, or a shipped one: bursty, steady, day (docs/tuning.md); "
                        "default: a bursty hour")
    s.add_argument("--instance-type", default=None, help="instead of Karpenter's pick from nodes.instance_types")
    s.add_argument("--capacity", default=None, help="spot,on-demand | on-demand | spot")
    s.add_argument("--sagemaker", default=None, metavar="ML_TYPE",
                   help="simulate SageMaker Asynchronous Inference on this ml.* type instead (min/max from the runtime)")
    s.add_argument("--backlog-target", type=float, default=5.0, help="with --sagemaker: ApproximateBacklogSizePerInstance target")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--timeline", action="store_true", help="include the timelines in the JSON")
    s.add_argument("--json", action="store_true")
    s.add_argument("--bench", action="store_true", help="time a simulated day of --requests requests")
    s.add_argument("--requests", type=int, default=1_000_000)
    s.set_defaults(fn=_cmd_sim)
    t = sub.add_parser("tune", help="search instance types, Spot and KEDA values for a p95 target; --write edits sdlab.yaml")
    t.add_argument("--config", default=argparse.SUPPRESS, help="config file (as `sdlab --config`)")
    t.add_argument("--runtime", required=True)
    t.add_argument("--workload", required=True, help="workload YAML, trace CSV, or a shipped one: bursty, steady, day")
    t.add_argument("--p95", type=float, required=True, help="target p95 end-to-end latency, seconds")
    t.add_argument("--instance-types", default=None, help="comma-separated types to search (default: config + g-family)")
    t.add_argument("--plot", default=None, help="write the Pareto front as a PNG here")
    t.add_argument("--write", action="store_true", help="edit sdlab.yaml (comments kept)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(fn=_cmd_tune)
