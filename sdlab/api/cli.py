"""`sdlab api openapi` (the API's OpenAPI document) and `sdlab usage` (work and cost per API key and runtime)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tabulate import tabulate


def _cmd_openapi(args: argparse.Namespace) -> int:
    from sdlab.api.openapi import document

    text = json.dumps(document(), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(args.out)
    else:
        print(text)
    return 0


def _table(title: str, rows: dict[str, Any]) -> list[str]:
    body = [(name, t["tasks"], t["images"], t["gpu_s"], t["cost_usd"]) for name, t in sorted(rows.items())]
    text = tabulate(body, headers=(title, "tasks", "images", "GPU-s", "USD"), floatfmt=("", "", "", ".1f", ".6f"))
    return text.splitlines()


def _cmd_usage(args: argparse.Namespace) -> int:
    from sdlab.client import Client

    with Client.from_stack(args.home) as client:
        report = client.usage(args.since, args.until)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    lines = _table("API key", report["by_api_key"]) + [""] + _table("runtime", report["by_runtime"])
    lines += ["", *_table("total", {"all": report["total"]})]
    if report["total"]["unpriced_gpu_s"]:
        lines.append(f"{report['total']['unpriced_gpu_s']:.1f} GPU-s ran on nodes with no price on file (not in USD)")
    print("\n".join(lines))
    return 0


def register(sub: Any) -> None:
    a = sub.add_parser("api", help="the task API's contract").add_subparsers(dest="action", required=True)
    o = a.add_parser("openapi", help="print (or --out write) the OpenAPI 3.1 document, generated from the contracts")
    o.add_argument("--out", default=None)
    o.set_defaults(fn=_cmd_openapi)
    u = sub.add_parser("usage", help="GPU-seconds and estimated cost of ended tasks, per API key and per runtime")
    u.add_argument("--since", default=None, help="unix seconds or ISO 8601 (default: 30 days ago)")
    u.add_argument("--until", default=None, help="unix seconds or ISO 8601 (default: now)")
    u.add_argument("--json", action="store_true", help="the API's answer as JSON")
    u.set_defaults(fn=_cmd_usage)
