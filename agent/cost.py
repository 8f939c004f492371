"""Cost receipts: which node the agent runs on, what one GPU of it costs, and what a task's run cost.

The node: the Kubernetes Downward API cannot expose node labels (`node.kubernetes.io/instance-type`,
`karpenter.sh/capacity-type`) to a pod, so on EC2 the agent asks the instance metadata service (IMDSv2, reachable
from pods because the EC2NodeClass sets hop limit 2): `instance-type`, and `instance-life-cycle` (`spot` or
`on-demand`, the same fact Karpenter's capacity-type label records). Explicit variables win
(SDLAB_AGENT_INSTANCE_TYPE, SDLAB_AGENT_CAPACITY_TYPE), for nodes elsewhere. An agent that talks to the local
moto server is on a workstation: instance type `local`, priced by `pricing.local_usd_per_hour` in sdlab.yaml.
Prices of EC2 types come from the simulator's dated facts table (sdlab/sim/data/facts.yaml, each row with its
source; refreshed prices from `python -m sdlab.sim.prices` are laid over it through $SDLAB_SIM_PRICES): On-Demand,
or the typical Spot price for a Spot node (an estimate: the node's own Spot price is not known to it). The price
of a node is shared by its GPUs; a pod holds one. A task's GPU-seconds are its runtime call's span divided among
the tasks batched into that call; with two calls in flight (a batching runtime), a call's span starts when the
previous call ended, so no time counts twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from sdlab import envvars
from sdlab.contracts import Receipt

log = logging.getLogger(__name__)
IMDS_URL = "http://169.254.169.254/latest"
IMDS_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class Node:
    instance_type: str  # "local", an EC2 type, or "unknown"
    capacity_type: str  # "local", "spot", "on-demand" or "unknown"
    gpus: int = 1
    usd_per_hour: float | None = None  # the whole node
    price_source: str = ""

    @property
    def usd_per_gpu_hour(self) -> float | None:
        return None if self.usd_per_hour is None else self.usd_per_hour / max(1, self.gpus)


def imds(base: str = IMDS_URL, timeout: float = IMDS_TIMEOUT_SECONDS) -> tuple[str, str] | None:
    """(instance type, lifecycle) from IMDSv2, or None off EC2."""
    try:
        with httpx.Client(timeout=timeout) as http:
            token = http.put(f"{base}/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}).text
            headers = {"X-aws-ec2-metadata-token": token}
            itype = http.get(f"{base}/meta-data/instance-type", headers=headers)
            life = http.get(f"{base}/meta-data/instance-life-cycle", headers=headers)
    except httpx.HTTPError:
        return None
    if itype.status_code != 200:
        return None
    cycle = life.text.strip() if life.status_code == 200 else "unknown"
    return itype.text.strip(), ("on-demand" if cycle == "on-demand" else cycle)


def _ec2_price(instance_type: str, capacity_type: str, region: str) -> tuple[int, float | None, str]:
    """(GPUs, node $/h, source) from the simulator's dated facts table (sdlab/sim/data/facts.yaml)."""
    from sdlab.errors import ConfigError
    from sdlab.sim.facts import load_facts

    facts = load_facts()
    row = facts.instance_types.get(instance_type)
    if row is None:
        return 1, None, f"{instance_type} is not in the price table (sdlab/sim/data/facts.yaml)"
    kind = "spot" if capacity_type == "spot" else "on-demand"
    try:
        price = row.price(kind, region)
    except ConfigError:
        return row.gpus, None, f"no {kind} price for {instance_type} in {region} (sdlab/sim/data/facts.yaml)"
    typical = " (typical Spot price, not this node's)" if kind == "spot" else ""
    return row.gpus, price, f"{kind} {region} price{typical}, facts table prices as of {facts.prices_as_of}: {row.source}"


def detect(instance_type: str | None = None, capacity_type: str | None = None, *, local: bool = False,
           local_usd_per_hour: float = 0.0, region: str = "us-east-1", imds_base: str = IMDS_URL) -> Node:
    """The node this agent runs on, with its price: explicit values, else `local`, else IMDSv2, else unknown."""
    itype, ctype = instance_type, capacity_type
    if not itype and local:
        itype, ctype = "local", "local"
    if not itype:
        found = imds(imds_base)
        itype, ctype = found if found else ("unknown", "unknown")
    ctype = ctype or "unknown"
    if itype == "local":
        return Node("local", "local", 1, local_usd_per_hour, "pricing.local_usd_per_hour in sdlab.yaml")
    if itype == "unknown":
        return Node(itype, ctype, 1, None, f"node unknown: not on EC2 and {envvars.AGENT_INSTANCE_TYPE} unset")
    gpus, price, source = _ec2_price(itype, ctype, region)
    return Node(itype, ctype, gpus, price, source)


def receipt(node: Node, runtime: str, *, run_s: float | None, queued_s: float | None, batch: int = 1,
            gpu_s: float | None = None) -> Receipt:
    """What one task took: its share of the runtime call (`gpu_s` when the caller measured it, else run_s/batch),
    priced per GPU-hour of `node`."""
    gpu_s = round(gpu_s if gpu_s is not None else (run_s or 0.0) / max(1, batch), 3)
    per_gpu = node.usd_per_gpu_hour
    cost = None if per_gpu is None else round(gpu_s * per_gpu / 3600, 8)
    return Receipt(runtime=runtime, instance_type=node.instance_type, capacity_type=node.capacity_type, gpu_s=gpu_s,
                   queued_s=queued_s, run_s=None if run_s is None else round(run_s, 3), batch=batch,
                   usd_per_hour=None if per_gpu is None else round(per_gpu, 6), cost_usd=cost,
                   price_source=node.price_source)
