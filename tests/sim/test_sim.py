"""The simulator: facts with sources, workloads and traces, the engine's bookkeeping, SageMaker, the CLI, --write."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sdlab.config import ScalingSettings, load_config
from sdlab.errors import ConfigError
from sdlab.sim import run_plan, simulate
from sdlab.sim.facts import load_facts
from sdlab.sim.scenario import Choice, plan, sagemaker_plan
from sdlab.sim.workload import Workload, bursty, load_workload, read_trace, steady, write_trace

ROOT = Path(__file__).resolve().parents[2]
BURST = Workload("burst", 600.0, ({"kind": "burst", "at_s": 10.0, "count": 200},), "sd15-512-16")


def _plan(instance="g6.2xlarge", caps=("on-demand",), **scaling):
    s = ScalingSettings(**{"max_replicas": 8, "queue_length": 4, "polling_interval_seconds": 5, "cooldown_seconds": 60,
                           **scaling})
    return plan(Choice(instance, caps, s, max_batch=1), "sd15-512-16")


def test_facts_rows_all_carry_a_source_and_a_date():
    facts = load_facts()
    assert facts.as_of and facts.prices_as_of
    for t in facts.instance_types.values():
        assert t.source and t.gpus >= 1 and t.price("on-demand", "us-east-1") > t.price("spot", "us-east-1") > 0
    assert all(r["source"] for r in facts.service_rows)
    assert all(v["source"] for v in facts.fixed_costs.values())
    with pytest.raises(ConfigError, match="refresh prices"):
        facts.instance("g5.xlarge").price("spot", "eu-north-9")


def test_service_curve_interpolates_between_measured_batches():
    curve = load_facts().service("H100", "sd15-512-25", "sdlab")
    assert curve.seconds(1) == pytest.approx(0.193) and curve.seconds(16) == pytest.approx(1.895)
    assert curve.seconds(1) < curve.seconds(4) < curve.seconds(8)
    assert curve.seconds(32) == pytest.approx(2 * 1.895)  # beyond the table: the last per-image rate


def test_trace_round_trip_and_bad_trace(tmp_path):
    times = np.array([0.0, 0.5, 3.25, 10.0])
    write_trace(tmp_path / "t.csv", times[::-1])
    assert read_trace(tmp_path / "t.csv").tolist() == times.tolist()
    w = load_workload(tmp_path / "t.csv")
    assert w.times().tolist() == times.tolist()
    (tmp_path / "bad.csv").write_text("when\n1\n")
    with pytest.raises(ConfigError, match="`t` column"):
        read_trace(tmp_path / "bad.csv")


def test_shipped_reference_workloads_load_by_name():
    bursty_ref = load_workload("bursty")
    assert bursty_ref.duration_s == 10800 and (bursty_ref.times() == 900).sum() == 400
    assert abs(len(load_workload("day").times()) - 1_000_000) < 5000


def test_workload_file_sums_its_arrivals(tmp_path):
    write_trace(tmp_path / "rec.csv", np.array([5.0, 6.0]))
    (tmp_path / "w.yaml").write_text(
        "name: mix\nduration_s: 3600\nmodel: sd15-512-25\nseed: 3\narrivals:\n"
        "  - {kind: poisson, rate_per_s: 0.5}\n  - {kind: burst, at_s: 100, count: 50}\n"
        "  - {kind: diurnal, mean_per_s: 1.0, peak_to_mean: 1.5, period_s: 3600}\n  - {kind: trace, path: rec.csv}\n")
    w = load_workload(tmp_path / "w.yaml")
    n = len(w.times())
    assert w.model == "sd15-512-25" and np.all(np.diff(w.times()) >= 0)
    assert 3600 * 1.5 + 52 - 300 < n < 3600 * 1.5 + 52 + 300  # Poisson 0.5/s + diurnal mean 1/s + 50 + 2
    assert w.times().tolist() == w.times().tolist()  # same seed, same arrivals
    (tmp_path / "bad.yaml").write_text("duration_s: 10\narrivals:\n  - {kind: wave}\n")
    with pytest.raises(ConfigError, match="kind 'wave'"):
        load_workload(tmp_path / "bad.yaml").times()


def test_burst_from_zero_every_task_once_and_back_to_zero():
    r = run_plan(_plan(), BURST)
    s = r.summary()
    assert s["completed"] == s["tasks"] == 200 and s["unfinished"] == 0
    assert np.all(r.raw["finish"] >= r.raw["start"]) and np.all(r.raw["start"] >= r.raw["arrivals"])
    tl = r.timeline
    assert tl[-1, 5] == 0 and tl[-1, 6] == 0, "pods and nodes back to zero"
    assert s["max_pods"] == 8 and s["max_nodes"] == 8  # one GPU per g6.2xlarge
    # the first task waits for KEDA's poll, a node, the image and the model
    facts = load_facts()
    cold = facts.instance("g6.2xlarge").node_ready_s + facts.image_pull_s("snapshot") + facts.model_load_s["sd15-512-16"]
    assert r.waits.min() >= cold


def test_on_demand_cost_is_node_seconds_times_price():
    p = _plan()
    r = run_plan(p, BURST)
    node_s = sum(end - start for _, cap, start, end in r.raw["nodes"] if cap == "on-demand")
    assert r.cost()["gpu_on_demand_usd"] == pytest.approx(node_s / 3600 * p.price_per_hour["on-demand"])
    assert r.cost()["gpu_spot_usd"] == 0
    assert r.cost()["fixed_usd"] == pytest.approx(r.raw["end_s"] / 3600 * load_facts().fixed_usd_per_hour())


def test_multi_gpu_nodes_hold_several_pods():
    r = run_plan(_plan("g5.12xlarge"), BURST)
    assert r.summary()["max_pods"] == 8 and r.summary()["max_nodes"] == 2


def test_pre_pulled_snapshot_beats_a_cold_image_pull():
    fast = run_plan(_plan(), BURST).summary()
    slow = run_plan(replace(_plan(), image_pull_s=load_facts().image_pull_s("standard")), BURST).summary()
    assert slow["p95_s"] > fast["p95_s"] + 200


def test_warm_pool_keeps_one_node_and_cuts_latency():
    cold = run_plan(_plan(), steady(0.01, 3600)).summary()
    warm = run_plan(_plan(min_replicas=1), steady(0.01, 3600)).summary()
    assert warm["p95_s"] < 5 < cold["p95_s"]  # a cold start per sparse task vs an idle warm pod
    assert warm["nodes_launched"] == 1 < cold["nodes_launched"]


def test_spot_interruptions_release_and_retry_lose_nothing():
    # grace shorter than a call: a drained pod gives its task back (the agent's release) for another pod to run
    p = replace(_plan(caps=("spot",)), interruptions_per_hour=20.0, spot_unavailable_probability=0.2, grace_s=1.0)
    r = run_plan(p, steady(1.5, 1800, seed=4))
    s = r.summary()
    assert s["spot_interruptions"] > 3 and s["tasks_released_for_retry"] > 0 and s["spot_unavailable"] > 0
    assert s["unfinished"] == 0 and s["completed"] == s["tasks"]
    assert r.cost()["gpu_on_demand_usd"] == 0  # Spot only: no On-Demand fallback


def test_sagemaker_async_scales_from_zero_on_backlog_and_back():
    p = sagemaker_plan("ml.g5.xlarge", "sd15-512-16", target_backlog_per_instance=5, max_instances=4)
    r = run_plan(p, BURST)
    s = r.summary()
    assert s["unfinished"] == 0 and s["max_pods"] == 4 and r.timeline[-1, 5] == 0
    # two 1-minute datapoints of HasBacklogWithoutCapacity (the first may come right after the burst), then the start
    assert r.waits.min() >= 60 + 240
    assert s["cost_breakdown_usd"]["fixed_usd"] == 0


def test_old_api_still_answers():
    from sdlab.sim import burst

    res = simulate(ScalingSettings(queue_length=4, max_replicas=4, cooldown_seconds=60, polling_interval_seconds=5),
                   burst(2.0, 0, 120), duration_s=300, seconds_per_image=1.0, cold_start_seconds=30)
    assert res.unfinished == 0 and len(res.latencies) == res.arrivals > 150
    assert res.summary(price_per_hour=1.0)["usd_per_1000_images"] > 0


def test_simulate_from_config_names_p95_and_cost():
    s = simulate(load_config(ROOT / "sdlab.yaml"), "webui-a", bursty(duration_s=1200, burst_count=60, bursts=1)).summary()
    for key in ("p50_s", "p95_s", "p99_s", "queue_wait_p95_s", "cost_per_1000_images_usd", "gpu_utilisation", "throughput_per_s"):
        assert s[key] is not None and not (isinstance(s[key], float) and math.isnan(s[key]))
    assert s["settings"]["instance_type"] == "g6.xlarge"  # Karpenter's pick: cheapest Spot of the runtime's types


def _sdlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sdlab", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_cli_sim_json_and_tune_write_keep_comments_and_render(tmp_path):
    config = tmp_path / "sdlab.yaml"
    config.write_text((ROOT / "sdlab.yaml").read_text())
    (tmp_path / "w.yaml").write_text("name: small\nduration_s: 900\narrivals:\n  - {kind: burst, at_s: 30, count: 40}\n"
                                     "  - {kind: poisson, rate_per_s: 0.02}\n")
    out = _sdlab("sim", "--config", str(config), "--runtime", "webui-a", "--workload", "w.yaml", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["tasks"] > 40 and summary["p95_s"] > 0 and summary["cost_per_1000_images_usd"] > 0
    out = _sdlab("sim", "--config", str(config), "--workload", "w.yaml", "--sagemaker", "ml.g5.xlarge", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    managed = json.loads(out.stdout)
    assert managed["tasks"] == summary["tasks"] and managed["cost_breakdown_usd"]["fixed_usd"] == 0

    out = _sdlab("tune", "--config", str(config), "--runtime", "webui-a", "--workload", "w.yaml", "--p95", "600",
                 "--instance-types", "g6.xlarge,g5.xlarge", "--write", cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "Pareto front" in out.stdout and "chosen" in out.stdout
    text = config.read_text()
    assert "# sdlab configuration: one file drives" in text and "# prefix of every resource name" in text
    tuned = load_config(config).runtime("webui-a")
    assert tuned.nodes.instance_types[0] in ("g6.xlarge", "g5.xlarge") and len(tuned.nodes.instance_types) == 1
    assert load_config(config).runtime("diffusers-b") == load_config(ROOT / "sdlab.yaml").runtime("diffusers-b")

    rendered = tmp_path / "manifests"
    out = _sdlab("--config", str(config), "k8s", "render", "--out", str(rendered), "--account-id", "123456789012", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    so = next(p for p in rendered.rglob("*.yaml") if "webui-a" in p.name and "scaledobject" in p.read_text().lower()[:300])
    assert f'queueLength: "{tuned.scaling.queue_length}"' in so.read_text() or \
        f"queueLength: '{tuned.scaling.queue_length}'" in so.read_text()


def test_prices_refresh_from_spot_history_on_moto(moto_server, tmp_path, monkeypatch):
    from sdlab.aws import AwsTarget
    from sdlab.sim.prices import refresh

    out = tmp_path / "prices.json"
    doc = refresh(AwsTarget("us-east-1", moto_server), out, ["g5.xlarge", "g6.xlarge"])
    assert doc["prices"]["g5.xlarge"]["spot_typical"]["us-east-1"] > 0  # moto answers the Spot price history
    assert any("On-Demand" in n for n in doc["notes"]) or "on_demand" in doc["prices"]["g5.xlarge"]  # moto lacks Pricing
    facts = load_facts(out)
    assert facts.instance("g5.xlarge").price("spot", "us-east-1") == doc["prices"]["g5.xlarge"]["spot_typical"]["us-east-1"]
    assert "refreshed" in facts.instance("g5.xlarge").source


def test_hpa_behaviour_from_config_slows_the_simulated_scale_up():
    from sdlab.config import HpaBehavior, HpaPolicy, HpaRules

    slow_up = HpaBehavior(scale_up=HpaRules(policies=(HpaPolicy(type="Pods", value=1, period_seconds=120),)))
    default = run_plan(_plan(), BURST)
    slow = run_plan(_plan(hpa=slow_up), BURST)
    def first(r, n):
        return r.timeline[np.nonzero(r.timeline[:, 3] >= n)[0][0], 0]

    assert first(default, 8) - first(default, 1) <= 30  # Kubernetes' default: +4 pods or +100 % per 15 s
    assert first(slow, 3) - first(slow, 2) == 120  # then +1 pod per 2 minutes (the 0 → 1 was KEDA, not the HPA)
    assert slow.summary()["max_pods"] < 8 and slow.summary()["p95_s"] > default.summary()["p95_s"]


def test_pareto_front_keeps_only_undominated_points():
    from sdlab.sim.tune import Point, pareto

    def pt(cost, p95, unfinished=0):
        return Point(Choice("g6.xlarge"), {"cost_per_1000_images_usd": cost, "p95_s": p95, "unfinished": unfinished})

    pts = [pt(1.0, 100), pt(2.0, 50), pt(1.5, 120), pt(3.0, 50), pt(0.5, 10, unfinished=3), pt(4.0, 20)]
    assert [(p.cost, p.p95) for p in pareto(pts)] == [(1.0, 100), (2.0, 50), (4.0, 20)]


def test_agent_prefetch_holds_one_more_batch_in_flight():
    p = _plan(max_replicas=2)
    with_prefetch = run_plan(p, BURST)
    without = run_plan(replace(p, prefetch=False), BURST)
    assert with_prefetch.timeline[:, 2].max() == 4  # 2 pods: one call running + one message buffered each
    assert without.timeline[:, 2].max() == 2
    assert with_prefetch.summary()["completed"] == without.summary()["completed"] == 200
