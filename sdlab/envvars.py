"""Every SDLAB_* environment variable, named once.

Precedence everywhere: explicit argument > environment variable > config file > default.
"""

from __future__ import annotations

CONFIG = "SDLAB_CONFIG"  # path of sdlab.yaml
HOME = "SDLAB_HOME"  # state folder of the local stack (default .sdlab)
AWS_ENDPOINT_URL = "SDLAB_AWS_ENDPOINT_URL"  # moto server locally; unset on AWS
REGION = "SDLAB_REGION"
STACK_NAME = "SDLAB_STACK_NAME"
BUCKET = "SDLAB_BUCKET"
OUTPUT_PREFIX = "SDLAB_OUTPUT_PREFIX"
TASK_TABLE = "SDLAB_TASK_TABLE"
TASKS_TOPIC_ARN = "SDLAB_TASKS_TOPIC_ARN"
RESULTS_TOPIC_ARN = "SDLAB_RESULTS_TOPIC_ARN"
RUNTIMES = "SDLAB_RUNTIMES"  # JSON: {"<name>": {"type": "sdwebui"}, ...}
INPUT_BUCKETS = "SDLAB_INPUT_BUCKETS"  # comma-separated buckets init images may come from
WORKFLOW_PREFIX = "SDLAB_WORKFLOW_PREFIX"  # where named ComfyUI workflow templates live in the bucket
LIMITS = "SDLAB_LIMITS"  # JSON: request limits (see config.Limits)
CRDS_DIR = "SDLAB_CRDS_DIR"  # folder of the KEDA/Karpenter CRDs used to validate manifests
STATUS_BASE_URL = "SDLAB_STATUS_BASE_URL"  # public base URL of the API, for status_url
API_KEYS = "SDLAB_API_KEYS"  # comma-separated keys the local gateway accepts
SIM_PRICES = "SDLAB_SIM_PRICES"  # JSON written by `python -m sdlab.sim.prices`, laid over the simulator's price table

# callback dispatcher
CALLBACK_QUEUE_URL = "SDLAB_CALLBACK_QUEUE_URL"
CALLBACK_DLQ_URL = "SDLAB_CALLBACK_DLQ_URL"
CALLBACK_SECRET = "SDLAB_CALLBACK_SECRET"  # HMAC key of webhook signatures
CALLBACK_ALLOW_PRIVATE = "SDLAB_CALLBACK_ALLOW_PRIVATE"  # "1": allow loopback/private destinations (local only)
CALLBACK_CA_BUNDLE = "SDLAB_CALLBACK_CA_BUNDLE"  # extra CA bundle to trust (local test servers)

# queue agent
AGENT_RUNTIME_NAME = "SDLAB_AGENT_RUNTIME_NAME"
AGENT_RUNTIME_TYPE = "SDLAB_AGENT_RUNTIME_TYPE"
AGENT_RUNTIME_URL = "SDLAB_AGENT_RUNTIME_URL"
AGENT_QUEUE_URL = "SDLAB_AGENT_QUEUE_URL"
AGENT_VISIBILITY_TIMEOUT_SECONDS = "SDLAB_AGENT_VISIBILITY_TIMEOUT_SECONDS"
AGENT_WAIT_TIME_SECONDS = "SDLAB_AGENT_WAIT_TIME_SECONDS"
AGENT_MAX_RECEIVE_COUNT = "SDLAB_AGENT_MAX_RECEIVE_COUNT"
AGENT_RUNTIME_TIMEOUT_SECONDS = "SDLAB_AGENT_RUNTIME_TIMEOUT_SECONDS"
AGENT_DLQ_URL = "SDLAB_AGENT_DLQ_URL"
AGENT_HIGH_QUEUE_URL = "SDLAB_AGENT_HIGH_QUEUE_URL"  # drained before AGENT_QUEUE_URL
AGENT_HEALTH_HOST = "SDLAB_AGENT_HEALTH_HOST"  # 0.0.0.0 in pods (kubelet probes the pod IP)
AGENT_MAX_BATCH = "SDLAB_AGENT_MAX_BATCH"  # messages taken per receive to feed a batching runtime
AGENT_GRACE_SECONDS = "SDLAB_AGENT_GRACE_SECONDS"
AGENT_RUNTIME_READY_TIMEOUT_SECONDS = "SDLAB_AGENT_RUNTIME_READY_TIMEOUT_SECONDS"
AGENT_HEALTH_PORT = "SDLAB_AGENT_HEALTH_PORT"
AGENT_LOG_LEVEL = "SDLAB_AGENT_LOG_LEVEL"
AGENT_UNHEALTHY_AFTER_SECONDS = "SDLAB_AGENT_UNHEALTHY_AFTER_SECONDS"  # a thread failing this long fails /healthz
AGENT_SWEEP_INTERVAL_SECONDS = "SDLAB_AGENT_SWEEP_INTERVAL_SECONDS"  # DLQ sweeper period
AGENT_FINISH_ATTEMPTS = "SDLAB_AGENT_FINISH_ATTEMPTS"  # tries of store/end/notify after the runtime call

# AWS clients (every process): how long a call may take and how often botocore retries it
AWS_READ_TIMEOUT_SECONDS = "SDLAB_AWS_READ_TIMEOUT_SECONDS"
AWS_MAX_ATTEMPTS = "SDLAB_AWS_MAX_ATTEMPTS"
