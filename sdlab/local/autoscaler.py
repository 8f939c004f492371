"""Local "pods" scaled by KEDA's formula: `sdlab up --autoscale` runs this instead of fixed runtime+agent pairs.

A pod is a runtime process plus its queue agent. Every second the autoscaler reads each runtime's queue depth
(normal + high, visible and in flight) from SQS, steps a `KedaScaler` with the runtime's `scaling:` values
(the same ones the rendered ScaledObject carries) and reconciles: new pods start their runtime first and their
agent once the runtime answers; scale-in sends the newest pod's agent SIGTERM (warm shutdown: it finishes its
task and releases what it holds), then stops its runtime. Its state goes to `<home>/autoscaler.json` so
`sdlab status` and `sdlab down` see the pods. Run: `python -m sdlab.local.autoscaler --home DIR`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlab.aws import AwsTarget, client
from sdlab.config import Settings, parse_config
from sdlab.local.processes import Proc, alive, free_port, http_ok, spawn, stop
from sdlab.provision import QueueInfo, StackResources
from sdlab.scaling import KedaScaler
from sdlab.wiring import Endpoints, agent_environment, runtime_arguments, timing

log = logging.getLogger(__name__)
STATE_FILE = "autoscaler.json"
PLAN_FILE = "autoscaler-plan.json"  # what `up` hands over: resources, target, models folder, threads
RUNTIME_ENV = {"HF_HUB_OFFLINE": "1"}  # nothing is fetched from a model hub, here or in CI


@dataclass
class Pod:
    name: str
    runtime_name: str  # the configured runtime it serves
    runtime: Proc
    runtime_popen: subprocess.Popen[bytes]
    agent: Proc | None = None
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False


class LocalAutoscaler:
    def __init__(self, settings: Settings, resources: StackResources, target: AwsTarget, models_dir: Path,
                 home: Path, threads: int) -> None:
        self.settings, self.resources, self.target = settings, resources, target
        self.models_dir, self.home, self.threads = models_dir, home, threads
        self.sqs = client("sqs", target)
        sync = min(15.0, min(rt.scaling.polling_interval_seconds for rt in settings.runtimes))
        self.scalers = {rt.name: KedaScaler(rt.scaling, hpa_sync_seconds=sync) for rt in settings.runtimes}
        self.pods: dict[str, list[Pod]] = {rt.name: [] for rt in settings.runtimes}
        self.stop_event = threading.Event()
        self._serial = 0

    def depth(self, queue: QueueInfo) -> tuple[int, int]:
        visible = in_flight = 0
        for url in (queue.url, queue.high_url):
            attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            visible += int(attrs["ApproximateNumberOfMessages"])
            in_flight += int(attrs["ApproximateNumberOfMessagesNotVisible"])
        return visible, in_flight

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.wait(1.0):
            for rt in self.settings.runtimes:
                visible, in_flight = self.depth(self.resources.queues[rt.name])
                desired = self.scalers[rt.name].step(time.monotonic() - t0, visible, in_flight)
                self.reconcile(rt.name, desired)
            self.write_state()
        for name in self.pods:
            for pod in list(self.pods[name]):
                self.stop_pod(pod)
        self.write_state()

    def reconcile(self, runtime: str, desired: int) -> None:
        pods = [p for p in self.pods[runtime] if not p.stopping]
        for pod in pods:  # a started runtime gets its agent once it answers
            if pod.agent is None and http_ok(f"{pod.runtime.url}/healthz")():
                self.start_agent(runtime, pod)
        while len(pods) < desired:
            pods.append(self.start_pod(runtime))
        for pod in sorted(pods, key=lambda p: p.started, reverse=True)[: max(0, len(pods) - desired)]:
            log.info("scale-in %s: stopping pod %s", runtime, pod.name)
            pod.stopping = True
            threading.Thread(target=self.stop_pod, args=(pod,), daemon=True).start()

    def start_pod(self, runtime: str) -> Pod:
        rt = self.settings.runtime(runtime)
        self._serial += 1
        name = f"{runtime}-{self._serial}"
        port = free_port()
        args = ["-m", "sdlab.runtime", *runtime_arguments(rt, models_dir=str(self.models_dir), host="127.0.0.1", port=port,
                                                          threads=rt.torch_threads or self.threads)]
        proc, popen = spawn(f"runtime-{name}", args, RUNTIME_ENV, self.home / "logs" / f"runtime-{name}.log",
                            f"http://127.0.0.1:{port}")
        pod = Pod(name=name, runtime_name=runtime, runtime=proc, runtime_popen=popen)
        self.pods[runtime].append(pod)
        log.info("scale-out %s: started pod %s", runtime, name)
        return pod

    def start_agent(self, runtime: str, pod: Pod) -> None:
        rt = self.settings.runtime(runtime)
        health = free_port()
        env = agent_environment(self.settings, rt, Endpoints.of_stack(self.resources, runtime), self.target,
                                runtime_url=pod.runtime.url or "", health_port=health)
        pod.agent, _ = spawn(f"agent-{pod.name}", ["-m", "agent"], env, self.home / "logs" / f"agent-{pod.name}.log",
                             f"http://127.0.0.1:{health}")

    def stop_pod(self, pod: Pod) -> None:
        if pod.agent is not None:
            # warm: the agent finishes its running task within its grace, as the kubelet allows a pod
            stop([pod.agent], timeout=float(timing(self.settings.runtime(pod.runtime_name)).pod_grace_seconds))
        stop([pod.runtime])
        for pods in self.pods.values():
            if pod in pods:
                pods.remove(pod)

    def write_state(self) -> None:
        state = {name: [{"name": p.name, "runtime": p.runtime.to_dict(), "agent": p.agent.to_dict() if p.agent else None,
                         "stopping": p.stopping} for p in pods] for name, pods in self.pods.items()}
        tmp = self.home / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.home / STATE_FILE)


def pod_processes(home: Path) -> list[Proc]:
    """Every process of every pod recorded in the state file (for `down` and `status`)."""
    path = home / STATE_FILE
    if not path.exists():
        return []
    procs = []
    for pods in json.loads(path.read_text()).values():
        for pod in pods:
            procs += [Proc(**pod["runtime"])] + ([Proc(**pod["agent"])] if pod["agent"] else [])
    return [p for p in procs if alive(p.pid)]


def write_plan(home: Path, settings: Settings, resources: StackResources, target: AwsTarget, models_dir: Path,
               threads: int) -> None:
    plan = {"settings": settings.model_dump(mode="json"), "resources": resources.to_dict(), "region": target.region,
            "endpoint_url": target.endpoint_url, "models_dir": str(models_dir), "threads": threads}
    (home / PLAN_FILE).write_text(json.dumps(plan))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="local pods scaled by KEDA's formula")
    parser.add_argument("--home", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    home = Path(args.home)
    plan = json.loads((home / PLAN_FILE).read_text())
    res = plan["resources"]
    resources = StackResources(**{k: v for k, v in res.items() if k != "queues"},
                               queues={n: QueueInfo(**q) for n, q in res["queues"].items()})
    target = AwsTarget(plan["region"], plan["endpoint_url"])
    scaler = LocalAutoscaler(parse_config(plan["settings"], "autoscaler plan"), resources, target,
                             Path(plan["models_dir"]), home, plan["threads"])

    def on_term(signum: int, frame: Any) -> None:
        scaler.stop_event.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info("autoscaler for %s (pid %d)", ", ".join(scaler.pods), os.getpid())
    scaler.run()


if __name__ == "__main__":
    main()
