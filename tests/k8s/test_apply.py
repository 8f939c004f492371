"""sdlab.k8s.apply over real HTTP against the Kubernetes API emulator (tests/k8s/kube_emulator.py, its own process).

The tests play the controllers (Deployment controller, KEDA, the scheduler's events) by writing through the API,
as those controllers do on a cluster.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sdlab.errors import ProvisionError
from sdlab.k8s.apply import (
    FIELD_MANAGER,
    RolloutError,
    apply_objects,
    connect,
    delete_objects,
    rollout_state,
    wait_for_rollouts,
)

ROOT = Path(__file__).resolve().parents[2]
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture()
def kube_api(tmp_path) -> Iterator[str]:
    """The emulator in a process of its own on a free loopback port; yields its URL."""
    from sdlab.local.processes import free_port, http_ok, spawn, stop, wait_until

    port = free_port()
    proc, popen = spawn("kube-emulator", ["-m", "tests.k8s.kube_emulator", "--port", str(port)],
                        {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}, tmp_path / "kube.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(http_ok(f"{url}/version"), popen, proc, 30)
        yield url
    finally:
        stop([proc])


@pytest.fixture()
def dyn(kube_api):
    return connect(host=kube_api)


def _path(obj: dict, status: bool = False) -> str:
    group_version = obj["apiVersion"]
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    plural = {"Deployment": "deployments", "ScaledObject": "scaledobjects"}[obj["kind"]]
    return f"{base}/namespaces/{obj['metadata']['namespace']}/{plural}/{obj['metadata']['name']}" + ("/status" if status else "")


def _deployments(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "Deployment"]


def _set_status(kube_api: str, deployment: dict, **status) -> None:
    url = kube_api + _path(deployment, status=True)
    httpx.patch(url, content=json.dumps({"status": status}), headers=MERGE).raise_for_status()


def test_apply_creates_every_object_and_reapplying_changes_nothing(dyn, kube_api, objects):
    stored = apply_objects(dyn, objects)
    assert [(o["kind"], o["metadata"]["name"]) for o in stored] == [(o["kind"], o["metadata"]["name"]) for o in objects]
    for sent, got in zip(objects, stored, strict=True):
        assert got.get("spec") == sent.get("spec"), f"{sent['kind']}/{sent['metadata']['name']} stored differently"
        assert {m["manager"] for m in got["metadata"]["managedFields"]} == {FIELD_MANAGER}
    again = apply_objects(dyn, objects)
    assert [o["metadata"]["generation"] for o in again] == [1] * len(objects), "an unchanged apply bumped a generation"


def test_apply_takes_back_a_field_another_manager_changed(dyn, kube_api, objects):
    apply_objects(dyn, objects)
    scaled = next(o for o in objects if o["kind"] == "ScaledObject")
    edited = {**scaled, "spec": {**scaled["spec"], "maxReplicaCount": 99}}
    url = kube_api + _path(scaled)
    headers = {"Content-Type": "application/apply-patch+yaml"}
    assert httpx.patch(url, params={"fieldManager": "someone"}, content=json.dumps(edited), headers=headers).status_code == 409
    assert httpx.patch(url, params={"fieldManager": "someone", "force": "true"}, content=json.dumps(edited),
                       headers=headers).status_code == 200
    stored = apply_objects(dyn, [scaled])[0]
    assert stored["spec"]["maxReplicaCount"] == scaled["spec"]["maxReplicaCount"]
    assert stored["metadata"]["generation"] == 3


def test_wait_treats_scale_to_zero_as_ready(dyn, kube_api, objects):
    apply_objects(dyn, objects)
    for dep in _deployments(objects):  # KEDA sets replicas to 0, the controller observes it
        httpx.patch(kube_api + _path(dep), content=json.dumps({"spec": {"replicas": 0}}), headers=MERGE).raise_for_status()
        _set_status(kube_api, dep, observedGeneration=2, replicas=0)
    done = wait_for_rollouts(dyn, objects, timeout_seconds=5, poll_seconds=0.1)
    assert sorted(done.values()) == ["0 of 0 replicas available"] * len(_deployments(objects))


def test_wait_follows_a_rollout_until_the_replica_is_available(dyn, kube_api, objects):
    apply_objects(dyn, objects)
    deps = _deployments(objects)
    for dep in deps:
        _set_status(kube_api, dep, observedGeneration=1, replicas=1, updatedReplicas=1, availableReplicas=0)

    def controller() -> None:
        time.sleep(1.0)
        for dep in deps:
            _set_status(kube_api, dep, availableReplicas=1, readyReplicas=1)

    thread = threading.Thread(target=controller)
    start = time.monotonic()
    thread.start()
    done = wait_for_rollouts(dyn, objects, timeout_seconds=20, poll_seconds=0.2)
    thread.join()
    assert time.monotonic() - start >= 1.0
    assert set(done.values()) == {"1 of 1 replicas available"}


def test_wait_fails_with_the_events_that_explain_why(dyn, kube_api, objects):
    apply_objects(dyn, objects)
    dep = _deployments(objects)[0]
    ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{name}-abc.1", "namespace": ns},
             "involvedObject": {"kind": "Pod", "name": f"{name}-7d9f-abc", "namespace": ns}, "type": "Warning",
             "reason": "FailedScheduling", "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu",
             "lastTimestamp": "2026-01-01T00:00:00Z"}
    httpx.post(f"{kube_api}/api/v1/namespaces/{ns}/events", json=event).raise_for_status()
    _set_status(kube_api, dep, observedGeneration=1, replicas=1, updatedReplicas=1, availableReplicas=0)
    with pytest.raises(RolloutError) as err:
        wait_for_rollouts(dyn, [dep], timeout_seconds=0.5, poll_seconds=0.1)
    assert "Insufficient nvidia.com/gpu" in str(err.value) and "1 updated replicas available" in str(err.value)


def test_rollout_state_rules():
    base = {"metadata": {"name": "d", "generation": 2}, "spec": {"replicas": 2}}
    assert rollout_state({**base, "status": {"observedGeneration": 1}})[0] is False
    assert rollout_state({**base, "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2,
                                             "availableReplicas": 2}}) == (False, "1 old replicas pending termination")
    assert rollout_state({**base, "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                                             "availableReplicas": 2}})[0] is True
    stuck = {"observedGeneration": 2, "conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded",
                                                      "message": "ReplicaSet d-1 has timed out progressing."}]}
    with pytest.raises(RolloutError, match="progress deadline"):
        rollout_state({**base, "status": stuck})


def test_apply_refuses_kinds_the_cluster_does_not_serve(dyn, objects):
    unknown = {**objects[-1], "apiVersion": "keda.sh/v9"}
    with pytest.raises(ProvisionError, match="keda.sh/v9 ScaledObject"):
        apply_objects(dyn, [objects[0], unknown])


def test_delete_removes_in_reverse_order_and_twice_is_harmless(dyn, kube_api, objects):
    apply_objects(dyn, objects)
    deleted = delete_objects(dyn, objects)
    assert deleted[0].startswith("ScaledObject/") and deleted[-1] == "Namespace/sdlab"
    assert len(deleted) == len(objects)
    for dep in _deployments(objects):
        assert httpx.get(kube_api + _path(dep)).status_code == 404
    assert delete_objects(dyn, objects) == []
