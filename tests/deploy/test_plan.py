"""The dry-run plan: every resource deploy creates, with idle cost per hour from the price file."""

from __future__ import annotations

import pytest

from sdlab.config import parse_config
from sdlab.deploy.plan import build_plan, idle_cost, node_price, prices


def test_prices_name_their_sources():
    table = prices()
    for entry in [*table["instances"].values(), *table["hourly"].values(), *table["requests"].values()]:
        assert entry["source"] in table["sources"]


def test_idle_stack_costs_the_control_plane_system_nodes_and_nat_only(test_settings):
    items = build_plan(test_settings)
    expected = 0.10 + 2 * node_price("m7g.large") + 0.045
    assert idle_cost(items) == pytest.approx(expected)
    pools = [i for i in items if i.kind == "Karpenter NodePool"]
    assert [p.usd_per_hour for p in pools] == [0.0] * len(test_settings.runtimes)
    assert "g6.xlarge $0.8048/h" in pools[0].note and "Spot tried first" in pools[0].note
    assert idle_cost(build_plan(test_settings, cluster=False)) == 0.0


def test_warm_pool_costs_its_cheapest_node_and_unknown_types_say_so(test_settings):
    data = test_settings.model_dump(mode="json")
    data["runtimes"][0]["scaling"]["min_replicas"] = 2
    data["runtimes"][0]["nodes"] = {"instance_types": ["g5.xlarge", "g6.xlarge", "p5e.48xlarge"], "capacity_types": ["on-demand"]}
    pool = next(i for i in build_plan(parse_config(data)) if i.name.endswith("rt-a") and i.kind == "Karpenter NodePool")
    assert pool.usd_per_hour == pytest.approx(2 * 0.8048)
    assert "p5e.48xlarge (no price on file)" in pool.note and "Spot" not in pool.note
