"""KEDA's formula and the simulator built on it."""

import pytest

from sdlab.config import ScalingSettings
from sdlab.scaling import KedaScaler, hpa_desired, is_active, queue_metric
from sdlab.sim import burst, constant, simulate


def test_scaling_metric_counts_in_flight_only_when_asked():
    assert queue_metric(10, 3, ScalingSettings(scale_on_in_flight=True)) == 13
    assert queue_metric(10, 3, ScalingSettings(scale_on_in_flight=False)) == 10


def test_scaling_activation_is_strict():
    s = ScalingSettings(activation_queue_length=2)
    assert not is_active(2, s) and is_active(3, s)
    assert is_active(0, ScalingSettings(min_replicas=1))


@pytest.mark.parametrize(("metric", "current", "expected"), [
    (20, 1, 4),      # KEDA's docs: queue 20, threshold 5 -> 4 replicas
    (21, 4, 4),      # within the HPA's 10 % tolerance: no change
    (100, 2, 10),    # clamped to max_replicas
    (0, 3, 1),       # never below max(min, 1) while active
])
def test_scaling_hpa_desired(metric, current, expected):
    assert hpa_desired(metric, current, ScalingSettings(queue_length=5, max_replicas=10)) == expected


def test_scaling_scaler_zero_to_n_and_back_to_zero():
    scaler = KedaScaler(ScalingSettings(queue_length=5, max_replicas=10, polling_interval_seconds=15, cooldown_seconds=60))
    assert scaler.step(0, 0, 0) == 0
    assert scaler.step(15, 40, 0) == 1          # activation by the KEDA operator
    assert scaler.step(30, 40, 0) == 5          # the HPA's first sync wants 8; default scale-up: max(+4 pods, +100 %)
    assert scaler.step(45, 40, 0) == 8          # next period: ceil(40 / 5)
    assert scaler.step(60, 0, 8) == 8           # in-flight work holds the replicas
    assert scaler.step(75, 0, 0) == 8           # scale-down is stabilised (window min(cooldown, 3600) = 60 s)
    replicas = [scaler.step(t, 0, 0) for t in range(90, 400, 15)]
    assert replicas[-1] == 0                    # cooldown passed: back to zero


def test_scaling_scale_down_policy_removes_one_pod_a_minute():
    s = ScalingSettings(queue_length=1, max_replicas=10, min_replicas=1, polling_interval_seconds=15, cooldown_seconds=0)
    scaler = KedaScaler(s)
    for t in range(0, 120, 15):
        scaler.step(t, 8, 0)
    assert scaler.replicas == 8
    counts = [scaler.step(t, 0, 0) for t in range(120, 460, 15)]
    assert counts[0] == 7 and counts[3] == 7 and counts[4] == 6   # 1 pod per 60 s (sdlab's rendered policy)
    assert counts[-1] == 2


def test_sim_serves_everything_and_costs_scale_with_cold_start():
    settings = ScalingSettings(queue_length=4, max_replicas=4, cooldown_seconds=60, polling_interval_seconds=5)
    fast = simulate(settings, burst(2.0, 0, 120), duration_s=300, seconds_per_image=1.0, cold_start_seconds=30)
    slow = simulate(settings, burst(2.0, 0, 120), duration_s=300, seconds_per_image=1.0, cold_start_seconds=240)
    assert fast.unfinished == 0 and slow.unfinished == 0
    assert len(fast.latencies) == fast.arrivals and len(slow.latencies) == slow.arrivals
    assert fast.arrivals == slow.arrivals > 150  # same seed, same traffic
    assert slow.percentile(0.95) > fast.percentile(0.95)
    summary = fast.summary(price_per_hour=1.0)
    assert summary["gpu_hours"] > 0 and summary["usd_per_1000_images"] > 0


def test_sim_spot_interruptions_lose_nothing():
    settings = ScalingSettings(queue_length=2, max_replicas=3, polling_interval_seconds=5, cooldown_seconds=30)
    result = simulate(settings, constant(0.5), duration_s=600, seconds_per_image=2.0, cold_start_seconds=20,
                      spot_interruptions_per_hour=30, seed=3)
    assert result.interruptions > 0
    assert result.unfinished == 0
    assert len(result.latencies) == result.arrivals > 250  # every arrival finished exactly once
