"""Supervision of the agent's threads: retries with backoff, and a liveness verdict for `/healthz`.

Every long-lived thread (receiver, heartbeat, sweeper, finishers) reports each round through `Supervisor.ok` or
`Supervisor.failed`. A failure of any kind — an AWS error, a botocore connection or read timeout, a bug — is
logged and retried after an exponential backoff with jitter; it never ends the thread. A thread that has failed
without a single success for `unhealthy_after_seconds`, or that has died, makes `/healthz` answer 503, so the
kubelet restarts the pod (its held messages return to the queue after their visibility timeout).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 15.0


def backoff_seconds(failures: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_MAX_SECONDS) -> float:
    """Exponential backoff with full jitter after `failures` consecutive failures (1, 2, ...)."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** max(0, failures - 1))


@dataclass
class _State:
    thread: threading.Thread | None = None
    failures: int = 0  # consecutive
    failing_since: float | None = None
    last_error: str = ""


class Supervisor:
    def __init__(self, unhealthy_after_seconds: float) -> None:
        self.unhealthy_after_seconds = unhealthy_after_seconds
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Run `target` on a daemon thread; an exception that escapes it marks the thread dead (unhealthy)."""

        def run() -> None:
            try:
                target()
            except BaseException:
                log.exception("thread %s died", name)
                self.failed(name, RuntimeError("thread died"))
                raise

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._states.setdefault(name, _State()).thread = thread
        thread.start()
        return thread

    def ok(self, name: str) -> None:
        with self._lock:
            state = self._states.setdefault(name, _State())
            if state.failures:
                log.info("%s recovered after %d failure(s)", name, state.failures)
            state.failures, state.failing_since, state.last_error = 0, None, ""

    def failed(self, name: str, err: BaseException) -> float:
        """Record a failure; returns how long to back off before the next try."""
        with self._lock:
            state = self._states.setdefault(name, _State())
            state.failures += 1
            state.failing_since = state.failing_since or time.monotonic()
            state.last_error = f"{type(err).__name__}: {err}"[:500]
            failures = state.failures
        delay = backoff_seconds(failures)
        log.warning("%s failed (%d in a row), retrying in %.1f s: %s", name, failures, delay, state.last_error)
        return delay

    def problems(self) -> list[str]:
        """Why the agent is unhealthy; empty when every supervised thread is alive and recovering in time."""
        now = time.monotonic()
        out = []
        with self._lock:
            for name, state in self._states.items():
                if state.thread is not None and not state.thread.is_alive() and state.last_error:
                    out.append(f"{name}: thread died ({state.last_error})")
                elif state.failing_since is not None and now - state.failing_since > self.unhealthy_after_seconds:
                    out.append(f"{name}: failing for {now - state.failing_since:.0f} s ({state.last_error})")
        return out
