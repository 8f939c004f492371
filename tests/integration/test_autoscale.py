"""`sdlab up --autoscale`: runtime+agent pods from zero, scaled by KEDA's formula, back to zero, nothing left."""

from __future__ import annotations

import re
import time

import pytest

from sdlab.client import Client
from sdlab.config import parse_config
from sdlab.local import stack as local_stack
from sdlab.local.autoscaler import pod_processes
from sdlab.local.processes import alive
from tests.integration.test_wiring import assert_same_wiring

pytestmark = pytest.mark.integration


def test_autoscale_from_zero_to_two_and_back(tmp_path, model_cache):
    from tests.conftest import TEST_CONFIG

    rt = {**TEST_CONFIG["runtimes"][0],
          "scaling": {"min_replicas": 0, "max_replicas": 2, "queue_length": 2, "polling_interval_seconds": 1,
                      "cooldown_seconds": 3}}
    settings = parse_config({**TEST_CONFIG, "runtimes": [rt]})
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "models").symlink_to(model_cache)
    info = local_stack.up(settings, home, autoscale=True)
    try:
        assert pod_processes(home) == []  # min_replicas 0: nothing runs before work arrives
        with Client.from_stack(str(home)) as client:
            ids = [client.submit("rt-a", f"scale {i}", payload={"steps": 4, "width": 64, "height": 64}).id
                   for i in range(6)]
            # once a pod's agent runs, it is wired exactly as the rendered Deployment's (and as `sdlab up`'s)
            deadline = time.monotonic() + 120
            while not [p for p in pod_processes(home) if p.name.startswith("agent-")] and time.monotonic() < deadline:
                time.sleep(0.2)
            agent = next(p for p in pod_processes(home) if p.name.startswith("agent-"))
            runtime = next(p for p in pod_processes(home) if p.name == "runtime-" + agent.name.removeprefix("agent-"))
            assert_same_wiring(settings, settings.runtimes[0], agent.pid, runtime.pid)
            notes = client.wait(ids, timeout=180)
        assert all(n.status.value == "completed" for n in notes.values())
        log = (home / "logs" / "autoscaler.log").read_text()
        pods = set(re.findall(r"scale-out rt-a: started pod (\S+)", log))
        assert len(pods) == 2, "6 messages / queue_length 2 = 3 pods wanted, capped at max_replicas 2"
        deadline = time.monotonic() + 60
        while pod_processes(home) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pod_processes(home) == [], "after the cooldown the pods scale back to zero"
    finally:
        local_stack.down(home)
    assert not [p["name"] for p in info["processes"] if alive(p["pid"])]
