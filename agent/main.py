"""Entry point: `python -m agent` with SDLAB_* variables set (see agent/settings.py)."""

from __future__ import annotations

import argparse
import logging
import sys

from agent import health, logs, metrics
from agent.inputs import TaskInputs
from agent.runtimes import adapter_for
from agent.settings import AgentSettings
from agent.worker import Clients, Worker
from sdlab.aws import client
from sdlab.errors import ConfigError
from sdlab.taskstore import TaskStore

log = logging.getLogger("agent")
# The runtime-call thread waits on a socket while finisher threads do CPU-bound boto3 work; a short GIL switch
# interval lets it pick up the runtime's answer promptly (measured: 12 ms -> 3.5 ms per call, docs/benchmarks.md).
AGENT_SWITCH_INTERVAL_SECONDS = 0.001


def build_worker(settings: AgentSettings) -> Worker:
    clients = Clients(
        sqs=client("sqs", settings.target),
        s3=client("s3", settings.target),
        sns=client("sns", settings.target),
        store=TaskStore(client("dynamodb", settings.target), settings.task_table),
    )
    inputs = TaskInputs(clients.s3, settings.bucket, settings.input_buckets, settings.workflow_prefix)
    runtime = adapter_for(settings.runtime_type, settings.runtime_url, settings.runtime_timeout_seconds, inputs)
    return Worker(settings, clients, runtime)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sdlab queue agent")
    parser.add_argument("--max-tasks", type=int, default=None, help="exit after this many tasks")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    try:
        settings = AgentSettings.from_env()
    except ConfigError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from err
    logs.configure(settings.log_level)
    sys.setswitchinterval(AGENT_SWITCH_INTERVAL_SECONDS)
    log.info("agent for runtime %s (%s) at %s, queue %s", settings.runtime_name, settings.runtime_type,
             settings.runtime_url, settings.queue_url)
    worker = build_worker(settings)
    worker.install_signal_handlers()
    metrics.BUSY_FRACTION.set_function(worker.busy_fraction)
    server = health.serve(worker, settings.health_port, settings.health_host) if settings.health_port else None
    try:
        code = worker.run(max_tasks=args.max_tasks, burst=args.burst)
    finally:
        if server:
            server.shutdown()
    raise SystemExit(code)
