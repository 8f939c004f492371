"""The environment each process gets, derived from the config and what provisioning created.

One source for the API function (Lambda or local gateway) and the queue agent (local process or sidecar).
"""

from __future__ import annotations

import json

from sdlab import envvars
from sdlab.aws import AwsTarget
from sdlab.config import RuntimeSettings, Settings, StackSettings
from sdlab.provision import StackResources


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


def agent_environment(runtime: RuntimeSettings, resources: StackResources, target: AwsTarget,
                      runtime_url: str, health_port: int, stack: StackSettings | None = None) -> dict[str, str]:
    """Environment of one runtime's queue agent (`stack`: input bucket allow-list and workflow prefix)."""
    queue = resources.queues[runtime.name]
    input_buckets, workflow_prefix = (stack.input_buckets, stack.workflow_prefix) if stack else ((), "workflows")
    output = stack.output_prefix if stack else "outputs"
    return {
        **target.env(),
        envvars.AGENT_RUNTIME_NAME: runtime.name,
        envvars.AGENT_RUNTIME_TYPE: runtime.type,
        envvars.AGENT_RUNTIME_URL: runtime_url,
        envvars.AGENT_QUEUE_URL: queue.url,
        envvars.AGENT_HIGH_QUEUE_URL: queue.high_url,
        envvars.AGENT_DLQ_URL: queue.dlq_url,
        envvars.BUCKET: resources.bucket,
        envvars.TASK_TABLE: resources.table,
        envvars.RESULTS_TOPIC_ARN: resources.results_topic_arn,
        envvars.AGENT_VISIBILITY_TIMEOUT_SECONDS: str(runtime.queue.visibility_timeout_seconds),
        envvars.AGENT_MAX_RECEIVE_COUNT: str(runtime.queue.max_receive_count),
        envvars.AGENT_WAIT_TIME_SECONDS: str(runtime.queue.receive_wait_seconds),
        envvars.AGENT_HEALTH_PORT: str(health_port),
        envvars.INPUT_BUCKETS: ",".join(input_buckets),
        envvars.WORKFLOW_PREFIX: workflow_prefix,
        envvars.OUTPUT_PREFIX: output,
    }
