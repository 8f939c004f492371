"""KEDA's `aws-sqs-queue` scaling, as KEDA and the HPA compute it, from the same `scaling:` values.

Used by the local autoscaler and the simulator (`sdlab.sim`), so the numbers users tune locally are the ones the
rendered ScaledObject applies on EKS. Sources (read, not guessed; docs/tuning.md cites them):
- KEDA `pkg/scalers/aws_sqs_queue_scaler.go`: metric = visible (+ in flight when `scaleOnInFlight`), active when
  metric > `activationQueueLength` (strict);
- KEDA `pkg/scaling/executor/scale_scaledobjects.go` (every `pollingInterval`): 0 → max(min, 1) when active; N → 0
  when inactive, `minReplicaCount` is 0 and the last active time is more than `cooldownPeriod` ago;
- Kubernetes `pkg/controller/podautoscaler/replica_calculator.go` (External metric, AverageValue target, every
  15 s): ceil(metric / queueLength) unless |1 - metric / (queueLength × current)| ≤ 0.1 (tolerance);
- Kubernetes `horizontal.go` `normalizeDesiredReplicasWithBehaviors`: stabilisation (scale-up: lowest
  recommendation of its window, scale-down: highest of its window), then the policies' rate limits
  (`calculateScaleUpLimitWithScalingRules`, `calculateScaleDownLimitWithBehaviors`), then [max(min, 1), max].
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from sdlab.config import HpaPolicy, HpaRules, ScalingSettings

HPA_SYNC_SECONDS = 15.0  # kube-controller-manager --horizontal-pod-autoscaler-sync-period (EKS: default)
HPA_TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
HPA_MAX_WINDOW_SECONDS = 3600  # the API rejects longer stabilisation windows
# Kubernetes' defaults (autoscaling/v2 SetDefaults_HorizontalPodAutoscalerBehavior)
DEFAULT_SCALE_UP = HpaRules(stabilization_window_seconds=0, select_policy="Max", policies=(
    HpaPolicy(type="Percent", value=100, period_seconds=15), HpaPolicy(type="Pods", value=4, period_seconds=15)))
DEFAULT_SCALE_DOWN_POLICIES = (HpaPolicy(type="Percent", value=100, period_seconds=15),)


def scale_up_rules(settings: ScalingSettings) -> HpaRules:
    """The scale-up rules the HPA applies (Kubernetes' defaults unless `scaling.hpa.scale_up` sets them)."""
    rules = settings.hpa.scale_up
    if rules is None:
        return DEFAULT_SCALE_UP
    return HpaRules(stabilization_window_seconds=rules.stabilization_window_seconds or 0, select_policy=rules.select_policy,
                    policies=rules.policies or DEFAULT_SCALE_UP.policies)


def scale_down_rules(settings: ScalingSettings) -> HpaRules:
    """The scale-down rules as rendered: window = min(cooldown, 3600) unless set; sdlab's policy 1 pod a minute."""
    rules = settings.hpa.scale_down
    window = rules.stabilization_window_seconds
    if window is None:
        window = min(settings.cooldown_seconds, HPA_MAX_WINDOW_SECONDS)
    return HpaRules(stabilization_window_seconds=window, select_policy=rules.select_policy,
                    policies=rules.policies or DEFAULT_SCALE_DOWN_POLICIES)


def queue_metric(visible: int, in_flight: int, settings: ScalingSettings) -> int:
    """The number KEDA reads from SQS for this ScaledObject."""
    return visible + (in_flight if settings.scale_on_in_flight else 0)


def is_active(metric: int, settings: ScalingSettings) -> bool:
    """KEDA's activation test (strict `>`); with min_replicas ≥ 1 the scaler is always active."""
    return settings.min_replicas >= 1 or metric > settings.activation_queue_length


def hpa_raw(metric: int, current: int, settings: ScalingSettings) -> int:
    """The replica calculator's recommendation (before behaviour and min/max) for `current` (≥ 1) replicas."""
    if abs(1.0 - metric / (current * settings.queue_length)) <= HPA_TOLERANCE:
        return current
    return math.ceil(metric / settings.queue_length)


def hpa_desired(metric: int, current: int, settings: ScalingSettings) -> int:
    """The HPA's AverageValue recommendation clamped to [max(min, 1), max] (no stabilisation or rate limits)."""
    return max(max(settings.min_replicas, 1), min(settings.max_replicas, hpa_raw(metric, current, settings)))


def _change_in_period(events: deque[tuple[float, int]], now: float, period: float) -> int:
    return sum(n for t, n in events if t > now - period)


def _limit(rules: HpaRules, current: int, up: deque[tuple[float, int]], down: deque[tuple[float, int]], now: float,
           scale_up: bool) -> int:
    """calculateScaleUpLimitWithScalingRules / calculateScaleDownLimitWithBehaviors."""
    if rules.select_policy == "Disabled":
        return current
    # "Max" = the largest change (up: highest count, down: lowest); "Min" = the smallest change
    pick = max if (rules.select_policy == "Max") == scale_up else min
    result: int | None = None
    for p in rules.policies or ():
        start = current - _change_in_period(up, now, p.period_seconds) + _change_in_period(down, now, p.period_seconds)
        if scale_up:
            proposed = start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
        else:
            proposed = start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else result


@dataclass
class KedaScaler:
    """Replica decisions over time, stepping like the KEDA operator plus the HPA it manages.

    `scale_down_window_seconds` overrides the scale-down stabilisation window (kept for callers that set it);
    `hpa_sync_seconds` is the HPA's period (the local autoscaler compresses it for small polling intervals).
    """

    settings: ScalingSettings
    scale_down_window_seconds: float | None = None
    hpa_sync_seconds: float = HPA_SYNC_SECONDS
    replicas: int = 0
    _last_active: float | None = None
    _next_keda_poll: float = 0.0
    _next_hpa_sync: float = 0.0
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)
    _up_events: deque[tuple[float, int]] = field(default_factory=deque)
    _down_events: deque[tuple[float, int]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.replicas = self.settings.min_replicas
        self._up = scale_up_rules(self.settings)
        self._down = scale_down_rules(self.settings)
        self._up_window = float(self._up.stabilization_window_seconds or 0)
        self._down_window = float(self._down.stabilization_window_seconds or 0)
        if self.scale_down_window_seconds is not None:
            self._down_window = float(self.scale_down_window_seconds)
        periods = [p.period_seconds for p in (self._up.policies or ()) + (self._down.policies or ())]
        self._longest_period = float(max(periods, default=0))

    def step(self, now: float, visible: int, in_flight: int) -> int:
        """Advance to time `now` (seconds) with the queue as given; returns the replica count."""
        s = self.settings
        if now >= self._next_keda_poll:
            self._next_keda_poll = now + s.polling_interval_seconds
            self.keda_poll(now, queue_metric(visible, in_flight, s))
        if self.replicas > 0 and now >= self._next_hpa_sync:
            self._next_hpa_sync = now + self.hpa_sync_seconds
            self.hpa_sync(now, queue_metric(visible, in_flight, s))
        return self.replicas

    def keda_poll(self, now: float, metric: int) -> None:
        """One KEDA operator poll (RequestScale): activation from zero and the cooldown to zero."""
        s = self.settings
        if is_active(metric, s):
            self._last_active = now
            if self.replicas == 0:
                self.replicas = max(s.min_replicas, 1)
                self._next_hpa_sync = now + self.hpa_sync_seconds
        elif self.replicas > 0 and s.min_replicas == 0 and (
                self._last_active is None or now - self._last_active > s.cooldown_seconds):
            self.replicas = 0
        elif self.replicas < s.min_replicas:
            self.replicas = s.min_replicas

    def hpa_sync(self, now: float, metric: int) -> None:
        """One HPA sync: replica calculator, stabilisation, rate limits, [max(min, 1), max]."""
        s = self.settings
        current = self.replicas
        raw = hpa_raw(metric, current, s)
        up_rec = down_rec = raw
        for t, r in self._recommendations:
            if t > now - self._up_window:
                up_rec = min(up_rec, r)
            if t > now - self._down_window:
                down_rec = max(down_rec, r)
        recommendation = min(max(current, up_rec), down_rec)
        self._recommendations.append((now, raw))
        keep = max(self._up_window, self._down_window)
        while self._recommendations and self._recommendations[0][0] <= now - keep:
            self._recommendations.popleft()
        for events in (self._up_events, self._down_events):
            while events and events[0][0] <= now - self._longest_period:
                events.popleft()
        hpa_min = max(s.min_replicas, 1)
        desired = recommendation
        if recommendation > current:
            limit = max(_limit(self._up, current, self._up_events, self._down_events, now, True), current)
            desired = min(recommendation, s.max_replicas, limit)
        elif recommendation < current:
            limit = min(_limit(self._down, current, self._up_events, self._down_events, now, False), current)
            desired = max(recommendation, hpa_min, limit)
        desired = max(hpa_min, min(s.max_replicas, desired)) if desired != current else desired
        if desired > current:
            self._up_events.append((now, desired - current))
        elif desired < current:
            self._down_events.append((now, current - desired))
        self.replicas = desired
