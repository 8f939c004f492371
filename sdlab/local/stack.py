"""`sdlab up` / `down` / `status`: the whole stack as local processes on 127.0.0.1.

`up` runs, in order: 1. the moto server (AWS APIs); 2. provisioning (the same `ensure_*` as on AWS);
3. models (build, upload under the model prefix, sync down as Mountpoint would present them);
4. the API gateway; 5. one runtime per configured runtime; 6. one queue agent beside each.
It returns when every part answers its health check and writes `<home>/stack.json`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sdlab import envvars
from sdlab.aws import AwsTarget, client
from sdlab.config import Settings, parse_config
from sdlab.errors import StackError
from sdlab.local import motoserver
from sdlab.local.autoscaler import RUNTIME_ENV, pod_processes, write_plan
from sdlab.local.processes import Proc, alive, free_port, http_ok, spawn, stop, wait_until
from sdlab.models import build_or_locate, sync_models, upload_model, uploaded
from sdlab.provision import provision
from sdlab.wiring import Endpoints, agent_environment, api_environment, callback_environment, runtime_arguments, timing
from sdlab.workflows import upload_workflows

log = logging.getLogger(__name__)
STACK_FILE = "stack.json"
START_TIMEOUT_SECONDS = 600.0


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """Explicit > $SDLAB_HOME > ./.sdlab"""
    return Path(home or os.environ.get(envvars.HOME) or ".sdlab").resolve()


def read_stack(home: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    path = home_dir(home) / STACK_FILE
    return json.loads(path.read_text()) if path.exists() else None


class Progress(Protocol):
    """Told the name of each step of `up` as it begins (`sdlab.workshop.progress.UpBar` draws a tqdm bar)."""

    def __call__(self, step: str) -> None: ...


UP_STEPS = ("moto server", "provisioning", "models", "gateway", "runtimes", "agents")


@dataclass
class _Starting:
    """Processes started so far, so a failed `up` can stop exactly those."""

    procs: list[Proc]
    popens: dict[str, subprocess.Popen[bytes]]

    def start(self, name: str, args: list[str], env: dict[str, str], logs: Path, url: str | None = None) -> Proc:
        proc, popen = spawn(name, args, env, logs / f"{name}.log", url)
        self.procs.append(proc)
        self.popens[name] = popen
        return proc

    def wait(self, proc: Proc, url: str, timeout: float) -> None:
        wait_until(http_ok(url), self.popens[proc.name], proc, timeout)


def up(settings: Settings, home: str | os.PathLike[str] | None = None, *, timeout: float = START_TIMEOUT_SECONDS,
       autoscale: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Bring the local stack up; returns what is written to stack.json.

    `progress`, when given, is called with each step's name (`UP_STEPS`) as it begins.

    With `autoscale`, runtimes and agents are not started here: the local autoscaler starts and stops them as
    KEDA would, from queue depth and each runtime's `scaling:` values (from zero when `min_replicas` is 0)."""
    root = home_dir(home)
    existing = read_stack(root)
    if existing and any(alive(p["pid"]) for p in existing["processes"]):
        raise StackError(f"a stack is already running from {root}; run `sdlab down` first")
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = _Starting([], {})
    t0 = time.monotonic()
    step = progress or (lambda name: None)
    try:
        # 1. AWS APIs
        step("moto server")
        moto = motoserver.start(logs / "moto.log")
        started.procs.append(moto.proc)
        endpoint = moto.url
        target = AwsTarget(region=settings.stack.region, endpoint_url=endpoint)

        # 2. queues, topics, table, bucket
        step("provisioning")
        resources = provision(settings, target)

        # 3. models: build/locate, upload, sync down as the mounted model prefix
        step("models")
        s3 = client("s3", target)
        for model in {rt.model.name: rt.model for rt in settings.runtimes}.values():
            if not uploaded(s3, resources.bucket, settings.stack.model_prefix, model.name):
                upload_model(s3, resources.bucket, settings.stack.model_prefix, model.name,
                             build_or_locate(model, root / "cache" / "models"))
        models_dir = root / "mnt" / settings.stack.model_prefix
        sync_models(s3, resources.bucket, settings.stack.model_prefix, models_dir)
        upload_workflows(s3, resources.bucket, settings.stack.workflow_prefix)  # named ComfyUI templates

        # 4. API gateway + Lambda handler
        step("gateway")
        api_key = secrets.token_urlsafe(24)
        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        gateway_env = {**api_environment(settings, resources, target), envvars.API_KEYS: api_key,
                       envvars.STATUS_BASE_URL: api_url}
        gateway = started.start("gateway", ["-m", "sdlab.api.gateway", "--port", str(api_port)], gateway_env, logs, api_url)

        # webhooks: the dispatcher Lambda's local event source mapping (private destinations allowed locally)
        callback_secret = secrets.token_urlsafe(24)
        started.start("callbacks", ["-m", "sdlab.api.callbacks"],
                      {**callback_environment(resources, target, callback_secret), envvars.CALLBACK_ALLOW_PRIVATE: "1"}, logs)

        # 5. runtimes (started together: model loading overlaps)
        step("runtimes")
        threads = max(1, (os.cpu_count() or 2) // len(settings.runtimes))
        runtimes: dict[str, dict[str, Any]] = {}
        for rt in (settings.runtimes if not autoscale else ()):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            args = ["-m", "sdlab.runtime", *runtime_arguments(rt, models_dir=str(models_dir), host="127.0.0.1", port=port,
                                                              threads=rt.torch_threads or threads)]
            started.start(f"runtime-{rt.name}", args, RUNTIME_ENV, logs, url)
            runtimes[rt.name] = {"type": rt.type, "model": rt.model.name, "runtime_url": url}
        started.wait(gateway, f"{api_url}/_gateway/health", 60)
        if autoscale:
            write_plan(root, settings, resources, target, models_dir, threads)
            started.start("autoscaler", ["-m", "sdlab.local.autoscaler", "--home", str(root)], {}, logs)
            for rt in settings.runtimes:
                queue = resources.queues[rt.name]
                runtimes[rt.name] = {"type": rt.type, "model": rt.model.name, "queue_url": queue.url,
                                     "high_queue_url": queue.high_url, "dlq_url": queue.dlq_url, "autoscaled": True}
        for rt in (settings.runtimes if not autoscale else ()):
            proc = next(p for p in started.procs if p.name == f"runtime-{rt.name}")
            started.wait(proc, f"{runtimes[rt.name]['runtime_url']}/healthz", timeout)

        # 6. one agent beside each runtime
        step("agents")
        for rt in (settings.runtimes if not autoscale else ()):
            health_port = free_port()
            env = agent_environment(settings, rt, Endpoints.of_stack(resources, rt.name), target,
                                    runtime_url=runtimes[rt.name]["runtime_url"], health_port=health_port)
            proc = started.start(f"agent-{rt.name}", ["-m", "agent"], env, logs, f"http://127.0.0.1:{health_port}")
            started.wait(proc, f"http://127.0.0.1:{health_port}/readyz", 60)
            queue = resources.queues[rt.name]
            runtimes[rt.name] |= {"queue_url": queue.url, "high_queue_url": queue.high_url, "dlq_url": queue.dlq_url,
                                  "agent_url": f"http://127.0.0.1:{health_port}"}
    except BaseException:
        stop(started.procs)
        raise

    stack = {
        "stack": settings.stack.name,
        "api_url": api_url,
        "api_key": api_key,
        "callback_secret": callback_secret,
        "aws_endpoint_url": endpoint,
        "region": target.region,
        "bucket": resources.bucket,
        "output_prefix": settings.stack.output_prefix,
        "task_table": resources.table,
        "tasks_topic_arn": resources.tasks_topic_arn,
        "results_topic_arn": resources.results_topic_arn,
        "runtimes": runtimes,
        "autoscale": autoscale,
        "settings": settings.model_dump(mode="json"),
        "processes": [p.to_dict() for p in started.procs],
        "logs": str(logs),
        "started_at": time.time(),
        "startup_seconds": round(time.monotonic() - t0, 2),
    }
    (root / STACK_FILE).write_text(json.dumps(stack, indent=2))
    log.info("stack up in %.1f s", stack["startup_seconds"])
    return stack


def down(home: str | os.PathLike[str] | None = None) -> list[str]:
    """Stop every process `up` started (agents first, so they finish warm). Returns the names stopped."""
    root = home_dir(home)
    stack = read_stack(root)
    if stack is None:
        return []
    procs = [Proc(**p) for p in stack["processes"]]
    # the autoscaler stops its pods warm when asked; whatever it left (it was killed) is stopped here
    still = stop([p for p in procs if p.name == "autoscaler"], timeout=90.0)
    pods = pod_processes(root)
    agents = [p for p in procs + pods if p.name.startswith("agent-")]
    # warm: each agent finishes its running task within its grace (sdlab.wiring.timing), as in a pod
    config = stack.get("settings")
    grace = max((timing(rt).pod_grace_seconds for rt in parse_config(config).runtimes), default=30) if config else 30.0
    still += stop(agents, timeout=float(grace))
    still += stop([p for p in procs + pods if p not in agents and p.name != "autoscaler"])
    if still:
        raise StackError(f"could not stop {still}; kill them by pid from {root / STACK_FILE}")
    (root / STACK_FILE).unlink()
    return [p.name for p in procs]


def status(home: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Each process of the running stack with whether it is alive and healthy."""
    stack = read_stack(home)
    if stack is None:
        return []
    rows = []
    for p in stack["processes"] + [pod.to_dict() for pod in pod_processes(home_dir(home))]:
        url = p.get("url")
        health = {"moto": "/moto-api/", "gateway": "/_gateway/health"}.get(p["name"])
        if health is None:
            health = "/readyz" if p["name"].startswith("agent-") else "/healthz"
        running = alive(p["pid"])
        # a process without an HTTP endpoint (the callback poller) is healthy while it runs
        rows.append({**p, "alive": running, "healthy": bool(running and (not url or http_ok(url + health)()))})
    return rows
