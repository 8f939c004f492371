"""kill -9 of the agent or the runtime in the middle of a task: the task still ends once, with one notification."""

import signal

import pytest

pytestmark = pytest.mark.faults


def test_kill9_agent_mid_task_then_another_agent_finishes_it(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a", seconds_per_image=0.05)
    agent = fs.start_agent("rt-a")
    task = fs.submit("rt-a", "fault:slow3:kill-agent")
    fs.wait_status(task, {"running"})
    fs.signal(agent, signal.SIGKILL)
    fs.start_agent("rt-a")  # the message reappears after its visibility timeout (4 s) and is run again
    record = fs.wait_status(task, {"completed", "failed"}, timeout=60)
    assert record["status"] == "completed" and record["attempts"] == 2
    fs.collect_notifications()
    assert fs.notification_counts()[task] == 1
    assert fs.queue_depth("rt-a") == 0
