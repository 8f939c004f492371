"""`sdlab up --autoscale`, live: runtime+agent pods from zero, scaled by KEDA's formula to the cap, wired exactly as the
rendered Deployment, back to zero after the cooldown, nothing left, and the simulator agreeing with the run.

One live run serves both checks (a run is stack start, a burst, the cooldown and the stop: about 20 s)."""

from __future__ import annotations

import re
import time

import pytest

from sdlab.local.autoscaler import pod_processes
from sdlab.local.processes import alive
from sdlab.local.stack import read_stack
from sdlab.sim.calibrate import calibration_config, compare, live_run, simulate_local
from tests.integration.test_wiring import assert_same_wiring

pytestmark = pytest.mark.integration


def test_autoscale_from_zero_to_the_cap_and_back_as_the_simulator_predicts(tmp_path, model_cache):
    from tests.conftest import TEST_CONFIG

    settings = calibration_config(TEST_CONFIG, max_replicas=2, queue_length=2, cooldown_s=5)
    rt = settings.runtimes[0]
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "models").symlink_to(model_cache)
    seen: dict[str, object] = {}

    def before() -> None:
        assert pod_processes(home) == []  # min_replicas 0: nothing runs before work arrives
        seen["stack"] = read_stack(home)

    def during() -> None:
        # once a pod's agent runs, it is wired exactly as the rendered Deployment's (and as `sdlab up`'s)
        deadline = time.monotonic() + 120
        while not [p for p in pod_processes(home) if p.name.startswith("agent-")] and time.monotonic() < deadline:
            time.sleep(0.2)
        agent = next(p for p in pod_processes(home) if p.name.startswith("agent-"))
        runtime = next(p for p in pod_processes(home) if p.name == "runtime-" + agent.name.removeprefix("agent-"))
        assert_same_wiring(settings, rt, agent.pid, runtime.pid)
        seen["wired"] = True

    live = live_run(settings, rt.name, home, [0.0] * 16, {"steps": 20, "width": 128, "height": 128}, timeout_s=90,
                    before=before, during=during)
    assert seen.get("wired") is True
    log = (home / "logs" / "autoscaler.log").read_text()
    pods = set(re.findall(rf"scale-out {rt.name}: started pod (\S+)", log))
    assert len(pods) == 2, "16 messages / queue_length 2 = 8 pods wanted, capped at max_replicas 2"
    assert live.samples[-1][1] == 0, "after the cooldown the pods scale back to zero"
    stack = seen["stack"]
    assert isinstance(stack, dict)
    assert not [p["name"] for p in stack["processes"] if alive(p["pid"])], "`down` leaves no process"

    # the simulator on the same arrivals, with the run's measured service time and pod start
    report = compare(live, simulate_local(settings, rt.name, live))
    assert report["peak_pods"]["live"] == report["peak_pods"]["sim"] == 2, report
    assert report["drain_error"] <= 0.15, report      # queue-drain time
    assert report["pod_seconds_error"] <= 0.15, report  # the replica timeline, as pod-seconds until back to zero
