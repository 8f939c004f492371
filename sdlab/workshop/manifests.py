"""From config to Kubernetes: change one value of `sdlab.yaml`, render both, see what changed and validate it.

Rendering and validation are `sdlab k8s render`'s own (`sdlab.k8s`); this module only edits a copy of the
settings by a dotted path and diffs the rendered YAML object by object.
"""

from __future__ import annotations

import difflib
from typing import Any

from sdlab.config import Settings, parse_config
from sdlab.errors import SdlabError
from sdlab.k8s.cli import PLACEHOLDER_ACCOUNT, context_for
from sdlab.k8s.files import to_yaml
from sdlab.k8s.render import render_stack
from sdlab.k8s.validate import CRDS_DIR_ENV, crds_dir, validate_all


def with_value(settings: Settings, runtime: str, path: str, value: Any) -> Settings:
    """A copy of `settings` with `runtimes[<runtime>].<path>` set (e.g. "scaling.queue_length"); checked as a file is."""
    data = settings.model_dump(mode="json", exclude_none=True)
    spec = next((rt for rt in data["runtimes"] if rt["name"] == runtime), None)
    if spec is None:
        raise SdlabError(f"runtime {runtime!r} is not in the config; pick one of {[rt['name'] for rt in data['runtimes']]}")
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise SdlabError(f"{path!r}: {key!r} is not a section of a runtime; see docs/configuration.md")
        node = node[key]
    node[leaf] = value
    return parse_config(data, f"{runtime}.{path} = {value!r}")


def render(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every object of the stack, keyed "Kind/name", rendered with the placeholder account as `sdlab k8s render` does."""
    registry = f"{PLACEHOLDER_ACCOUNT}.dkr.ecr.{settings.stack.region}.amazonaws.com"
    ctx = context_for(settings, account_id=PLACEHOLDER_ACCOUNT, registry=registry, cluster=settings.stack.name)
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in render_stack(settings, ctx)}


def diff(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A unified YAML diff per object that changed (objects added or removed included)."""
    out = {}
    for key in sorted(set(before) | set(after)):
        old = to_yaml(before[key]).splitlines() if key in before else []
        new = to_yaml(after[key]).splitlines() if key in after else []
        if old != new:
            out[key] = "\n".join(difflib.unified_diff(old, new, f"before/{key}", f"after/{key}", n=2, lineterm=""))
    return out


def problems(objects: dict[str, dict[str, Any]]) -> list[str]:
    """What the Kubernetes schemas and the KEDA/Karpenter CRDs reject ([] when all is valid). Without the CRD folder
    the KEDA/Karpenter kinds go unchecked and a warning says so (`sdlab.k8s.validate.validate_all`)."""
    if not crds_dir().is_dir():
        print(f"KEDA/Karpenter schema checks NOT run: CRD folder {crds_dir()} is absent (set ${CRDS_DIR_ENV})")
    return validate_all(list(objects.values()))


def operations(objects: dict[str, dict[str, Any]]) -> Any:
    """Per runtime, what a rollout, a node scale-in and a scale-to-zero may do to running tasks, from the rendered
    objects: the Deployment's rolling update and grace period, the PodDisruptionBudget, Karpenter's consolidation and
    KEDA's polling and cooldown. A DataFrame."""
    import pandas as pd

    rows = []
    for key, deployment in objects.items():
        if not key.startswith("Deployment/"):
            continue
        name = key.split("/", 1)[1]
        rolling = deployment["spec"].get("strategy", {}).get("rollingUpdate", {})
        pdb = objects.get(f"PodDisruptionBudget/{name}", {}).get("spec", {})
        pool = objects.get(f"NodePool/{name}", {}).get("spec", {}).get("disruption", {})
        scaled = objects.get(f"ScaledObject/{name}", {}).get("spec", {})
        rows.append({"deployment": name, "max_surge": rolling.get("maxSurge"), "max_unavailable": rolling.get("maxUnavailable"),
                     "grace_s": deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds"),
                     "pdb_max_unavailable": pdb.get("maxUnavailable"), "node_consolidation": pool.get("consolidationPolicy"),
                     "consolidate_after": pool.get("consolidateAfter"), "keda_polling_s": scaled.get("pollingInterval"),
                     "keda_cooldown_s": scaled.get("cooldownPeriod")})
    return pd.DataFrame(rows)
