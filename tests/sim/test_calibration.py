"""Calibration kept true: a small burst live on `sdlab up --autoscale` and in the simulator agree within 15 %."""

from __future__ import annotations

import pytest

from sdlab.sim.calibrate import calibration_config, compare, live_run, simulate_local

pytestmark = pytest.mark.integration


def test_simulator_matches_the_live_autoscaled_stack(tmp_path, model_cache):
    from tests.conftest import TEST_CONFIG

    settings = calibration_config(TEST_CONFIG, max_replicas=2, queue_length=2, cooldown_s=5)
    rt = settings.runtimes[0].name
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "models").symlink_to(model_cache)
    live = live_run(settings, rt, home, [0.0] * 16, {"steps": 20, "width": 128, "height": 128}, timeout_s=90)
    sim = simulate_local(settings, rt, live)
    report = compare(live, sim)
    assert report["peak_pods"]["live"] == report["peak_pods"]["sim"] == 2, report
    assert report["drain_error"] <= 0.15, report      # queue-drain time
    assert report["pod_seconds_error"] <= 0.15, report  # the replica timeline, as pod-seconds until back to zero
