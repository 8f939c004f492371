"""The dated facts table shipped with the simulator (`data/facts.yaml`): instance types, prices, service times.

Every row carries its source (SRC / DER / EST / RECALL). Prices refreshed by `python -m sdlab.sim.prices` (Pricing
API, Spot price history) are written to a JSON file that `load_facts(prices_file=...)` lays over the table.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sdlab import envvars
from sdlab.errors import ConfigError

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    card: str
    gpu_mem_gib: float
    vcpu: int
    family: str
    on_demand: dict[str, float]
    spot_typical: dict[str, float]
    node_ready_s: float
    spot_band: str
    source: str

    def price(self, capacity: str, region: str) -> float:
        table = self.spot_typical if capacity == "spot" else self.on_demand
        if region not in table:
            raise ConfigError([f"no {capacity} price for {self.name} in {region}; known regions {sorted(table)}; "
                               "refresh prices with `python -m sdlab.sim.prices --region REGION`"])
        return table[region]


@dataclass(frozen=True)
class ServiceCurve:
    """Seconds per runtime call for a batch of n images, interpolated between measured batch sizes."""

    card: str
    model: str
    runtime: str
    points: tuple[tuple[int, float], ...]  # (batch, seconds per call), ascending
    sources: tuple[str, ...]

    @property
    def max_batch(self) -> int:
        return self.points[-1][0]

    def seconds(self, batch: int) -> float:
        pts = self.points
        if batch <= pts[0][0]:
            return pts[0][1]
        for (b0, s0), (b1, s1) in zip(pts, pts[1:], strict=False):
            if batch <= b1:
                return s0 + (s1 - s0) * (batch - b0) / (b1 - b0)
        b, s = pts[-1]
        return s * batch / b  # beyond the largest measured batch: its per-image rate

    def scaled(self, factor: float) -> ServiceCurve:
        return ServiceCurve(self.card, self.model, self.runtime, tuple((b, s * factor) for b, s in self.points),
                            self.sources + (f"scaled ×{factor:g}",))


@dataclass(frozen=True)
class Facts:
    as_of: str
    prices_as_of: str
    instance_types: dict[str, InstanceType]
    sagemaker: dict[str, dict[str, Any]]
    service_rows: tuple[dict[str, Any], ...]
    images: dict[str, float]
    model_load_s: dict[str, float]
    spot: dict[str, Any]
    fixed_costs: dict[str, dict[str, Any]]
    per_request_costs: dict[str, float]
    sqs_request_usd: float

    def instance(self, name: str) -> InstanceType:
        if name not in self.instance_types:
            raise ConfigError([f"instance type {name!r} is not in the simulator's facts table; "
                               f"known: {sorted(self.instance_types)} (add a row to sdlab/sim/data/facts.yaml)"])
        return self.instance_types[name]

    def models(self) -> list[str]:
        return sorted({r["model"] for r in self.service_rows})

    def service(self, card: str, model: str, runtime: str | None = None) -> ServiceCurve:
        rows = [r for r in self.service_rows if r["card"] == card and r["model"] == model]
        if not rows:
            raise ConfigError([f"no service time for card {card} and model {model!r}; known models for {card}: "
                               f"{sorted({r['model'] for r in self.service_rows if r['card'] == card})}"])
        kinds = [r["runtime"] for r in rows]
        order = [runtime] if runtime is not None and runtime in kinds else []
        order += [k for k in ("sdlab", "sdwebui", "diffusers") if k in kinds and k not in order]
        chosen = [r for r in rows if r["runtime"] == order[0]]
        chosen.sort(key=lambda r: r["batch"])
        return ServiceCurve(card, model, order[0], tuple((int(r["batch"]), float(r["seconds"])) for r in chosen),
                            tuple(r["source"] for r in chosen))

    def interruptions_per_hour(self, instance: InstanceType) -> float:
        """Hazard rate of a Spot interruption for one node, from the family's monthly band."""
        fraction = float(self.spot["bands"][instance.spot_band])
        return -math.log(1.0 - fraction) / HOURS_PER_MONTH

    def image_pull_s(self, mode: str) -> float:
        """`standard`, `soci` (parallel pull) or `snapshot` (pre-pulled data volume)."""
        if mode == "snapshot":
            return float(self.images["snapshot_pull_s"])
        seconds = self.images["runtime_image_gib"] / self.images["pull_gib_per_s"]
        return seconds * (1 - self.images["soci_speedup"]) if mode == "soci" else seconds

    def fixed_usd_per_hour(self) -> float:
        return sum(float(v["usd_per_hour"]) for v in self.fixed_costs.values())

    def per_image_usd(self) -> float:
        return sum(self.per_request_costs.values())


def _data_text() -> str:
    return resources.files("sdlab.sim").joinpath("data/facts.yaml").read_text()


@lru_cache(maxsize=8)
def _load(prices_file: str | None) -> Facts:
    raw = yaml.safe_load(_data_text())
    types = {name: InstanceType(name=name, **row) for name, row in raw["instance_types"].items()}
    prices_as_of = str(raw["prices_as_of"])
    if prices_file and Path(prices_file).exists():
        refreshed = json.loads(Path(prices_file).read_text())
        prices_as_of = refreshed.get("as_of", prices_as_of)
        for name, by_kind in refreshed.get("prices", {}).items():
            if name in types:
                t = types[name]
                od = {**t.on_demand, **by_kind.get("on_demand", {})}
                spot = {**t.spot_typical, **by_kind.get("spot_typical", {})}
                types[name] = InstanceType(**{**t.__dict__, "on_demand": od, "spot_typical": spot,
                                              "source": t.source + f"; prices refreshed {prices_as_of}"})
    return Facts(as_of=str(raw["as_of"]), prices_as_of=prices_as_of, instance_types=types,
                 sagemaker=raw["sagemaker_instance_types"], service_rows=tuple(raw["service_times"]), images=raw["images"],
                 model_load_s=raw["model_load_s"], spot=raw["spot"], fixed_costs=raw["fixed_costs"],
                 per_request_costs=raw["per_request_costs"], sqs_request_usd=float(raw["sqs_request_usd"]))


def load_facts(prices_file: str | Path | None = None) -> Facts:
    """The shipped table, with refreshed prices laid over it from `prices_file` (default $SDLAB_SIM_PRICES)."""
    prices_file = prices_file or os.environ.get(envvars.SIM_PRICES)
    return _load(str(prices_file) if prices_file else None)
