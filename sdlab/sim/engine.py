"""The discrete-event core: SQS queue, KEDA + HPA (or SageMaker's target tracking), Karpenter nodes, pods, Spot.

A plain event loop over a heap (docs/decisions.md says why not SimPy): events are pod finishes, pod starts,
KEDA polls, HPA syncs, consolidation checks, Spot notices and kills. Arrivals are a sorted numpy array that the
loop walks with an index; while every ready pod is busy, arrivals are admitted in bulk (bisect) rather than one
event each, which is what makes a simulated day of a million requests take seconds.

What happens, in the order the real stack does it:
- a task arrives in SQS (visible); a ready, idle pod takes up to `max_batch` visible messages (oldest first; messages
  released by an interrupted pod first) and runs them as one runtime call (`ServiceCurve.seconds(batch)`); while it
  runs, the pod's agent receives the next batch (in flight, invisible) — the agent's prefetch;
- KEDA polls every `pollingInterval` (metric = visible + in flight when `scaleOnInFlight`), the HPA syncs every
  15 s — both through `sdlab.scaling.KedaScaler`, the code the local autoscaler runs;
- a new replica binds to a node with a free GPU, else Karpenter launches a node (Spot first when allowed; a Spot
  launch finds no capacity with a small probability, then On-Demand if allowed, else a retry later); the pod is
  ready after node Ready + image pull (none with a pre-pulled snapshot, cached per node) + model load;
- scale-in removes not-ready pods first, then the newest; a stopping agent releases what it buffered at once, and
  finishes its call within the grace period or releases it too (the warm shutdown); empty nodes go after
  `consolidateAfter`;
- a Spot node gets an interruption notice at its family's rate; its pods drain (finish within min(grace, notice),
  else release) while the ReplicaSet's replacements go pending at once; the node dies at the end of the notice;
- nodes are billed per second from launch to termination at their capacity type's price.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdlab.config import ScalingSettings
from sdlab.scaling import KedaScaler, queue_metric
from sdlab.sim.facts import ServiceCurve

FINISH, POD_READY, KEDA, HPA, SAGEMAKER, CONSOLIDATE, NOTICE, KILL, GRACE_END, RETRY_LAUNCH = range(10)
INF = float("inf")


@dataclass
class Plan:
    """A run, fully resolved (numbers only): `sdlab.sim.scenario` builds it from the config and the facts."""

    scaling: ScalingSettings
    service: ServiceCurve
    max_batch: int
    gpus_per_node: int
    node_ready_s: float
    image_pull_s: float
    model_load_s: float
    price_per_hour: dict[str, float]  # capacity type -> $ per node-hour
    capacity_types: tuple[str, ...] = ("spot", "on-demand")
    interruptions_per_hour: float = 0.0  # per Spot node
    spot_unavailable_probability: float = 0.0
    spot_retry_s: float = 180.0
    spot_notice_s: float = 120.0
    consolidate_after_s: float = 60.0
    grace_s: float = 115.0
    overhead_s: float = 0.0  # per-task latency outside the runtime call (API, SQS, agent, upload, notify)
    prefetch: bool = True  # the agent's receiver holds the next batch (invisible, in flight) while the runtime works
    hpa_sync_s: float = 15.0
    autoscaler: str = "keda"  # or "sagemaker-async"
    sagemaker: dict[str, float] = field(default_factory=dict)
    fixed_usd_per_hour: float = 0.0
    per_image_usd: float = 0.0
    sqs_request_usd: float = 0.0
    queues_polled: int = 2  # KEDA reads the normal and the high-priority queue
    max_drain_s: float = 6 * 3600.0
    timeline_every_s: float = 0.0  # 0: at every KEDA poll
    label: str = ""


class _Node:
    __slots__ = ("id", "capacity", "price", "launched", "ready_at", "image_at", "pods", "interrupted", "ended", "empty_since")

    def __init__(self, nid: int, capacity: str, price: float, launched: float, ready_at: float, image_at: float) -> None:
        self.id, self.capacity, self.price, self.launched = nid, capacity, price, launched
        self.ready_at, self.image_at = ready_at, image_at
        self.pods: list[_Pod] = []
        self.interrupted = False
        self.ended: float | None = None
        self.empty_since = launched


class _Pod:
    __slots__ = ("id", "node", "created", "state", "busy", "batch", "buf", "roomy", "finish", "started")

    def __init__(self, pid: int, created: float) -> None:
        self.id, self.created = pid, created
        self.node: _Node | None = None
        self.state = "pending"  # pending -> starting -> ready -> (terminating) -> gone
        self.busy = False
        self.batch: list[int] = []  # task ids of the running call
        self.buf: list[int] = []  # task ids the agent holds for the next call (prefetch)
        self.roomy = False  # busy, ready, with room in its buffer: takes the next arrivals
        self.finish = self.started = 0.0


class SageMakerAsyncScaler:
    """SageMaker Asynchronous Inference autoscaling as the AWS docs describe it (docs/tuning.md has the sources).

    Every minute CloudWatch gets `ApproximateBacklogSizePerInstance` (backlog incl. requests in progress ÷ instances,
    averaged over the minute: sampled every 10 s here). Target tracking: the
    high alarm fires after 3 datapoints above target and scales out proportionally (desired = ceil(n × metric ÷
    target)); the low alarm after 15 datapoints below 90 % of target scales in the same way, to zero when the backlog
    is empty; cooldowns 300 s. From zero, a step policy on `HasBacklogWithoutCapacity` adds one instance after 2
    datapoints.
    """

    def __init__(self, target: float, min_instances: int, max_instances: int, scale_in_cooldown_s: float = 300.0,
                 scale_out_cooldown_s: float = 300.0) -> None:
        self.target, self.min, self.max = target, min_instances, max_instances
        self.cool_in, self.cool_out = scale_in_cooldown_s, scale_out_cooldown_s
        self.replicas = min_instances
        self.samples: deque[float] = deque(maxlen=15)
        self.no_capacity: deque[bool] = deque(maxlen=2)
        self.last_out = self.last_in = -INF
        self._window: list[int] = []
        self._last_eval = -INF

    def evaluate(self, now: float, backlog: int) -> int:
        """Called every 10 s; each minute's datapoint is the mean of its samples (CloudWatch's Average)."""
        self._window.append(backlog)
        if now - self._last_eval < 60.0 - 1e-9:
            return self.replicas
        self._last_eval = now
        mean_backlog = sum(self._window) / len(self._window)
        self._window.clear()
        return self._minute(now, mean_backlog)

    def _minute(self, now: float, backlog: float) -> int:
        n = self.replicas
        self.no_capacity.append(n == 0 and backlog > 0)
        if n == 0:
            self.samples.clear()
            if len(self.no_capacity) == 2 and all(self.no_capacity):
                self.replicas, self.last_out = max(1, self.min), now
                self.no_capacity.clear()
            return self.replicas
        metric = backlog / n
        self.samples.append(metric)
        last3 = list(self.samples)[-3:]
        if len(last3) == 3 and all(m > self.target for m in last3) and now - self.last_out >= self.cool_out:
            want = min(self.max, math.ceil(n * metric / self.target))
            if want > n:
                self.replicas, self.last_out = want, now
                self.samples.clear()
        elif (len(self.samples) == 15 and all(m < 0.9 * self.target for m in self.samples)
              and now - self.last_in >= self.cool_in and now - self.last_out >= self.cool_out):
            want = max(self.min, math.ceil(n * metric / self.target))
            if want < n:
                self.replicas, self.last_in = want, now
                self.samples.clear()
        return self.replicas


def run(plan: Plan, arrivals: np.ndarray, duration_s: float, seed: int = 0) -> dict[str, Any]:
    """Simulate; returns raw arrays and counters (`sdlab.sim.result.Result` summarises them)."""
    arr: list[float] = arrivals.tolist()
    n_tasks = len(arr)
    start = np.full(n_tasks, np.nan)
    finish = np.full(n_tasks, np.nan)
    rng = random.Random(seed + 7919)
    s = plan.scaling
    svc = [0.0] + [plan.service.seconds(b) for b in range(1, plan.max_batch + 1)]
    max_batch = plan.max_batch

    heap: list[tuple[float, int, int, Any]] = []
    seq = 0

    def push(t: float, kind: int, obj: Any = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, kind, obj))

    i_adm = 0  # arrivals admitted to the queue
    taken = 0  # next main-FIFO task to start
    retry: deque[int] = deque()
    idle: list[_Pod] = []
    active: list[_Pod] = []  # counted replicas (not terminating, not gone)
    nodes: list[_Node] = []  # every node launched (billing)
    live: list[_Node] = []  # nodes not yet terminated
    in_flight = 0
    done = 0
    busy_s = 0.0
    counters = {"interruptions": 0, "released": 0, "nodes_launched": 0, "spot_unavailable": 0, "pods_started": 0}
    timeline: list[tuple[float, int, int, int, int, int, int]] = []
    serial = [0, 0]
    waiting_for_capacity: list[_Pod] = []

    roomy: list[_Pod] = []  # busy pods whose agent still has room to prefetch
    prefetch = plan.prefetch

    def take(n: int) -> list[int]:
        """Up to n visible messages: released ones first, then the oldest."""
        nonlocal taken
        ids = [retry.popleft() for _ in range(min(n, len(retry)))] if retry else []
        k_m = min(n - len(ids), i_adm - taken)
        if k_m > 0:
            ids.extend(range(taken, taken + k_m))
            taken += k_m
        return ids

    def fill(pod: _Pod) -> None:
        """The receiver buffers the next batch while the runtime works."""
        nonlocal in_flight
        room = max_batch - len(pod.buf)
        if room > 0:
            got = take(room)
            pod.buf.extend(got)
            in_flight += len(got)
        want = len(pod.buf) < max_batch
        if want and not pod.roomy:
            roomy.append(pod)
        elif not want and pod.roomy:
            roomy.remove(pod)
        pod.roomy = want

    def unroom(pod: _Pod) -> None:
        if pod.roomy:
            roomy.remove(pod)
            pod.roomy = False

    def start_batch(pod: _Pod, t: float) -> None:
        nonlocal in_flight, busy_s
        ids = pod.buf
        pod.buf = []
        if len(ids) < max_batch:
            more = take(max_batch - len(ids))
            in_flight += len(more)
            ids = ids + more if ids else more
        if not ids:
            unroom(pod)
            idle.append(pod)
            return
        for i in ids:
            start[i] = t
        dur = svc[len(ids)]
        pod.busy, pod.batch, pod.started = True, ids, t
        pod.finish = t + dur
        busy_s += dur
        push(pod.finish, FINISH, pod)
        if prefetch:
            fill(pod)

    def give_back(ids: list[int]) -> None:
        nonlocal in_flight
        retry.extendleft(reversed(ids))
        in_flight -= len(ids)
        counters["released"] += len(ids)

    def release(pod: _Pod) -> None:
        """The agent gives the call's messages back (visible again at once) and the call is abandoned."""
        nonlocal busy_s
        give_back(pod.batch)
        busy_s -= pod.finish - pod.started
        pod.busy, pod.batch = False, []

    def release_buffer(pod: _Pod) -> None:
        """Warm shutdown: the agent stops receiving and releases what it buffered."""
        unroom(pod)
        if pod.buf:
            give_back(pod.buf)
            pod.buf = []

    def dispatch(t: float) -> None:
        """Visible messages go to idle pods, then to agents with room to prefetch."""
        while (retry or i_adm > taken) and idle:
            start_batch(idle.pop(), t)
        while (retry or i_adm > taken) and roomy:
            fill(roomy[-1])

    def launch_node(t: float, warm: bool = False) -> _Node | None:
        capacity = "spot" if "spot" in plan.capacity_types else "on-demand"
        if capacity == "spot" and plan.spot_unavailable_probability and rng.random() < plan.spot_unavailable_probability:
            counters["spot_unavailable"] += 1
            if "on-demand" not in plan.capacity_types:
                return None
            capacity = "on-demand"
        serial[1] += 1
        ready = t if warm else t + plan.node_ready_s
        node = _Node(serial[1], capacity, plan.price_per_hour[capacity], t, ready, ready + (0.0 if warm else plan.image_pull_s))
        nodes.append(node)
        live.append(node)
        counters["nodes_launched"] += 1
        if capacity == "spot" and plan.interruptions_per_hour > 0:
            push(t + rng.expovariate(plan.interruptions_per_hour / 3600.0), NOTICE, node)
        return node

    def bind(pod: _Pod, t: float, warm: bool = False) -> None:
        node = None
        for nd in live:
            if not nd.interrupted and len(nd.pods) < plan.gpus_per_node:
                node = nd
                break
        if node is None:
            node = launch_node(t, warm)
            if node is None:
                if not waiting_for_capacity:
                    push(t + plan.spot_retry_s, RETRY_LAUNCH)
                waiting_for_capacity.append(pod)
                return
        node.pods.append(pod)
        pod.node, pod.state = node, "starting"
        counters["pods_started"] += 1
        push(t if warm else max(t, node.image_at) + plan.model_load_s, POD_READY, pod)

    def remove(pod: _Pod, t: float) -> None:
        if pod.state == "gone":
            return
        pod.state = "gone"
        if pod in waiting_for_capacity:
            waiting_for_capacity.remove(pod)
        node = pod.node
        if node is not None and pod in node.pods:
            node.pods.remove(pod)
            if not node.pods and node.ended is None and not node.interrupted:
                node.empty_since = t
                push(t + plan.consolidate_after_s, CONSOLIDATE, node)

    def terminate(pod: _Pod, t: float, grace: float) -> None:
        """SIGTERM: not ready -> gone now; idle -> gone now; busy -> finish within grace or release."""
        if pod in active:
            active.remove(pod)
        release_buffer(pod)
        if pod.state == "ready" and pod.busy:
            pod.state = "terminating"
            if pod.finish > t + grace:
                push(t + grace, GRACE_END, pod)
            return
        if pod in idle:
            idle.remove(pod)
        remove(pod, t)

    def new_pod(t: float) -> None:
        serial[0] += 1
        pod = _Pod(serial[0], t)
        active.append(pod)
        bind(pod, t)

    def reconcile(t: float, desired: int) -> None:
        n = len(active)
        if desired > n:
            for _ in range(desired - n):
                new_pod(t)
        elif desired < n:
            rank = {"pending": 0, "starting": 1, "ready": 2}
            victims = sorted(active, key=lambda p: (rank.get(p.state, 3), -p.created))[: n - desired]
            for pod in victims:
                terminate(pod, t, plan.grace_s)
            dispatch(t)  # what their agents had buffered goes to the others

    keda = plan.autoscaler == "keda"
    scaler: Any
    if keda:
        scaler = KedaScaler(s, hpa_sync_seconds=plan.hpa_sync_s)
        push(0.0, KEDA)
        push(plan.hpa_sync_s, HPA)
    else:
        sm = plan.sagemaker
        scaler = SageMakerAsyncScaler(sm.get("target", 5.0), s.min_replicas, s.max_replicas,
                                      sm.get("scale_in_cooldown_s", 300.0), sm.get("scale_out_cooldown_s", 300.0))
        push(0.0, SAGEMAKER)
    for _ in range(s.min_replicas):  # the warm pool is up and ready when the workload starts
        serial[0] += 1
        warm_pod = _Pod(serial[0], 0.0)
        active.append(warm_pod)
        bind(warm_pod, 0.0, warm=True)
    polls = 0
    next_sample = 0.0
    end = duration_s
    horizon = duration_s + plan.max_drain_s

    while True:
        t_ev = heap[0][0] if heap else INF
        if i_adm < n_tasks and arr[i_adm] <= t_ev:
            if idle:
                t = arr[i_adm]
                i_adm += 1
                start_batch(idle.pop(), t)
            elif roomy:
                i_adm += 1
                fill(roomy[-1])
            else:
                i_adm = bisect_right(arr, t_ev, i_adm)
            continue
        if not heap:
            break
        t, _, kind, obj = heapq.heappop(heap)
        if kind == FINISH:
            pod = obj
            if not pod.busy or pod.finish != t or pod.state == "gone":
                continue  # released or killed before it finished
            ids = pod.batch
            for i in ids:
                finish[i] = t
            in_flight -= len(ids)
            done += len(ids)
            pod.busy, pod.batch = False, []
            if pod.state == "terminating":
                remove(pod, t)
            else:
                start_batch(pod, t)
        elif kind in (KEDA, HPA, SAGEMAKER):
            visible = (i_adm - taken) + len(retry)
            if kind == KEDA:
                polls += 1
                scaler.keda_poll(t, queue_metric(visible, in_flight, s))
            elif kind == HPA:
                if scaler.replicas > 0:
                    scaler.hpa_sync(t, queue_metric(visible, in_flight, s))
            else:
                scaler.evaluate(t, visible + in_flight)
            reconcile(t, scaler.replicas)
            if kind != HPA and t >= next_sample:
                next_sample = t + plan.timeline_every_s
                ready = sum(1 for p in active if p.state == "ready")
                timeline.append((t, visible, in_flight, scaler.replicas, ready, len(active), len(live)))
            finished_all = done == n_tasks and i_adm == n_tasks
            settled = scaler.replicas == s.min_replicas and not any(
                not nd.pods or any(p.state == "terminating" for p in nd.pods) for nd in live)
            if (t >= duration_s and finished_all and settled) or t >= horizon:
                end = max(t, duration_s)
                break
            period = (s.polling_interval_seconds if kind == KEDA else plan.hpa_sync_s if kind == HPA
                      else plan.sagemaker.get("period_s", 60.0))
            push(t + period, kind)
        elif kind == POD_READY:
            pod = obj
            if pod.state != "starting":
                continue
            pod.state = "ready"
            start_batch(pod, t)
        elif kind == CONSOLIDATE:
            node = obj
            # consolidateAfter counts from the last pod leaving (Karpenter resets it when pods come and go)
            if (node.ended is None and not node.pods and not node.interrupted
                    and t - node.empty_since >= plan.consolidate_after_s - 1e-9):
                node.ended = t
                live.remove(node)
        elif kind == NOTICE:
            node = obj
            if node.ended is not None:
                continue
            node.interrupted = True
            counters["interruptions"] += 1
            grace = min(plan.grace_s, plan.spot_notice_s)
            for pod in list(node.pods):
                if pod.state in ("pending", "starting", "ready"):
                    replace = pod in active
                    terminate(pod, t, grace)
                    if replace:
                        new_pod(t)  # the ReplicaSet replaces the evicted pod at once
            dispatch(t)
            push(t + plan.spot_notice_s, KILL, node)
        elif kind == KILL:
            node = obj
            for pod in list(node.pods):
                release_buffer(pod)
                if pod.busy:
                    release(pod)
                remove(pod, t)
            node.pods.clear()
            node.ended = t
            live.remove(node)
            dispatch(t)
        elif kind == GRACE_END:
            pod = obj
            if pod.state == "terminating" and pod.busy:
                release(pod)
                remove(pod, t)
                dispatch(t)
        elif kind == RETRY_LAUNCH:
            pods, waiting_for_capacity[:] = list(waiting_for_capacity), []
            for pod in pods:
                if pod.state == "pending":
                    bind(pod, t)

    node_seconds = {"spot": 0.0, "on-demand": 0.0}
    gpu_usd = {"spot": 0.0, "on-demand": 0.0}
    for nd in nodes:
        stop = nd.ended if nd.ended is not None else end
        secs = max(0.0, stop - nd.launched)
        node_seconds[nd.capacity] += secs
        gpu_usd[nd.capacity] += secs / 3600.0 * nd.price
    return {
        "arrivals": arrivals, "start": start, "finish": finish, "done": done, "end_s": end, "duration_s": duration_s,
        "busy_gpu_s": busy_s, "node_seconds": node_seconds, "gpu_usd": gpu_usd, "gpus_per_node": plan.gpus_per_node,
        "timeline": np.array(timeline, dtype=float).reshape(-1, 7), "polls": polls, "counters": counters,
        "nodes": [(nd.id, nd.capacity, nd.launched, nd.ended if nd.ended is not None else end) for nd in nodes],
    }
