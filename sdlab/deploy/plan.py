"""`sdlab aws plan`: every resource a deployment would create, with its estimated cost per hour while idle.

A dry run: no AWS call. Prices come from data/prices.yaml (each with its source). Pay-per-request services cost
nothing while idle and say so; GPU NodePools at `min_replicas: 0` cost nothing until a task arrives, and the plan
shows what one node of each allowed type costs while it runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sdlab.config import RuntimeSettings, Settings
from sdlab.deploy import eks
from sdlab.deploy.iam import Arns, role_specs
from sdlab.deploy.names import INTERRUPTION_RULES, REPOSITORIES, DeployNames

PRICES = Path(__file__).with_name("data") / "prices.yaml"
HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class PlanItem:
    layer: str  # "serverless" or "cluster"
    kind: str
    name: str
    usd_per_hour: float  # idle cost; 0 for pay-per-use
    note: str = ""


@functools.cache
def prices() -> dict[str, Any]:
    return dict(yaml.safe_load(PRICES.read_text()))


def node_price(instance_type: str) -> float | None:
    entry = prices()["instances"].get(instance_type)
    return float(entry["usd_per_hour"]) if entry else None


def _per_use(key: str) -> str:
    p = prices()["requests"][key]
    return f"${p['usd']} per {p['per']}"


def _node_pool(names: DeployNames, rt: RuntimeSettings) -> PlanItem:
    per_node = {t: node_price(t) for t in rt.nodes.instance_types}
    listed = ", ".join(f"{t} ${p:.4g}/h" if p is not None else f"{t} (no price on file)" for t, p in per_node.items())
    known = [p for p in per_node.values() if p is not None]
    idle = rt.scaling.min_replicas * min(known) if known else 0.0
    when = (f"idle at min_replicas=0: $0/h; per running node (on-demand): {listed}" if rt.scaling.min_replicas == 0
            else f"{rt.scaling.min_replicas} node(s) always on at the cheapest listed type; per node: {listed}")
    spot = prices()["spot_example"]["usd_per_hour"]
    if "spot" in rt.nodes.capacity_types:
        when += f"; Spot tried first (example: g5/g6.2xlarge ~${spot}/h)"
    return PlanItem("cluster", "Karpenter NodePool", f"{names.stack}-{rt.name}", idle,
                    f"{when}; at most {rt.nodes.gpu_limit} GPUs")


def build_plan(settings: Settings, *, account: str = "111122223333", cluster: bool = True,
               cluster_name: str | None = None) -> list[PlanItem]:
    """What `sdlab aws deploy` creates, in creation order."""
    names = DeployNames.of(settings, cluster_name)
    base = names.base
    s = "serverless"
    items = [PlanItem(s, "S3 bucket", base.bucket, 0.0, f"{_per_use('s3_storage')}, {_per_use('s3_put')}"),
             PlanItem(s, "SNS topic", base.tasks_topic, 0.0, _per_use("sns")),
             PlanItem(s, "SNS topic", base.results_topic, 0.0, _per_use("sns")),
             PlanItem(s, "DynamoDB table", base.table, 0.0, "on-demand capacity: per request, storage per GB-month")]
    for rt in settings.runtimes:
        for queue in (base.queue(rt.name), base.high_queue(rt.name), base.dlq(rt.name)):
            items.append(PlanItem(s, "SQS queue", queue, 0.0, _per_use("sqs")))
        items.append(PlanItem(s, "SNS subscriptions", f"{base.tasks_topic} -> {base.queue(rt.name)} (+high)", 0.0, ""))
    for queue in (base.callbacks_queue, base.callbacks_dlq):
        items.append(PlanItem(s, "SQS queue", queue, 0.0, f"webhook deliveries; {_per_use('sqs')}"))
    for spec in role_specs(settings, names, Arns(account, settings.stack.region)):
        items.append(PlanItem(s, "IAM role", spec.name, 0.0, spec.description))
    items += [PlanItem(s, "CloudWatch log group", names.log_group, 0.0, "14-day retention; ingestion and storage per GB"),
              PlanItem(s, "Lambda function", names.function, 0.0, _per_use("lambda")),
              PlanItem(s, "API Gateway REST API", names.rest_api, 0.0, f"{_per_use('api_gateway_rest')}; /{{proxy+}} ANY"),
              PlanItem(s, "API key + usage plan", f"{names.api_key} / {names.usage_plan}", 0.0, "throttle + daily quota"),
              PlanItem(s, "CloudWatch log group", names.callbacks_log_group, 0.0, "14-day retention"),
              PlanItem(s, "Lambda function", names.callbacks_function, 0.0,
                       f"callback dispatcher on {base.callbacks_queue} (event source mapping); {_per_use('lambda')}")]
    items += [PlanItem(s, "ECR repository", names.repository(r), 0.0, "image storage per GB-month") for r in REPOSITORIES]
    items.append(PlanItem(s, "SQS queue", names.interruption_queue, 0.0, "Karpenter interruption queue"))
    items += [PlanItem(s, "EventBridge rule", names.interruption_rule(k), 0.0, "free for AWS service events")
              for k in INTERRUPTION_RULES]
    if not cluster:
        return items
    hourly = prices()["hourly"]
    system = node_price(eks.SYSTEM_INSTANCE_TYPE) or 0.0
    items += [PlanItem("cluster", "EKS cluster", names.cluster, float(hourly["eks_cluster"]["usd_per_hour"]),
                       f"Kubernetes {eks.K8S_VERSION}, standard support"),
              PlanItem("cluster", "managed node group", "system", 2 * system, f"2 x {eks.SYSTEM_INSTANCE_TYPE} at ${system}/h"),
              PlanItem("cluster", "NAT gateway", "single", float(hourly["nat_gateway"]["usd_per_hour"]),
                       f"{hourly['nat_gateway']['note']} [price not verified]"),
              PlanItem("cluster", "Helm releases", "KEDA, Karpenter; add-ons: Pod Identity agent, Mountpoint for S3 CSI",
                       0.0, "run on the system nodes")]
    items += [_node_pool(names, rt) for rt in settings.runtimes]
    return items


def idle_cost(items: list[PlanItem]) -> float:
    return sum(i.usd_per_hour for i in items)


def format_plan(items: list[PlanItem]) -> str:
    """A table: layer, kind, name, $/h idle, note; then the idle total per hour and per month."""
    rows = [(i.layer, i.kind, i.name, f"{i.usd_per_hour:.4f}", i.note) for i in items]
    widths = [max(len(r[c]) for r in rows + [("layer", "kind", "name", "$/h idle", "")]) for c in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("layer", "kind", "name", "$/h idle"), widths, strict=True)) + "  note"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    total = idle_cost(items)
    lines.append(f"\n{len(items)} resources; idle cost ${total:.4f}/h (~${total * HOURS_PER_MONTH:.0f}/month) "
                 f"before requests, storage and GPU node hours; prices: {PRICES.name} ({prices()['region']})")
    return "\n".join(lines)
