"""Calibration: the same workload live on the local stack (`sdlab up --autoscale`) and in the simulator.

Live, a pod is a runtime process plus its agent, scaled by `sdlab.local.autoscaler` (the same `KedaScaler`);
"node launch" is the local process start. Measured on the live run and handed to the simulator: the runtime's
seconds per image (mean `timings.run_s` of the notifications) and the pod start (pod in the autoscaler's state →
its agent's `/readyz` answers). Compared: the replica timeline (pods over time: peak and pod-seconds from the first
submit until back to zero) and the queue-drain time (first submit → last completion).

Run the full comparison (plots into docs/img): `python -m sdlab.sim.calibrate --out docs/img`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from sdlab.config import Settings, parse_config
from sdlab.sim import run_plan
from sdlab.sim.engine import Plan
from sdlab.sim.facts import ServiceCurve
from sdlab.sim.result import Result
from sdlab.sim.workload import Workload
from sdlab.wiring import timing

STATE_FILE = "autoscaler.json"


@dataclass
class LiveRun:
    submits: list[float]  # seconds from the first submit
    completions: list[float]
    run_s: list[float]
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, pods, pods ready)
    pod_start_s: list[float] = field(default_factory=list)

    @property
    def drain_s(self) -> float:
        return max(self.completions) - min(self.submits)

    @property
    def service_s(self) -> float:
        return float(np.mean(self.run_s))

    @property
    def mean_pod_start_s(self) -> float:
        return float(np.mean(self.pod_start_s)) if self.pod_start_s else 0.0


def pod_seconds(times: np.ndarray, pods: np.ndarray, until: float | None = None) -> float:
    """Area under a step curve of pod counts (each sample holds until the next)."""
    if len(times) < 2:
        return 0.0
    t = np.asarray(times, dtype=float)
    end = t[-1] if until is None else until
    widths = np.diff(np.append(t, end)).clip(min=0)
    return float((np.asarray(pods, dtype=float) * widths).sum())


class _Sampler(threading.Thread):
    """Reads the autoscaler's state file every 0.2 s; notes when each pod's agent answers /readyz."""

    def __init__(self, home: Path, t0: float) -> None:
        super().__init__(daemon=True)
        self.home, self.t0 = home, t0
        self.samples: list[tuple[float, int, int]] = []
        self.seen: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            now = time.monotonic() - self.t0
            try:
                state = json.loads((self.home / STATE_FILE).read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            pods = [p for ps in state.values() for p in ps if not p.get("stopping")]
            for p in pods:
                self.seen.setdefault(p["name"], now)
                agent = p.get("agent") or {}
                if p["name"] not in self.ready and agent.get("url"):
                    try:
                        if httpx.get(f"{agent['url']}/readyz", timeout=0.5).status_code == 200:
                            self.ready[p["name"]] = now
                    except httpx.HTTPError:
                        pass
            self.samples.append((now, len(pods), sum(1 for p in pods if p["name"] in self.ready)))


def live_run(settings: Settings, runtime: str, home: Path, offsets: list[float], payload: dict[str, Any],
             timeout_s: float = 120.0, *, before: Callable[[], None] | None = None,
             during: Callable[[], None] | None = None) -> LiveRun:
    """Start the stack with --autoscale, submit at `offsets` (seconds), wait for the results and the scale to zero.

    `before` is called once the stack is up and before the first submit, `during` once every task is submitted
    (both while the stack runs: for checks of its processes).
    """
    from sdlab.client import Client
    from sdlab.local import stack as local_stack

    local_stack.up(settings, home, autoscale=True)
    try:
        if before is not None:
            before()
        with Client.from_stack(str(home)) as client:
            t0 = time.monotonic()
            sampler = _Sampler(home, t0)
            sampler.start()
            ids, submits = [], []
            for i, off in enumerate(sorted(offsets)):
                delay = t0 + off - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                submits.append(time.monotonic() - t0)
                ids.append(client.submit(runtime, f"calibration {i}", payload=payload).id)
            if during is not None:
                during()
            deadline = time.monotonic() + timeout_s
            notes = client.wait(ids, timeout=timeout_s)
            # end of each runtime call = submit + time queued + time in the runtime (the agent's own timings)
            completions = {tid: sub + (notes[tid].timings.queued_s or 0.0) + (notes[tid].timings.run_s or 0.0)
                           for tid, sub in zip(ids, submits, strict=True)}
            while time.monotonic() < deadline and (not sampler.samples or sampler.samples[-1][1] > 0):
                time.sleep(0.2)
            sampler.stop.set()
            sampler.join()
    finally:
        local_stack.down(home)
    bad = [n.status.value for n in notes.values() if n.status.value != "completed"]
    if bad or len(notes) < len(ids):
        raise RuntimeError(f"live run: {len(notes)}/{len(ids)} finished, statuses {bad}")
    starts = [sampler.ready[n] - sampler.seen[n] for n in sampler.ready if n in sampler.seen]
    return LiveRun(submits=submits, completions=sorted(completions.values()),
                   run_s=[n.timings.run_s for n in notes.values() if n.timings.run_s is not None],
                   samples=sampler.samples, pod_start_s=starts)


def simulate_local(settings: Settings, runtime: str, live: LiveRun, seed: int = 0) -> Result:
    """The simulator on the live run's arrivals with the live run's measured service time and pod start."""
    rt = settings.runtime(runtime)
    s = rt.scaling
    duration = max(live.submits) + 1e-3
    workload = Workload("live", duration, ({"kind": "trace", "path": "-"},))
    plan = Plan(scaling=s, service=ServiceCurve("cpu", rt.model.name, "sdlab", ((1, live.service_s),), ("measured live",)),
                max_batch=1, gpus_per_node=1000, node_ready_s=0.0, image_pull_s=0.0, model_load_s=live.mean_pod_start_s,
                price_per_hour={"spot": 0.0, "on-demand": 0.0}, capacity_types=("on-demand",), consolidate_after_s=0.0,
                grace_s=float(timing(rt).agent_grace_seconds), hpa_sync_s=min(15.0, float(s.polling_interval_seconds)),
                label="simulator")
    times = np.array(live.submits)
    return run_plan(plan, _Fixed(workload, times), seed)


class _Fixed(Workload):
    """A workload whose arrival times are given."""

    def __init__(self, base: Workload, times: np.ndarray) -> None:
        object.__setattr__(self, "_t", np.sort(times))
        super().__init__(base.name, base.duration_s, base.arrivals)

    def times(self, seed: int | None = None) -> np.ndarray:
        return self._t  # type: ignore[attr-defined, no-any-return]


def compare(live: LiveRun, sim: Result) -> dict[str, Any]:
    ls = np.array(live.samples)
    tl = sim.timeline
    live_ps = pod_seconds(ls[:, 0], ls[:, 1])
    sim_ps = pod_seconds(tl[:, 0], tl[:, 5])
    drain = {"live": round(live.drain_s, 2), "sim": round(sim.drain_s, 2)}
    out: dict[str, Any] = {
        "tasks": len(live.submits),
        "service_s_measured": round(live.service_s, 3),
        "pod_start_s_measured": round(live.mean_pod_start_s, 2),
        "drain_s": drain,
        "pod_seconds": {"live": round(live_ps, 1), "sim": round(sim_ps, 1)},
        "peak_pods": {"live": int(ls[:, 1].max()), "sim": int(tl[:, 5].max())},
        "back_to_zero_s": {"live": _zero_after(ls[:, 0], ls[:, 1]), "sim": _zero_after(tl[:, 0], tl[:, 5])},
    }
    out["drain_error"] = round(abs(drain["sim"] - drain["live"]) / drain["live"], 3)
    out["pod_seconds_error"] = round(abs(sim_ps - live_ps) / live_ps, 3) if live_ps else None
    return out


def _zero_after(t: np.ndarray, pods: np.ndarray) -> float | None:
    """When the pods went back to zero for good (after having been above zero)."""
    up = np.nonzero(pods > 0)[0]
    if not len(up) or up[-1] + 1 >= len(t):
        return None
    return round(float(t[up[-1] + 1]), 1)


def calibration_config(base: dict[str, Any], max_replicas: int = 2, queue_length: int = 2, cooldown_s: int = 5) -> Settings:
    """One runtime, small intervals so a run takes seconds: polling 1 s (the HPA syncs every second locally)."""
    rt = {**base["runtimes"][0], "torch_threads": 1, "batch": {"max_batch": 1},  # the service time of one image
          "scaling": {"min_replicas": 0, "max_replicas": max_replicas, "queue_length": queue_length,
                      "polling_interval_seconds": 1, "cooldown_seconds": cooldown_s}}
    return parse_config({**base, "runtimes": [rt]}, "calibration")


def plot(live: LiveRun, sim: Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ls = np.array(live.samples)
    tl = sim.timeline
    fig, ax = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ax[0].step(ls[:, 0], ls[:, 1], where="post", label="live: pods")
    ax[0].step(tl[:, 0], tl[:, 5], where="post", label="simulator: pods", linestyle="--")
    ax[0].step(ls[:, 0], ls[:, 2], where="post", label="live: pods ready", alpha=0.6)
    ax[0].step(tl[:, 0], tl[:, 4], where="post", label="simulator: pods ready", linestyle=":")
    ax[0].set_ylabel("pods")
    ax[0].legend(fontsize=7)
    done_live = np.arange(1, len(live.completions) + 1)
    ax[1].step(live.completions, done_live, where="post", label="live: completed")
    fin = np.sort(sim.raw["finish"][~np.isnan(sim.raw["finish"])])
    ax[1].step(fin, np.arange(1, len(fin) + 1), where="post", linestyle="--", label="simulator: completed")
    ax[1].set_xlabel("seconds from the first submit")
    ax[1].set_ylabel("tasks completed")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="live local stack vs simulator")
    ap.add_argument("--out", default=None, help="folder for the plot (e.g. docs/img)")
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--max-replicas", type=int, default=2)
    ap.add_argument("--second-burst-at", type=float, default=50.0, help="seconds; 0: one burst")
    args = ap.parse_args(argv)
    base = {"version": 1, "stack": {"name": "sdlabcal", "region": "us-east-1"},
            "runtimes": [{"name": "cal", "type": "sdwebui", "model": {"name": "tiny-a", "variant": "tiny", "seed": 1},
                          "queue": {"visibility_timeout_seconds": 30, "receive_wait_seconds": 2}}]}
    settings = calibration_config(base, max_replicas=args.max_replicas)
    half = args.tasks // 2 if args.second_burst_at else args.tasks
    offsets = [0.0] * half + [args.second_burst_at] * (args.tasks - half)
    with tempfile.TemporaryDirectory() as tmp:
        live = live_run(settings, "cal", Path(tmp), offsets, {"steps": 20, "width": 128, "height": 128})
    sim = simulate_local(settings, "cal", live)
    print(json.dumps(compare(live, sim), indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        plot(live, sim, Path(args.out) / "calibration.png")


if __name__ == "__main__":
    main()
