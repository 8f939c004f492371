"""KEDA's `aws-sqs-queue` scaling, as KEDA and the HPA compute it, from the same `scaling:` values.

Used by the simulator (and the notebooks that tune thresholds) so the numbers users tune locally are the ones
the rendered ScaledObject applies on EKS:
- the metric is `visible (+ in-flight if scale_on_in_flight)` messages;
- 0 → 1 (KEDA operator, every `polling_interval_seconds`): when the metric is above `activation_queue_length`;
- 1 ↔ N (HPA, every 15 s): `ceil(metric / queue_length)` clamped to [max(min, 1), max], skipped within the HPA's
  10 % tolerance; scale-down takes the highest recommendation of the stabilisation window;
- N → 0 (KEDA): after `cooldown_seconds` without activity, when `min_replicas` is 0.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from sdlab.config import ScalingSettings

HPA_SYNC_SECONDS = 15.0
HPA_TOLERANCE = 0.1


def queue_metric(visible: int, in_flight: int, settings: ScalingSettings) -> int:
    """The number KEDA reads from SQS for this ScaledObject."""
    return visible + (in_flight if settings.scale_on_in_flight else 0)


def is_active(metric: int, settings: ScalingSettings) -> bool:
    """KEDA's activation test (strict `>`); with min_replicas ≥ 1 the scaler is always active."""
    return settings.min_replicas >= 1 or metric > settings.activation_queue_length


def hpa_desired(metric: int, current: int, settings: ScalingSettings) -> int:
    """The HPA's AverageValue recommendation for `current` (≥ 1) replicas."""
    floor = max(settings.min_replicas, 1)
    ratio = metric / (current * settings.queue_length)
    if abs(ratio - 1.0) <= HPA_TOLERANCE:
        return current
    return max(floor, min(settings.max_replicas, math.ceil(metric / settings.queue_length)))


@dataclass
class KedaScaler:
    """Replica decisions over time, stepping like the KEDA operator plus the HPA."""

    settings: ScalingSettings
    scale_down_window_seconds: float = 300.0
    hpa_sync_seconds: float = HPA_SYNC_SECONDS  # the local autoscaler compresses time for small intervals
    replicas: int = 0
    _last_active: float | None = None
    _next_keda_poll: float = 0.0
    _next_hpa_sync: float = 0.0
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.replicas = self.settings.min_replicas

    def step(self, now: float, visible: int, in_flight: int) -> int:
        """Advance to time `now` (seconds) with the queue as given; returns the replica count."""
        s = self.settings
        metric = queue_metric(visible, in_flight, s)
        if now >= self._next_keda_poll:
            self._next_keda_poll = now + s.polling_interval_seconds
            if is_active(metric, s):
                self._last_active = now
                if self.replicas == 0:
                    self.replicas = max(s.min_replicas, 1)
                    self._next_hpa_sync = now + self.hpa_sync_seconds
            elif (self.replicas > 0 and s.min_replicas == 0 and self._last_active is not None
                  and now - self._last_active >= s.cooldown_seconds):
                self.replicas = 0
                self._recommendations.clear()
        if self.replicas > 0 and now >= self._next_hpa_sync:
            self._next_hpa_sync = now + self.hpa_sync_seconds
            self._hpa(now, metric)
        return self.replicas

    def _hpa(self, now: float, metric: int) -> None:
        desired = hpa_desired(metric, self.replicas, self.settings)
        self._recommendations.append((now, desired))
        while self._recommendations and now - self._recommendations[0][0] > self.scale_down_window_seconds:
            self._recommendations.popleft()
        if desired >= self.replicas:
            self.replicas = desired  # scale up at once
        else:
            self.replicas = max(r for _, r in self._recommendations)  # scale down: the window's highest
