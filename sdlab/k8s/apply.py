"""Apply rendered objects to a cluster with server-side apply, wait for rollouts, delete in reverse order.

Uses the kubernetes Python client's DynamicClient (discovery, then PATCH `application/apply-patch+yaml` with field
manager "sdlab" and `force=true`, so sdlab owns every field it renders and takes a field back from a manual edit).
Fields sdlab does not render (a Deployment's `replicas`, owned by KEDA) stay with their owners.

Readiness follows `kubectl rollout status`: the controller has seen the latest generation, every replica runs the
new template and is available. Zero replicas (KEDA scaled to zero) is a valid, ready state. On failure the error
carries the recent events of the Deployment, its ReplicaSets and pods.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlab.errors import ProvisionError

log = logging.getLogger(__name__)
FIELD_MANAGER = "sdlab"


class RolloutError(ProvisionError):
    """A Deployment did not become ready; the message carries its recent events."""


@dataclass(frozen=True)
class Ref:
    """What names one object: apiVersion, kind, namespace (None for cluster-scoped) and name."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Ref:
        meta = obj.get("metadata") or {}
        return cls(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace + '/' if self.namespace else ''}{self.name}"


def connect(*, kubeconfig: str | None = None, context: str | None = None, host: str | None = None) -> Any:
    """A DynamicClient for the kubeconfig's current (or named) context, or for a plain `host` URL (tests).

    The discovery cache is a private temporary file, so two clusters never share one.
    """
    from kubernetes import client, config, dynamic

    if host:
        cfg = client.Configuration()
        cfg.host = host
        api = client.ApiClient(cfg)
    else:
        api = config.new_client_from_config(config_file=kubeconfig, context=context)
    cache = Path(tempfile.mkdtemp(prefix="sdlab-discovery-")) / "cache.json"
    return dynamic.DynamicClient(api, cache_file=str(cache))


def _resource(dyn: Any, ref: Ref) -> Any:
    return dyn.resources.get(api_version=ref.api_version, kind=ref.kind)


def check_served(dyn: Any, objects: Iterable[dict[str, Any]]) -> None:
    """Raise listing every kind the cluster does not serve (e.g. KEDA or Karpenter not installed yet)."""
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    missing = []
    for api_version, kind in sorted({(o["apiVersion"], o["kind"]) for o in objects}):
        try:
            _resource(dyn, Ref(api_version, kind, "-"))
        except ResourceNotFoundError:
            missing.append(f"{api_version} {kind}")
    if missing:
        raise ProvisionError(f"the cluster does not serve {missing}; install KEDA and Karpenter first "
                             "(`sdlab aws deploy` runs or prints the helm commands)")


def apply_objects(dyn: Any, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Server-side apply each object in order; returns the objects as the server stored them."""
    check_served(dyn, objects)
    out = []
    for obj in objects:
        ref = Ref.of(obj)
        stored = dyn.server_side_apply(_resource(dyn, ref), body=obj, namespace=ref.namespace,
                                       field_manager=FIELD_MANAGER, force_conflicts=True)
        log.info("applied %s", ref)
        out.append(stored.to_dict())
    return out


def rollout_state(deployment: dict[str, Any]) -> tuple[bool, str]:
    """(done, why not): kubectl's rollout-status rules; 0 desired replicas is done once observed."""
    meta, spec, status = deployment.get("metadata", {}), deployment.get("spec", {}), deployment.get("status") or {}
    if status.get("observedGeneration", 0) < meta.get("generation", 1):
        return False, "waiting for the controller to observe the new generation"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            raise RolloutError(f"Deployment {meta.get('name')} exceeded its progress deadline: {cond.get('message')}")
    desired = spec.get("replicas", 1)
    updated, total = status.get("updatedReplicas", 0), status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < desired:
        return False, f"{updated} of {desired} replicas updated"
    if total > updated:
        return False, f"{total - updated} old replicas pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{available} of {desired} replicas available"


def recent_events(dyn: Any, namespace: str, name: str, limit: int = 20) -> list[str]:
    """Events of the object `name` and of what it owns (`name-…`: ReplicaSets, pods), oldest first."""
    events = dyn.get(dyn.resources.get(api_version="v1", kind="Event"), namespace=namespace).to_dict().get("items", [])
    mine = [e for e in events if (e.get("involvedObject") or {}).get("name", "").startswith(name)]
    mine.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return [f"{e.get('type', '')} {e['involvedObject'].get('kind')}/{e['involvedObject'].get('name')}: "
            f"{e.get('reason', '')}: {e.get('message', '')}" for e in mine[-limit:]]


def wait_for_rollouts(dyn: Any, objects: list[dict[str, Any]], *, timeout_seconds: float = 900.0,
                      poll_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic) -> dict[str, str]:
    """Wait until every Deployment among `objects` has rolled out; returns name -> final state."""
    pending = {Ref.of(o) for o in objects if o["kind"] == "Deployment"}
    done: dict[str, str] = {}
    deadline = clock() + timeout_seconds
    while pending:
        for ref in sorted(pending, key=str):
            current = dyn.get(_resource(dyn, ref), name=ref.name, namespace=ref.namespace).to_dict()
            try:
                ready, why = rollout_state(current)
            except RolloutError as err:
                raise RolloutError(_with_events(str(err), dyn, ref)) from err
            if ready:
                done[str(ref)] = why
                pending.discard(ref)
            elif clock() > deadline:
                raise RolloutError(_with_events(f"{ref} not ready after {timeout_seconds:.0f} s: {why}", dyn, ref))
        if pending:
            time.sleep(poll_seconds)
    return done


def _with_events(message: str, dyn: Any, ref: Ref) -> str:
    events = recent_events(dyn, ref.namespace or "default", ref.name)
    return message + ("\nrecent events:\n  " + "\n  ".join(events) if events else "\n(no events recorded)")


def delete_objects(dyn: Any, objects: list[dict[str, Any]]) -> list[str]:
    """Delete in reverse apply order (ScaledObject before Deployment, NodePool before its NodeClass, Namespace
    last); objects already gone are skipped. Returns what was deleted."""
    from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

    deleted = []
    for obj in reversed(objects):
        ref = Ref.of(obj)
        try:
            dyn.delete(_resource(dyn, ref), name=ref.name, namespace=ref.namespace, propagation_policy="Foreground")
        except (NotFoundError, ResourceNotFoundError):
            continue
        deleted.append(str(ref))
        log.info("deleted %s", ref)
    return deleted
