"""The agent's work loop. Three kinds of thread keep the runtime busy and the promises kept:

- the receiver (agent/receiver.py) takes the next messages while the runtime works, marks them `running`;
- this loop hands buffered jobs to the runtime (several at once for a batching runtime) — nothing else sits
  on the runtime's critical path;
- finishers (a small pool) store images, end the task, notify and delete the message off the critical path;
and `Inflight`'s heartbeat keeps every held message invisible and notices cancellations.

Failures: retryable runtime failures release the message with exponential backoff and jitter; on the last
allowed receive the task ends `failed` and the message moves to the DLQ with the reason; a rejection by the
runtime ends the task `failed` at once. After the runtime becomes unreachable the agent waits for it (with a
deadline) before taking more work. A failure after the runtime call (storing the images, ending the task,
notifying) is retried `finish_attempts` times with backoff and never runs the GPU again: if the images cannot be
stored the task ends `failed` with the reason; if its ending cannot be recorded the message goes to the DLQ marked
`unended` (the sweeper, agent/sweeper.py, ends the task); if only the notification fails, the message is released
so its redelivery sends it (agent/receiver.py). Every thread is supervised (agent/supervise.py).
Signals: first SIGTERM/SIGINT = warm shutdown (stop receiving, finish the current work within the grace period,
release what is buffered); second = cold (interrupt the runtime, release everything held, exit).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent import metrics
from agent.effects import Clients, Effects
from agent.jobs import Inflight, Job
from agent.progress import Progress
from agent.receiver import Receiver
from agent.runtimes import RuntimeAdapter, RuntimeFailure, RuntimeResult
from agent.settings import AgentSettings
from agent.supervise import Supervisor, backoff_seconds
from agent.sweeper import Sweeper
from sdlab.contracts import TaskStatus
from sdlab.wiring import AGENT_MAX_BATCH_CAP

log = logging.getLogger(__name__)
RETRY_BASE_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0
MAX_UNFINISHED = 16  # results waiting for their finisher; bounds memory if S3 is slow
CALLS_IN_FLIGHT = 2  # runtime calls at once for a batching runtime
FILL_WAIT_SECONDS = 0.005  # while a call runs, the next batch is topped up in steps this long
FINISH_BACKOFF_SECONDS = 0.5  # first pause between tries of a step after the runtime call, doubling


class FinishFailed(Exception):
    """A step after the runtime call failed on every try."""

__all__ = ["Clients", "Worker"]


class ColdShutdown(Exception):
    """The current runtime call is abandoned (second signal, or the grace period ran out)."""


class Worker:
    def __init__(self, settings: AgentSettings, clients: Clients, runtime: RuntimeAdapter) -> None:
        self.settings = settings
        self.clients = clients
        self.runtime = runtime
        self.effects = Effects(settings, clients)
        self.supervisor = Supervisor(settings.unhealthy_after_seconds)
        self.inflight = Inflight(clients.sqs, settings.visibility_timeout_seconds, self._is_cancelled, self._on_cancel,
                                 self.supervisor)
        self.max_batch = 1
        self.receiver = Receiver(settings, self.effects, self.inflight, capacity=1, supervisor=self.supervisor)
        self.sweeper = Sweeper(settings, self.effects, self.supervisor)
        self.progress = Progress(clients.store, self.supervisor, s3=clients.s3, bucket=settings.bucket)
        if hasattr(runtime, "on_progress"):
            runtime.on_progress = self.progress.update  # the adapter reports; the writer thread bounds the rate
        if hasattr(runtime, "wants_preview"):
            runtime.wants_preview = self.progress.wants_preview
        # A batching runtime gets its next batch while it still encodes the last one's PNGs: two calls in flight keep
        # its GPU busy between calls (docs/benchmarks.md, end to end). Other runtimes take one call at a time.
        self.calls = CALLS_IN_FLIGHT if hasattr(runtime, "run_batch") else 1
        self._call_slots = threading.Semaphore(self.calls)
        self._caller = ThreadPoolExecutor(max_workers=self.calls, thread_name_prefix="call")
        self._calls_in_flight = 0
        self._busy_since = 0.0
        self._last_end_mark = 0.0  # monotonic end of the latest runtime call (GPU time shares, `_call_ended`)
        self.finisher = ThreadPoolExecutor(max_workers=4, thread_name_prefix="finish")
        self._unfinished = threading.Semaphore(MAX_UNFINISHED)
        self.stopping = threading.Event()
        self.cold = threading.Event()
        self.ready = threading.Event()
        self.exit_code = 0
        self._grace_deadline: float | None = None
        self._running: list[Job] = []
        self._lock = threading.Lock()
        self.tasks_done = 0
        self.busy_seconds = 0.0
        self._first_call: float | None = None
        self._last_call_end: float | None = None
        self.idle_gaps: deque[float] = deque(maxlen=100_000)  # runtime idle between consecutive calls, seconds

    # -- signals -------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stopping.is_set():
            log.warning("second signal %s: cold shutdown", signum)
            self.cold.set()
        else:
            log.info("signal %s: warm shutdown within %.0f s", signum, self.settings.grace_seconds)
            self._grace_deadline = time.monotonic() + self.settings.grace_seconds
            self.stopping.set()

    # -- readiness ------------------------------------------------------------------------------------
    def _batch_size(self) -> int:
        """Messages per runtime call: the configured max batch, else what a batching runtime says its card holds."""
        if not hasattr(self.runtime, "run_batch"):
            return 1
        wanted = self.settings.max_batch or int(getattr(self.runtime, "capacity", lambda: 1)())
        return max(1, min(wanted, AGENT_MAX_BATCH_CAP))

    def healthy(self) -> list[str]:
        """Why the agent should be restarted (`/healthz` answers 503 with these); empty when healthy."""
        return self.supervisor.problems()

    def wait_for_runtime(self) -> bool:
        """Poll the runtime until ready, the deadline passes, or a signal arrives."""
        deadline = time.monotonic() + self.settings.runtime_ready_timeout_seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            if self.runtime.ready():
                self.ready.set()
                log.info("runtime %s is ready", self.settings.runtime_name)
                return True
            self.stopping.wait(0.5)
        log.error("runtime at %s not ready within %.0f s", self.settings.runtime_url,
                  self.settings.runtime_ready_timeout_seconds)
        return False

    def call_window_seconds(self) -> float:
        """From the start of the first runtime call to the end of the last."""
        if self._first_call is None or self._last_call_end is None:
            return 0.0
        return self._last_call_end - self._first_call

    def busy_fraction(self) -> float:
        """Share of wall time, from the first runtime call to the end of the last, the runtime spent on tasks."""
        if self._first_call is None or self._last_call_end is None or self._last_call_end <= self._first_call:
            return 0.0
        return self.busy_seconds / (self._last_call_end - self._first_call)

    # -- the loop -------------------------------------------------------------------------------------
    def run(self, *, max_tasks: int | None = None, burst: bool = False) -> int:
        """Work until stopped (or `max_tasks` ended, or every queue is empty with `burst`). Returns the exit code."""
        if not self.wait_for_runtime():
            return 1
        self.max_batch = self._batch_size()
        # one batch buffered while one runs: the runtime never waits for SQS or DynamoDB
        self.receiver = Receiver(self.settings, self.effects, self.inflight, capacity=self.max_batch,
                                 supervisor=self.supervisor)
        log.info("up to %d task(s) per runtime call", self.max_batch)
        self.inflight.start()
        self.receiver.start()
        self.sweeper.start()
        self.progress.start()
        try:
            while not self.stopping.is_set():
                if not self._call_slots.acquire(timeout=0.2):
                    continue
                jobs = self._next_jobs()
                if jobs and self.calls == 1:
                    self._run_call(jobs)
                elif jobs:
                    self._caller.submit(self._run_call, jobs)
                else:
                    self._call_slots.release()
                    if burst and self.receiver.idle.is_set() and len(self.inflight) == 0:
                        break
                if max_tasks is not None and self.tasks_done >= max_tasks:
                    break
        finally:
            self._shutdown()
        return self.exit_code

    def _next_jobs(self) -> list[Job]:
        first = self.receiver.take(timeout=0.2)
        if first is None:
            return []
        jobs = [first]
        while len(jobs) < self.max_batch and not self.stopping.is_set():
            more = self.receiver.take_nowait()
            if more is None:
                with self._lock:
                    runtime_busy = self._calls_in_flight > 0
                if not runtime_busy:
                    break  # the runtime is idle: a short queue is served now, never held back for company
                more = self.receiver.take(timeout=FILL_WAIT_SECONDS)  # it is busy anyway: top the batch up
            if more is not None:
                jobs.append(more)
        for job in [j for j in jobs if j.cancelled]:
            self._drop_cancelled(job)
        return [j for j in jobs if not j.cancelled]

    def _shutdown(self) -> None:
        self.ready.clear()
        self._caller.shutdown(wait=True)  # calls in flight finish (within the grace period) or are abandoned
        self.receiver.stop()
        for job in self.receiver.drain():  # buffered, never started on the runtime: another agent takes them now
            self.effects.release(job, 0)
            self.inflight.remove(job)
        self.finisher.shutdown(wait=True)
        self.progress.stop()
        self.sweeper.stop()
        self.inflight.stop()
        log.info("agent stopped after %d task(s); runtime busy %.1f%%", self.tasks_done, 100 * self.busy_fraction())

    # -- one runtime call -----------------------------------------------------------------------------
    def _run_call(self, jobs: list[Job]) -> None:
        try:
            self._run(jobs)
        except Exception:  # a bug must not leave the slot taken: the jobs' messages return after their timeout
            log.exception("runtime call failed unexpectedly")
        finally:
            self._call_slots.release()

    def _call_started(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        with self._lock:
            if self._calls_in_flight == 0:
                self._busy_since = now
                if self._last_call_end is not None:
                    self.idle_gaps.append(now - self._last_call_end)
                    metrics.IDLE_GAP_SECONDS.observe(now - self._last_call_end)
            self._calls_in_flight += 1
            self._first_call = self._first_call or now
            self._running.extend(jobs)

    def _call_ended(self, jobs: list[Job], t0: float) -> None:
        """Busy time is the union of the calls' spans; each task's GPU time is its share of the part of its call
        that no earlier call overlapped (with two calls in flight, a call's GPU work starts when the one before ends)."""
        now = time.monotonic()
        with self._lock:
            self._calls_in_flight -= 1
            if self._calls_in_flight == 0:
                self.busy_seconds += now - self._busy_since
                self._last_call_end = now
            exclusive = max(0.0, now - max(t0, self._last_end_mark))
            self._last_end_mark = now
            self._running = [j for j in self._running if j not in jobs]
        for job in jobs:
            job.gpu_s = exclusive / len(jobs)
        metrics.RUNTIME_BUSY.observe(now - t0)

    def _run(self, jobs: list[Job]) -> None:
        started = time.time()
        t0 = time.monotonic()
        self._call_started(jobs)
        for job in jobs:
            job.batch = len(jobs)
        self.progress.begin(j.task for j in jobs)
        try:
            outcomes = self._call_runtime(jobs)
        except ColdShutdown:
            for job in jobs:
                self.effects.release(job, 0)
                self.inflight.remove(job)
            log.warning("runtime call abandoned; %d task(s) released for another agent", len(jobs))
            self.stopping.set()
            return
        finally:
            self.progress.forget(j.task.id for j in jobs)
            self._call_ended(jobs, t0)
        run_s = time.time() - started
        for job, outcome in zip(jobs, outcomes, strict=True):
            self._unfinished.acquire()
            self.finisher.submit(self._finish, job, outcome, started, run_s)
        if any(isinstance(o, RuntimeFailure) and o.retryable for o in outcomes) and not self.runtime.ready():
            log.warning("runtime not answering; waiting for it before taking more work")
            if not self.wait_for_runtime():
                self.exit_code = 1
                self.stopping.set()

    def _call_runtime(self, jobs: list[Job]) -> list[RuntimeResult | RuntimeFailure]:
        """Run on the runtime in a thread, so a cold shutdown or the end of the grace period can abandon it."""
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                if len(jobs) == 1:
                    box["out"] = [self.runtime.run(jobs[0].task)]
                else:
                    box["out"] = self.runtime.run_batch([j.task for j in jobs])  # type: ignore[attr-defined]
            except RuntimeFailure as err:
                box["out"] = [err] * len(jobs)
            except Exception as err:  # an adapter bug must not kill the agent: retry elsewhere, keep the trace
                log.exception("adapter error")
                box["out"] = [RuntimeFailure(f"agent adapter error: {err!r}", retryable=True)] * len(jobs)

        thread = threading.Thread(target=call, name="runtime-call", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.05)
            past_grace = self._grace_deadline is not None and time.monotonic() > self._grace_deadline
            if self.cold.is_set() or past_grace:
                self.runtime.interrupt()
                raise ColdShutdown()
        return box["out"]

    # -- after the call (finisher threads) -----------------------------------------------------------
    def _finish(self, job: Job, outcome: RuntimeResult | RuntimeFailure, started: float, run_s: float) -> None:
        try:
            if job.cancelled:
                self._drop_cancelled(job)
            elif isinstance(outcome, RuntimeFailure):
                self._failed_attempt(job, outcome, run_s)
            else:
                self._completed(job, outcome, started, run_s)
        except Exception:  # a bug: the message stays held until its visibility lapses, then it is delivered again
            log.exception("finishing the task failed; it will be delivered again", extra=job.log_extra)
        finally:
            self.inflight.remove(job)
            self._unfinished.release()
            with self._lock:
                self.tasks_done += 1

    def _step(self, what: str, job: Job, step: Any) -> Any:
        """Run one step after the runtime call, with `finish_attempts` tries and backoff; FinishFailed after the last."""
        for attempt in range(1, self.settings.finish_attempts + 1):
            try:
                out = step()
            except Exception as err:
                if attempt == self.settings.finish_attempts:
                    self.supervisor.ok("finisher")  # the step is given up, not the thread
                    raise FinishFailed(f"{what} failed after {attempt} tries: {type(err).__name__}: {err}") from err
                delay = backoff_seconds(attempt, base=FINISH_BACKOFF_SECONDS)
                self.supervisor.failed("finisher", err)
                log.warning("%s failed (try %d), again in %.1f s: %s", what, attempt, delay, err, extra=job.log_extra)
                time.sleep(delay)
            else:
                self.supervisor.ok("finisher")
                return out
        raise AssertionError("unreachable")

    def _completed(self, job: Job, result: RuntimeResult, started: float, run_s: float) -> None:
        try:
            keys = self._step("storing the outputs", job, lambda: self.effects.store_outputs(job.task, result, run_s))
        except FinishFailed as err:
            self._end_failed(job, f"the images were made but could not be stored: {err}")
            return
        won = self._end(job, TaskStatus.COMPLETED, images=keys, run_s=run_s, started_at=started, attempt=job.attempt,
                        batch=job.batch, gpu_s=job.gpu_s)
        if not won and self._is_cancelled(job.task.id):  # cancelled while it ran: the result must not stand
            self.effects.discard_outputs(job.task, len(keys))
        log.info("task completed", extra={**job.log_extra, "seconds": round(run_s, 3)})

    def _end_failed(self, job: Job, reason: str) -> None:
        self._end(job, TaskStatus.FAILED, error=reason, attempt=job.attempt)
        log.error("task failed: %s", reason, extra=job.log_extra)

    def _end(self, job: Job, status: TaskStatus, *, dead_letter: str | None = None, **fields: Any) -> bool:
        """Record the ending, notify, then let the message go (deleted, or into the DLQ with `dead_letter` as its
        reason). Never runs the task again: whatever cannot be done now is left to a redelivery or the sweeper.
        Returns whether this agent wrote the ending (False: another writer, e.g. a cancel, ended it first)."""
        try:
            written = self._step("recording the ending", job, lambda: self.effects.record_end(job.task, status, **fields))
        except FinishFailed as err:
            # the task stays `running`; the sweeper ends it from the DLQ, with this reason
            reason = f"{dead_letter or fields.get('error') or 'completed'}; then {err}"
            self._step("moving the message to the DLQ", job, lambda: self.effects.dead_letter(job, reason, unended=True))
            return False
        if written is not None:
            try:
                self._step("sending the notification", job, lambda: self.effects.announce(job.task, status, written))
            except FinishFailed as err:
                # ended but not notified: its redelivery (or the sweeper) sends the notification, without a new run
                log.error("%s; the message is released so its redelivery sends it", err, extra=job.log_extra)
                self._step("releasing the message", job, lambda: self.effects.release(job, int(RETRY_BASE_SECONDS)))
                return True
        if dead_letter:
            self._step("moving the message to the DLQ", job, lambda: self.effects.dead_letter(job, dead_letter))
        else:
            self._step("deleting the message", job, lambda: self.effects.delete(job))
        return written is not None

    def _failed_attempt(self, job: Job, err: RuntimeFailure, run_s: float | None = None) -> None:
        if err.retryable and job.attempt < self.settings.max_receive_count:
            delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (job.attempt - 1)) * random.uniform(0.5, 1.0)
            self._step("releasing the message", job, lambda: self.effects.release(job, int(delay)))
            metrics.RETRIES.inc()
            log.warning("retryable failure, next try in %.0f s: %s", delay, err, extra=job.log_extra)
            return
        reason = f"gave up after {job.attempt} attempt(s): {err}" if err.retryable else str(err)
        # the terminal status first: a crash between the two leaves a finished task, never a lost one
        self._end(job, TaskStatus.FAILED, error=reason, attempt=job.attempt, dead_letter=reason if err.retryable else None,
                  run_s=run_s, batch=job.batch, gpu_s=job.gpu_s)
        log.error("task failed: %s", reason, extra=job.log_extra)

    def _drop_cancelled(self, job: Job) -> None:
        """The API already ended the task `cancelled` and sent its notification: only the message is left."""
        self.effects.delete(job)
        self.inflight.remove(job)
        log.info("cancelled task dropped", extra=job.log_extra)

    # -- cancellation ---------------------------------------------------------------------------------
    def _is_cancelled(self, task_id: str) -> bool:
        record = self.clients.store.get(task_id)
        return bool(record and record.get("status") == TaskStatus.CANCELLED.value)

    def _on_cancel(self, job: Job) -> None:
        with self._lock:
            running = job in self._running
        if running:
            self.runtime.interrupt()
