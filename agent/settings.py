"""The agent's settings: one frozen object built once from the environment at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdlab import envvars
from sdlab.aws import AwsTarget
from sdlab.errors import ConfigError


@dataclass(frozen=True)
class AgentSettings:
    runtime_name: str
    runtime_type: str
    runtime_url: str
    queue_url: str
    dlq_url: str | None
    high_queue_url: str | None
    bucket: str
    task_table: str
    results_topic_arn: str
    target: AwsTarget
    visibility_timeout_seconds: int = 120
    wait_time_seconds: int = 20
    max_receive_count: int = 3
    runtime_timeout_seconds: float = 600.0
    runtime_ready_timeout_seconds: float = 600.0
    grace_seconds: float = 165.0  # warm shutdown budget (sdlab.wiring.timing): the running task, then finishing it
    max_batch: int | None = None  # messages handed to a batching runtime at once; None: what the runtime says it holds
    output_prefix: str = "outputs"  # every task's outputs live under it (its prefix is refused otherwise)
    unhealthy_after_seconds: float = 120.0  # a thread failing this long without a success fails /healthz
    sweep_interval_seconds: float = 30.0  # how often the DLQ sweeper ends the tasks of dead-lettered messages
    finish_attempts: int = 4  # tries of each step after the runtime call (store, end, notify) before giving up
    health_port: int = 0
    health_host: str = "127.0.0.1"
    log_level: str = "INFO"
    input_buckets: tuple[str, ...] = ()  # besides `bucket`, where s3:// input images may come from
    workflow_prefix: str = "workflows"  # named ComfyUI workflow templates: s3://<bucket>/<prefix>/<name>.json

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> AgentSettings:
        """Read SDLAB_* variables; one ConfigError lists every missing or bad value."""
        required = {
            "runtime_name": envvars.AGENT_RUNTIME_NAME,
            "runtime_url": envvars.AGENT_RUNTIME_URL,
            "queue_url": envvars.AGENT_QUEUE_URL,
            "bucket": envvars.BUCKET,
            "task_table": envvars.TASK_TABLE,
            "results_topic_arn": envvars.RESULTS_TOPIC_ARN,
        }
        problems = [f"{name} is not set" for name in required.values() if not env.get(name)]
        numbers = {
            "visibility_timeout_seconds": (envvars.AGENT_VISIBILITY_TIMEOUT_SECONDS, int),
            "wait_time_seconds": (envvars.AGENT_WAIT_TIME_SECONDS, int),
            "max_receive_count": (envvars.AGENT_MAX_RECEIVE_COUNT, int),
            "runtime_timeout_seconds": (envvars.AGENT_RUNTIME_TIMEOUT_SECONDS, float),
            "health_port": (envvars.AGENT_HEALTH_PORT, int),
            "grace_seconds": (envvars.AGENT_GRACE_SECONDS, float),
            "max_batch": (envvars.AGENT_MAX_BATCH, int),
            "runtime_ready_timeout_seconds": (envvars.AGENT_RUNTIME_READY_TIMEOUT_SECONDS, float),
            "unhealthy_after_seconds": (envvars.AGENT_UNHEALTHY_AFTER_SECONDS, float),
            "sweep_interval_seconds": (envvars.AGENT_SWEEP_INTERVAL_SECONDS, float),
            "finish_attempts": (envvars.AGENT_FINISH_ATTEMPTS, int),
        }
        parsed: dict[str, Any] = {}
        for field, (name, kind) in numbers.items():
            if env.get(name):
                try:
                    parsed[field] = kind(env[name])
                except ValueError:
                    problems.append(f"{name}={env[name]!r} is not a number")
        runtime_type = env.get(envvars.AGENT_RUNTIME_TYPE, "sdwebui")
        if runtime_type not in ("sdwebui", "comfyui", "diffusers"):
            problems.append(f"{envvars.AGENT_RUNTIME_TYPE}={runtime_type!r}; use sdwebui, comfyui or diffusers")
        if problems:
            raise ConfigError(problems, "queue agent environment")
        return cls(
            **{field: env[name] for field, name in required.items()},  # type: ignore[arg-type]  # the str fields
            runtime_type=runtime_type,
            dlq_url=env.get(envvars.AGENT_DLQ_URL) or None,
            high_queue_url=env.get(envvars.AGENT_HIGH_QUEUE_URL) or None,
            target=AwsTarget.from_env(env=env),
            log_level=env.get(envvars.AGENT_LOG_LEVEL, "INFO"),
            health_host=env.get(envvars.AGENT_HEALTH_HOST, "127.0.0.1"),
            input_buckets=tuple(b.strip() for b in env.get(envvars.INPUT_BUCKETS, "").split(",") if b.strip()),
            workflow_prefix=env.get(envvars.WORKFLOW_PREFIX) or "workflows",
            output_prefix=env.get(envvars.OUTPUT_PREFIX) or "outputs",
            **parsed,
        )
