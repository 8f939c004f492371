"""From `sdlab.yaml` (+ choices) and the facts table to a `Plan` the engine runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from sdlab.config import QueueSettings, RuntimeSettings, ScalingSettings, Settings
from sdlab.errors import ConfigError
from sdlab.sim.engine import Plan
from sdlab.sim.facts import Facts, ServiceCurve, load_facts
from sdlab.wiring import FINISH_MARGIN_SECONDS

RUNTIME_KINDS = {"sdwebui": "sdwebui", "comfyui": "sdwebui", "diffusers": "diffusers"}
CONSOLIDATE_AFTER_S = 60.0  # the rendered NodePool's consolidateAfter (RenderContext.consolidate_after)
# the agent's warm-shutdown budget with the default queue (sdlab.wiring.timing)
DEFAULT_GRACE_S = float(QueueSettings().visibility_timeout_seconds + FINISH_MARGIN_SECONDS)
OVERHEAD_S = 0.3  # EST: API + SQS + agent receive + S3 upload + SNS per task, outside the runtime call


@dataclass(frozen=True)
class Choice:
    """What the tuner varies (and what `sdlab sim` takes from the config)."""

    instance_type: str
    capacity_types: tuple[str, ...] = ("spot", "on-demand")
    scaling: ScalingSettings = field(default_factory=lambda: ScalingSettings())
    max_batch: int | None = None
    image_mode: str = "snapshot"  # standard | soci | snapshot

    def describe(self) -> dict[str, Any]:
        s = self.scaling
        return {"instance_type": self.instance_type, "capacity_types": list(self.capacity_types), "max_batch": self.max_batch,
                "queue_length": s.queue_length, "activation_queue_length": s.activation_queue_length,
                "min_replicas": s.min_replicas, "max_replicas": s.max_replicas, "cooldown_seconds": s.cooldown_seconds,
                "polling_interval_seconds": s.polling_interval_seconds, "scale_on_in_flight": s.scale_on_in_flight,
                "image_mode": self.image_mode}


def karpenter_pick(instance_types: tuple[str, ...], capacity_types: tuple[str, ...], region: str, facts: Facts) -> str:
    """The type Karpenter would launch for one GPU pod: the cheapest per GPU at the preferred capacity type."""
    capacity = "spot" if "spot" in capacity_types else "on-demand"
    known = [t for t in instance_types if t in facts.instance_types]
    if not known:
        raise ConfigError([f"none of {list(instance_types)} is in the simulator's facts table; "
                           f"known: {sorted(facts.instance_types)}"])
    return min(known, key=lambda t: facts.instance(t).price(capacity, region) / facts.instance(t).gpus)


def choice_from_config(runtime: RuntimeSettings, region: str, facts: Facts | None = None) -> Choice:
    facts = facts or load_facts()
    # the agent hands one message per call unless the runtime batches (the project's diffusers runtime does)
    batch = runtime.batch.max_batch or (None if runtime.type == "diffusers" else 1)
    return Choice(instance_type=karpenter_pick(runtime.nodes.instance_types, runtime.nodes.capacity_types, region, facts),
                  capacity_types=runtime.nodes.capacity_types, scaling=runtime.scaling, max_batch=batch)


def plan(choice: Choice, model: str, *, region: str = "us-east-1", runtime_kind: str | None = None,
         facts: Facts | None = None, grace_s: float = DEFAULT_GRACE_S, label: str = "", **overrides: Any) -> Plan:
    # grace_s: the agent's warm-shutdown budget (`sdlab.wiring.timing(runtime).agent_grace_seconds` for a runtime)
    """A Plan for one choice; `overrides` set any Plan field (calibration, SageMaker)."""
    facts = facts or load_facts()
    it = facts.instance(choice.instance_type)
    curve: ServiceCurve = overrides.pop("service", None) or facts.service(it.card, model, runtime_kind)
    max_batch = choice.max_batch or curve.max_batch
    if model not in facts.model_load_s and "model_load_s" not in overrides:
        raise ConfigError([f"no model load time for {model!r}; known {sorted(facts.model_load_s)}"])
    p = Plan(
        scaling=choice.scaling, service=curve, max_batch=max_batch, gpus_per_node=it.gpus,
        node_ready_s=it.node_ready_s, image_pull_s=facts.image_pull_s(choice.image_mode),
        model_load_s=float(facts.model_load_s.get(model, 0.0)),
        price_per_hour={"spot": it.price("spot", region), "on-demand": it.price("on-demand", region)},
        capacity_types=choice.capacity_types, interruptions_per_hour=facts.interruptions_per_hour(it),
        spot_unavailable_probability=float(facts.spot["unavailable_probability"]),
        spot_retry_s=float(facts.spot["retry_after_s"]), spot_notice_s=float(facts.spot["notice_s"]),
        consolidate_after_s=CONSOLIDATE_AFTER_S, grace_s=grace_s, overhead_s=OVERHEAD_S,
        fixed_usd_per_hour=facts.fixed_usd_per_hour(), per_image_usd=facts.per_image_usd(),
        sqs_request_usd=facts.sqs_request_usd, label=label or f"{choice.instance_type} {'+'.join(choice.capacity_types)}",
    )
    return replace(p, **overrides) if overrides else p


def sagemaker_plan(ml_instance: str, model: str, *, target_backlog_per_instance: float, max_instances: int,
                   min_instances: int = 0, region: str = "us-east-1", facts: Facts | None = None, max_batch: int = 1) -> Plan:
    """SageMaker Asynchronous Inference: one model copy per ml.* instance, backlog-per-instance target tracking."""
    facts = facts or load_facts()
    if ml_instance not in facts.sagemaker:
        raise ConfigError([f"{ml_instance!r} is not in the facts table; known {sorted(facts.sagemaker)}"])
    row = facts.sagemaker[ml_instance]
    curve = facts.service(row["card"], model, "sdwebui")
    price = float(row["on_demand"][region])
    per_image = facts.per_image_usd() - float(facts.per_request_costs.get("sqs", 0.0))  # SageMaker keeps its own queue
    scaling = ScalingSettings(min_replicas=min_instances, max_replicas=max_instances)
    return Plan(scaling=scaling, service=curve, max_batch=max_batch, gpus_per_node=1, node_ready_s=float(row["start_s"]),
                image_pull_s=0.0, model_load_s=0.0, price_per_hour={"spot": price, "on-demand": price},
                capacity_types=("on-demand",), autoscaler="sagemaker-async", prefetch=False,
                sagemaker={"target": target_backlog_per_instance, "period_s": 10.0}, consolidate_after_s=0.0,
                overhead_s=OVERHEAD_S, fixed_usd_per_hour=0.0, per_image_usd=per_image, sqs_request_usd=0.0,
                label=f"SageMaker async {ml_instance} (backlog/instance {target_backlog_per_instance:g})")


def runtime_settings(settings: Settings, name: str | None) -> RuntimeSettings:
    return settings.runtime(name) if name else settings.runtimes[0]
