"""Refresh the facts table's prices from AWS: On-Demand from the Pricing API, Spot from the Spot price history.

Needs AWS credentials (`ec2:DescribeSpotPriceHistory`, `pricing:GetProducts`). Writes a JSON file that
`sdlab.sim.facts.load_facts(prices_file=...)` lays over the shipped table; nothing in the package is rewritten.
Run: `python -m sdlab.sim.prices --region us-east-1 --out .sdlab/prices.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sdlab.aws import AwsTarget, client
from sdlab.sim.facts import load_facts

PRICING_REGION = "us-east-1"  # the Pricing API answers from us-east-1 (and a few others)


def spot_typical(target: AwsTarget, instance_types: list[str], days: int = 7) -> dict[str, float]:
    """Mean Linux Spot price over the last `days`, across the region's AZs, per instance type."""
    ec2 = client("ec2", target)
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    prices: dict[str, list[float]] = {}
    for page in ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=instance_types, ProductDescriptions=["Linux/UNIX"], StartTime=start):
        for row in page["SpotPriceHistory"]:
            prices.setdefault(row["InstanceType"], []).append(float(row["SpotPrice"]))
    return {t: round(statistics.fmean(v), 5) for t, v in prices.items() if v}


def on_demand(target: AwsTarget, instance_types: list[str]) -> dict[str, float]:
    """Linux, shared tenancy, no pre-installed software, On-Demand $/h from the Pricing API."""
    pricing = client("pricing", AwsTarget(PRICING_REGION, target.endpoint_url))
    out: dict[str, float] = {}
    for itype in instance_types:
        filters = [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in (
            ("instanceType", itype), ("regionCode", target.region), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
            ("preInstalledSw", "NA"), ("capacitystatus", "Used"))]
        resp = pricing.get_products(ServiceCode="AmazonEC2", Filters=filters, MaxResults=10)
        for item in resp.get("PriceList", []):
            product = json.loads(item) if isinstance(item, str) else item
            for term in product.get("terms", {}).get("OnDemand", {}).values():
                for dim in term.get("priceDimensions", {}).values():
                    usd = float(dim.get("pricePerUnit", {}).get("USD", 0) or 0)
                    if usd > 0:
                        out[itype] = usd
    return out


def refresh(target: AwsTarget, out: Path, instance_types: list[str] | None = None) -> dict[str, Any]:
    """Ask AWS, write `out`; a source that fails is reported in `notes` and its prices stay as shipped."""
    types = instance_types or sorted(load_facts().instance_types)
    notes: list[str] = []
    try:
        od = on_demand(target, types)
    except (ClientError, BotoCoreError) as err:
        od = {}
        notes.append(f"On-Demand prices not refreshed (Pricing API: {err})")
    try:
        spot = spot_typical(target, types)
    except (ClientError, BotoCoreError) as err:
        spot = {}
        notes.append(f"Spot prices not refreshed (Spot price history: {err})")
    prices: dict[str, dict[str, dict[str, float]]] = {}
    for t in types:
        entry: dict[str, dict[str, float]] = {}
        if t in od:
            entry["on_demand"] = {target.region: od[t]}
        if t in spot:
            entry["spot_typical"] = {target.region: spot[t]}
        if entry:
            prices[t] = entry
    doc = {"as_of": dt.date.today().isoformat(), "region": target.region, "prices": prices, "notes": notes}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", default=None)
    ap.add_argument("--out", default=".sdlab/prices.json")
    args = ap.parse_args(argv)
    doc = refresh(AwsTarget.from_env(args.region), Path(args.out))
    print(json.dumps({"written": args.out, "types": len(doc["prices"]), "notes": doc["notes"]}, indent=2))


if __name__ == "__main__":
    main()
