"""Prometheus metrics of the agent (served on /metrics by agent.health)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Summary

TASKS = Counter("sdlab_agent_tasks_total", "Tasks ended by this agent, by terminal status", ["status"])
RETRIES = Counter("sdlab_agent_retries_total", "Messages released for another try after a retryable failure")
DLQ_MOVES = Counter("sdlab_agent_dlq_moves_total", "Messages moved to the dead-letter queue")
ENDED_REDELIVERIES = Counter("sdlab_agent_ended_task_messages_total",
                             "Messages of tasks that had already ended (a redelivery or a copy), not run again; "
                             "renotified: the task's missing notification was sent", ["outcome"])
_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
QUEUE_WAIT_SECONDS = Histogram("sdlab_agent_queue_wait_seconds", "Submit to start of run", buckets=_BUCKETS)
RUN_SECONDS = Histogram("sdlab_agent_run_seconds", "Runtime call duration per task", buckets=_BUCKETS)
# busy fraction = rate(sdlab_agent_runtime_busy_seconds_sum) over wall time
RUNTIME_BUSY = Summary("sdlab_agent_runtime_busy_seconds", "Seconds the runtime spent on this agent's tasks")
BUSY_FRACTION = Gauge("sdlab_agent_runtime_busy_fraction",
                      "Share of wall time since the first task that the runtime spent on this agent's tasks")
IDLE_GAP_SECONDS = Histogram("sdlab_agent_runtime_idle_gap_seconds",
                             "Runtime idle time between the end of one call and the start of the next",
                             buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5))
