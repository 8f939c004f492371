"""How every process is wired: its environment and arguments, derived once from the config and the stack's resources.

One source for the API function (Lambda or local gateway), the callback dispatcher, the queue agent and the SD
runtime. The same functions serve `sdlab up`, `sdlab up --autoscale`, the rendered Kubernetes Deployment, the
benchmarks and the tests, so a value (a timeout, a batch size, an allow-list) cannot differ between them; only
*where* things are (URLs, ports, the bind address) depends on the place a process runs.

Timing, derived from the queue's visibility timeout (the longest a task may hold its message between heartbeats,
and so the longest runtime call):

    runtime call timeout = visibility timeout
    agent grace          = runtime call timeout + FINISH_MARGIN_SECONDS   (finish the running task and store it)
    pod grace            = agent grace + EXIT_MARGIN_SECONDS              (terminationGracePeriodSeconds)

so a warm shutdown always covers the task that is running, and the kubelet never kills an agent that is still
within its own budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sdlab import envvars
from sdlab.aws import AwsTarget
from sdlab.config import RuntimeSettings, Settings
from sdlab.provision import StackResources

FINISH_MARGIN_SECONDS = 45  # after the runtime call: store the images, end the task, notify, release the rest
EXIT_MARGIN_SECONDS = 15  # after the agent's grace: the runtime sidecar's own stop, process exit
RUNTIME_READY_TIMEOUT_SECONDS = 600  # loading a model from S3 onto the GPU (the runtime's startupProbe allows as long)
# Messages an agent hands a batching runtime at once when the config leaves `batch.max_batch` unset: the agent then
# asks the runtime (GET /v1/info) what its card holds; this caps that answer.
AGENT_MAX_BATCH_CAP = 16


@dataclass(frozen=True)
class Timing:
    """The time budgets of one runtime's pod, consistent by construction (see the module docstring)."""

    runtime_timeout_seconds: int
    agent_grace_seconds: int
    pod_grace_seconds: int


def timing(runtime: RuntimeSettings, pod_grace_seconds: int | None = None) -> Timing:
    """Budgets from the queue's visibility timeout; `pod_grace_seconds` (a render-context override) shifts the
    agent's grace with it. `sdlab.k8s.context.check_context` refuses an override too short for the runtime call."""
    call = runtime.queue.visibility_timeout_seconds
    pod = pod_grace_seconds if pod_grace_seconds is not None else call + FINISH_MARGIN_SECONDS + EXIT_MARGIN_SECONDS
    return Timing(runtime_timeout_seconds=call, agent_grace_seconds=pod - EXIT_MARGIN_SECONDS, pod_grace_seconds=pod)


@dataclass(frozen=True)
class Endpoints:
    """Where one runtime's agent finds the stack: its queues, the bucket, the task table, the results topic."""

    queue_url: str
    high_queue_url: str | None
    dlq_url: str | None
    bucket: str
    task_table: str
    results_topic_arn: str

    @classmethod
    def of_stack(cls, resources: StackResources, runtime: str) -> Endpoints:
        queue = resources.queues[runtime]
        return cls(queue_url=queue.url, high_queue_url=queue.high_url, dlq_url=queue.dlq_url, bucket=resources.bucket,
                   task_table=resources.table, results_topic_arn=resources.results_topic_arn)


def api_environment(settings: Settings, resources: StackResources, target: AwsTarget) -> dict[str, str]:
    """Environment of the API function."""
    return {
        **target.env(),
        envvars.TASK_TABLE: resources.table,
        envvars.TASKS_TOPIC_ARN: resources.tasks_topic_arn,
        envvars.RESULTS_TOPIC_ARN: resources.results_topic_arn,
        envvars.BUCKET: resources.bucket,
        envvars.OUTPUT_PREFIX: settings.stack.output_prefix,
        envvars.RUNTIMES: json.dumps({rt.name: {"type": rt.type} for rt in settings.runtimes}, sort_keys=True),
        envvars.LIMITS: settings.limits.model_dump_json(),
        envvars.INPUT_BUCKETS: ",".join(settings.stack.input_buckets),
    }


def callback_environment(resources: StackResources, target: AwsTarget, secret: str) -> dict[str, str]:
    """Environment of the callback dispatcher."""
    return {
        **target.env(),
        envvars.CALLBACK_QUEUE_URL: resources.callbacks_queue_url,
        envvars.CALLBACK_DLQ_URL: resources.callbacks_dlq_url,
        envvars.TASK_TABLE: resources.table,
        envvars.CALLBACK_SECRET: secret,
    }


# Variables whose values say where things are, so they differ between a local process and a pod by design;
# every other variable of the agent must be identical wherever it runs (tests/integration/test_wiring.py).
AGENT_LOCATION_VARIABLES = frozenset({
    envvars.AGENT_RUNTIME_URL, envvars.AGENT_QUEUE_URL, envvars.AGENT_HIGH_QUEUE_URL, envvars.AGENT_DLQ_URL,
    envvars.BUCKET, envvars.TASK_TABLE, envvars.RESULTS_TOPIC_ARN, envvars.AWS_ENDPOINT_URL,
    envvars.AGENT_HEALTH_PORT, envvars.AGENT_HEALTH_HOST,
})


def agent_environment(settings: Settings, runtime: RuntimeSettings, endpoints: Endpoints, target: AwsTarget, *,
                      runtime_url: str, health_port: int, health_host: str = "127.0.0.1", log_level: str = "INFO",
                      pod_grace_seconds: int | None = None) -> dict[str, str]:
    """Environment of one runtime's queue agent: read back by `agent.settings.AgentSettings.from_env`."""
    budget = timing(runtime, pod_grace_seconds)
    env = {
        **target.env(),
        "AWS_REGION": target.region,  # the AWS SDK's own name, for boto3 defaults
        envvars.AGENT_RUNTIME_NAME: runtime.name,
        envvars.AGENT_RUNTIME_TYPE: runtime.type,
        envvars.AGENT_RUNTIME_URL: runtime_url,
        envvars.AGENT_QUEUE_URL: endpoints.queue_url,
        envvars.BUCKET: endpoints.bucket,
        envvars.OUTPUT_PREFIX: settings.stack.output_prefix,
        envvars.TASK_TABLE: endpoints.task_table,
        envvars.RESULTS_TOPIC_ARN: endpoints.results_topic_arn,
        envvars.AGENT_VISIBILITY_TIMEOUT_SECONDS: str(runtime.queue.visibility_timeout_seconds),
        envvars.AGENT_MAX_RECEIVE_COUNT: str(runtime.queue.max_receive_count),
        envvars.AGENT_WAIT_TIME_SECONDS: str(runtime.queue.receive_wait_seconds),
        envvars.AGENT_RUNTIME_TIMEOUT_SECONDS: str(budget.runtime_timeout_seconds),
        envvars.AGENT_GRACE_SECONDS: str(budget.agent_grace_seconds),
        envvars.AGENT_RUNTIME_READY_TIMEOUT_SECONDS: str(RUNTIME_READY_TIMEOUT_SECONDS),
        envvars.AGENT_HEALTH_PORT: str(health_port),
        envvars.AGENT_HEALTH_HOST: health_host,
        envvars.AGENT_LOG_LEVEL: log_level,
        envvars.INPUT_BUCKETS: ",".join(settings.stack.input_buckets),
        envvars.WORKFLOW_PREFIX: settings.stack.workflow_prefix,
    }
    if runtime.batch.max_batch is not None:  # unset: the agent asks a batching runtime what its card holds
        env[envvars.AGENT_MAX_BATCH] = str(runtime.batch.max_batch)
    if endpoints.high_queue_url:
        env[envvars.AGENT_HIGH_QUEUE_URL] = endpoints.high_queue_url
    if endpoints.dlq_url:
        env[envvars.AGENT_DLQ_URL] = endpoints.dlq_url
    return env


# Arguments whose values say where things are (see AGENT_LOCATION_VARIABLES).
RUNTIME_LOCATION_ARGUMENTS = frozenset({"--models-dir", "--host", "--port", "--threads"})


def runtime_arguments(runtime: RuntimeSettings, *, models_dir: str, host: str, port: int,
                      threads: int | None = None) -> list[str]:
    """Arguments of the project's runtime server (`python -m sdlab.runtime`), locally and in the diffusers pod."""
    args = ["--models-dir", models_dir, "--model", runtime.model.name, "--host", host, "--port", str(port)]
    if threads:
        args += ["--threads", str(threads)]
    batch = runtime.batch
    if batch.max_batch is not None:
        args += ["--max-batch", str(batch.max_batch)]
    args += ["--max-batch-wait-ms", str(batch.max_wait_ms)]
    if batch.buckets:
        args += ["--batch-buckets", ",".join(str(b) for b in batch.buckets)]
    if runtime.optimize != "off":
        args += ["--opt", runtime.optimize]
    return args
