"""`python -m agent.bench`: the agent against a fixed-time runtime under backlog.

Prints the runtime's busy fraction (target ≥ 98 %) and the agent's overhead per task: the runtime's idle time
between one call's end and the next call's start (target p50 ≤ 20 ms). Everything is real: a moto server
process, the API gateway process, a fixed-time runtime process, and the agent's own Worker (in this process, so
its timings can be read directly).
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agent.effects import Clients
from agent.main import AGENT_SWITCH_INTERVAL_SECONDS
from agent.runtimes import adapter_for
from agent.settings import AgentSettings
from agent.worker import Worker
from sdlab import envvars
from sdlab.aws import AwsTarget, client
from sdlab.client import Client
from sdlab.config import parse_config
from sdlab.local import motoserver
from sdlab.local.processes import free_port, http_ok, spawn, stop, wait_until
from sdlab.provision import provision
from sdlab.taskstore import TaskStore
from sdlab.wiring import Endpoints, agent_environment, api_environment


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(tasks: int, seconds_per_image: float, visibility: int = 30) -> dict[str, float]:
    config = parse_config({"stack": {"name": "bench"}, "runtimes": [{
        "name": "fixed", "model": {"name": "fixed"},
        "queue": {"visibility_timeout_seconds": visibility, "receive_wait_seconds": 1}}]})
    home = Path(tempfile.mkdtemp(prefix="sdlab-agent-bench-"))
    procs = []
    try:
        api_port, rt_port = free_port(), free_port()
        moto = motoserver.start(home / "moto.log")
        procs.append(moto.proc)
        target = AwsTarget("us-east-1", moto.url)
        resources = provision(config, target)
        key = secrets.token_urlsafe(16)
        api_url = f"http://127.0.0.1:{api_port}"
        gateway = spawn("gateway", ["-m", "sdlab.api.gateway", "--port", str(api_port)],
                        {**api_environment(config, resources, target), envvars.API_KEYS: key}, home / "gateway.log")
        runtime = spawn("runtime", ["-m", "agent.bench.fixed_runtime", "--port", str(rt_port),
                                    "--seconds-per-image", str(seconds_per_image)], {}, home / "runtime.log")
        procs += [gateway[0], runtime[0]]
        wait_until(http_ok(f"{api_url}/_gateway/health"), gateway[1], gateway[0], 60)
        runtime_url = f"http://127.0.0.1:{rt_port}"
        wait_until(http_ok(f"{runtime_url}/sdapi/v1/options"), runtime[1], runtime[0], 30)

        # 1. the backlog, through the real API
        with Client(api_url, key, target, resources.bucket, resources.results_topic_arn, "bench") as api:
            ids = [api.submit("fixed", f"bench {i}", payload={"steps": 4, "width": 64, "height": 64}).id
                   for i in range(tasks)]

            # 2. the agent drains it
            rt = config.runtimes[0]
            env = agent_environment(config, rt, Endpoints.of_stack(resources, rt.name), target, runtime_url=runtime_url,
                                    health_port=0)
            settings = AgentSettings.from_env(env)
            clients = Clients(sqs=client("sqs", target), s3=client("s3", target), sns=client("sns", target),
                              store=TaskStore(client("dynamodb", target), resources.table))
            worker = Worker(settings, clients, adapter_for("sdwebui", runtime_url, 60))
            t0 = time.monotonic()
            worker.run(burst=True)
            wall = time.monotonic() - t0
            notes = api.wait(ids, timeout=120)
        completed = sum(1 for n in notes.values() if n.status.value == "completed")
        gaps_ms = [g * 1000 for g in worker.idle_gaps]
        per_call = worker.busy_seconds / tasks
        window = worker.call_window_seconds()
        return {
            "tasks": tasks, "completed": completed, "seconds_per_image": seconds_per_image,
            "wall_seconds": round(wall, 2), "busy_fraction": round(worker.busy_fraction(), 4),
            "overhead_ms_p50": round(statistics.median(gaps_ms), 2), "overhead_ms_p95": round(_percentile(gaps_ms, 0.95), 2),
            "overhead_ms_max": round(max(gaps_ms), 2),
            # time inside each call beyond the runtime's own work: HTTP, JSON, base64, thread scheduling
            "call_overhead_ms_mean": round(1000 * (per_call - seconds_per_image), 2),
            "runtime_work_fraction": round(tasks * seconds_per_image / window, 4),
            "throughput_per_s": round(tasks / window, 2), "ideal_per_s": round(1 / seconds_per_image, 2),
        }
    finally:
        stop(procs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seconds-per-image", type=float, default=0.2)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.setswitchinterval(AGENT_SWITCH_INTERVAL_SECONDS)
    figures = run(args.tasks, args.seconds_per_image)
    if args.json:
        print(json.dumps(figures))
        return
    for name, value in figures.items():
        print(f"{name:<20} {value}")
    print(f"\nruntime busy {100 * figures['busy_fraction']:.2f} % (target >= 98 %); "
          f"agent overhead per task p50 {figures['overhead_ms_p50']} ms (target <= 20 ms)")


if __name__ == "__main__":
    main()
