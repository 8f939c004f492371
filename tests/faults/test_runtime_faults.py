"""A runtime that crashes, answers 500, hangs, answers garbage or rejects: retryable failures are retried and end
`failed` in the DLQ with the reason after `max_receive_count` (3) receives; a rejection fails at once."""

import signal
import time

import pytest

from sdlab import envvars

pytestmark = pytest.mark.faults


def _notes(fs, task_id):
    fs.collect_notifications()
    return [n for n in fs.notes if n.id == task_id]


def _dlq_reason(fs, runtime, task_id):
    """The `reason` attribute of the task's message in the DLQ, or None when it is not there."""
    for message in fs.dlq(runtime):
        if task_id in message["Body"]:
            return message["MessageAttributes"]["reason"]["StringValue"]
    return None


def _assert_failed_after_retries(fs, task_id, prompt, why):
    record = fs.wait_status(task_id, {"completed", "failed"}, timeout=40)
    assert record["status"] == "failed" and record["attempts"] == 3, record
    assert record["error"].startswith("gave up after 3 attempt(s)") and why in record["error"], record["error"]
    assert fs.runtime_calls("rt-a")[prompt] == 3  # retried: three real calls, no more
    notes = _notes(fs, task_id)
    assert [n.status.value for n in notes] == ["failed"] and notes[0].error == record["error"]
    assert _dlq_reason(fs, "rt-a", task_id) == record["error"]
    assert fs.queue_depth("rt-a") == 0
    assert fs.objects(task_id) == []


def test_runtime_kill9_mid_task_agent_waits_for_restart_and_task_completes(faultstack):
    fs = faultstack
    runtime = fs.start_runtime("rt-a")
    agent = fs.start_agent("rt-a")
    prompt = "fault:slow2:kill-runtime"
    task = fs.submit("rt-a", prompt)
    fs.wait_for(lambda: fs.runtime_calls("rt-a")[prompt] == 1, 20, "the runtime got the task")
    fs.signal(runtime, signal.SIGKILL)
    fs.wait_exit(runtime)
    # released (retryable), received again while the runtime is down, and held until the runtime is back
    fs.wait_for(lambda: fs.record(task)["attempts"] == 2, 15, "the message received again")
    time.sleep(2)  # the outage goes on: an agent that ran attempt 2 on a dead runtime would now be on attempt 3
    record = fs.record(task)
    assert record["status"] == "running" and record["attempts"] == 2, record
    fs.start_runtime("rt-a")  # same port
    record = fs.wait_status(task, {"completed", "failed"}, timeout=30)
    assert record["status"] == "completed" and record["attempts"] == 2, record
    assert fs.runtime_calls("rt-a")[prompt] == 1  # the restarted runtime ran it once
    assert [n.status.value for n in _notes(fs, task)] == ["completed"]
    assert fs.objects(task) == [f"outputs/{task}/0.png", f"outputs/{task}/result.json"]
    assert fs.queue_depth("rt-a") == 0
    assert agent[1].poll() is None and fs.ready(agent) == 200


def test_runtime_crash_exit_fault_is_retryable_message_released_not_failed(faultstack):
    fs = faultstack
    runtime = fs.start_runtime("rt-a")
    fs.start_agent("rt-a")
    prompt = "fault:exit:crash"
    task = fs.submit("rt-a", prompt)
    assert fs.wait_exit(runtime, 20) == 17  # the runtime crashed on the call
    # not failed: released and received again for another try
    fs.wait_for(lambda: fs.record(task)["attempts"] == 2, 15, "the message received again")
    assert fs.record(task)["status"] == "running"
    fs.start_runtime("rt-a")  # crashes only once across restarts (--state-dir)
    record = fs.wait_status(task, {"completed", "failed"}, timeout=30)
    assert record["status"] == "completed" and record["attempts"] == 2, record
    assert [n.status.value for n in _notes(fs, task)] == ["completed"]
    assert fs.dlq("rt-a") == [] and fs.queue_depth("rt-a") == 0


def test_runtime_500_once_is_retried_and_completes_on_attempt_2(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    fs.start_agent("rt-a")
    prompt = "fault:500x1:once"
    task = fs.submit("rt-a", prompt)
    record = fs.wait_status(task, {"completed", "failed"}, timeout=30)
    assert record["status"] == "completed" and record["attempts"] == 2, record
    assert fs.runtime_calls("rt-a")[prompt] == 2
    assert [n.status.value for n in _notes(fs, task)] == ["completed"]
    assert fs.objects(task) == [f"outputs/{task}/0.png", f"outputs/{task}/result.json"]
    assert fs.queue_depth("rt-a") == 0


def test_runtime_500_always_fails_after_max_receive_count_into_dlq(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    fs.start_agent("rt-a")
    prompt = "fault:500:always"
    task = fs.submit("rt-a", prompt)
    _assert_failed_after_retries(fs, task, prompt, "runtime answered 500")


def test_runtime_hang_is_interrupted_retried_then_failed_into_dlq(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    agent = fs.start_agent("rt-a", **{envvars.AGENT_RUNTIME_TIMEOUT_SECONDS: "1"})
    prompt = "fault:hang:forever"
    task = fs.submit("rt-a", prompt)
    _assert_failed_after_retries(fs, task, prompt, "did not answer txt2img in time")
    # the hung generation was interrupted: the runtime (one generation at a time) serves the next task at once
    after = fs.submit("rt-a", "after-hang")
    assert fs.wait_status(after, {"completed", "failed"}, timeout=10)["status"] == "completed"
    assert agent[1].poll() is None


def test_runtime_garbage_answer_is_retried_then_failed_into_dlq(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    fs.start_agent("rt-a")
    prompt = "fault:garbage:html"
    task = fs.submit("rt-a", prompt)
    _assert_failed_after_retries(fs, task, prompt, "not JSON")


def test_runtime_reject_fails_at_once_not_retried_not_in_dlq(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    fs.start_agent("rt-a")
    prompt = "fault:reject:422"
    task = fs.submit("rt-a", prompt)
    record = fs.wait_status(task, {"completed", "failed"}, timeout=20)
    assert record["status"] == "failed" and record["attempts"] == 1, record
    assert "rejected" in record["error"] and "422" in record["error"], record["error"]
    assert fs.runtime_calls("rt-a")[prompt] == 1
    notes = _notes(fs, task)
    assert [n.status.value for n in notes] == ["failed"] and "422" in notes[0].error
    assert fs.dlq("rt-a") == []
    assert fs.queue_depth("rt-a") == 0

