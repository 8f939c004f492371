"""Cancel (DELETE /v1/tasks/{id}) and expiry (ttl_seconds) racing the agent: a task ends exactly once, with one
notification, and a cancelled or expired task leaves no images."""

import time

import pytest

from sdlab import envvars
from sdlab.client import ApiError

pytestmark = pytest.mark.faults


def _statuses(fs, task_id):
    """Statuses notified for the task; called once its message is gone, so every notification is already out."""
    fs.collect_notifications(0)
    return [n.status.value for n in fs.notes if n.id == task_id]


def test_cancel_queued_task_never_runs(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    task = fs.submit("rt-a", "cancel-queued")  # no agent yet: it stays queued
    assert fs.client.cancel(task)["status"] == "cancelled"
    fs.start_agent("rt-a")
    fs.wait_for(lambda: fs.queue_depth("rt-a") == 0, 20, "the cancelled task's message dropped")
    assert fs.runtime_calls("rt-a")["cancel-queued"] == 0
    assert fs.record(task)["status"] == "cancelled"
    assert _statuses(fs, task) == ["cancelled"]
    assert fs.objects(task) == []


def test_cancel_running_task_interrupts_runtime_and_leaves_nothing(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    fs.start_agent("rt-a", **{envvars.AGENT_RUNTIME_TIMEOUT_SECONDS: "20"})  # only the cancel may cut it short
    prompt = "fault:slow8:cancel-running"
    task = fs.submit("rt-a", prompt)
    fs.wait_for(lambda: fs.runtime_calls("rt-a")[prompt] == 1, 20, "the task on the runtime")
    t0 = time.monotonic()
    assert fs.client.cancel(task)["status"] == "cancelled"
    after = fs.submit("rt-a", "after-cancel")
    assert fs.wait_status(after, {"completed", "failed"}, timeout=10)["status"] == "completed"
    # the runtime does one generation at a time: the next task finishing this soon means the 8 s one was interrupted
    assert time.monotonic() - t0 < 4.0
    fs.wait_for(lambda: fs.queue_depth("rt-a") == 0, 10, "the cancelled task's message dropped")
    assert fs.record(task)["status"] == "cancelled"
    assert _statuses(fs, task) == ["cancelled"]
    assert fs.objects(task) == []


def test_expiry_ttl_passed_before_any_agent_ends_expired_never_runs(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    task = fs.submit("rt-a", "ttl-expired", ttl_seconds=1)
    created = fs.record(task)["created_at"]
    time.sleep(max(0.0, created + 1.5 - time.time()))  # past the deadline with no agent running
    fs.start_agent("rt-a")
    record = fs.wait_status(task, {"expired", "completed", "failed"}, timeout=20)
    assert record["status"] == "expired" and "ttl_seconds=1" in record["error"], record
    fs.wait_for(lambda: fs.queue_depth("rt-a") == 0, 10, "the expired task's message dropped")
    assert fs.runtime_calls("rt-a")["ttl-expired"] == 0
    assert _statuses(fs, task) == ["expired"]
    assert fs.objects(task) == []


# seconds between the generation starting (1 s long) and the DELETE: well before it ends, around its end
# (a real race with storing outputs and the status write), and long after it ended
CANCEL_DELAYS = (0.0, 0.9, 1.0, 1.1, 2.5)


def test_cancel_racing_completion_ends_once_with_one_notification(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    fs.start_agent("rt-a")
    outcomes = {}
    for n, delay in enumerate(CANCEL_DELAYS):
        prompt = f"fault:slow1:race-{n}"
        task = fs.submit("rt-a", prompt)
        fs.wait_for(lambda p=prompt: fs.runtime_calls("rt-a")[p] == 1, 20, "the task on the runtime")
        time.sleep(delay)
        try:
            fs.client.cancel(task)
            won = "cancelled"
        except ApiError as err:
            assert err.status == 409 and err.field == "id", (err.status, err.message)
            won = "completed"
        fs.wait_for(lambda: fs.queue_depth("rt-a") == 0, 20, "the message deleted")
        record = fs.record(task)
        assert record["status"] == won, (delay, record)
        assert _statuses(fs, task) == [won], delay
        expected = [f"outputs/{task}/0.png", f"outputs/{task}/result.json"] if won == "completed" else []
        assert fs.objects(task) == expected, delay
        with pytest.raises(ApiError) as again:  # DELETE on a finished task
            fs.client.cancel(task)
        assert again.value.status == 409 and "already ended" in again.value.message
        outcomes[delay] = won
    print("cancel vs completion:", outcomes)
    assert outcomes[0.0] == "cancelled" and outcomes[2.5] == "completed"
