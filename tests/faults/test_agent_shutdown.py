"""SIGTERM while a task runs: warm (finish it, release what is buffered, exit 0) and cold (a second SIGTERM
interrupts the runtime and releases the message at once for another agent)."""

import signal
import time

import httpx
import pytest

from sdlab import envvars

pytestmark = pytest.mark.faults


def _visible(fs, runtime):
    attrs = fs.sqs.get_queue_attributes(QueueUrl=fs.resources.queues[runtime].url,
                                        AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])


def test_agent_sigterm_warm_finishes_task_releases_buffered_and_exits_0(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    # the first task is long enough for the second to be received and buffered behind it, even on a busy box
    agent = fs.start_agent("rt-a", **{envvars.AGENT_RUNTIME_TIMEOUT_SECONDS: "20"})
    first = fs.submit("rt-a", "fault:slow4:warm-first")
    fs.wait_for(lambda: fs.runtime_calls("rt-a")["fault:slow4:warm-first"] == 1, 20, "first task on the runtime")
    second = fs.submit("rt-a", "warm-second")
    fs.wait_status(second, {"running"})  # taken and marked running by the receiver: buffered behind the first
    assert fs.runtime_calls("rt-a")["warm-second"] == 0

    fs.signal(agent, signal.SIGTERM)
    assert fs.wait_exit(agent, 15) == 0
    record = fs.record(first)
    assert record["status"] == "completed" and record["attempts"] == 1, record  # finished, not abandoned
    assert _visible(fs, "rt-a") == 1  # the buffered message was released at once, not left to its timeout

    fs.start_agent("rt-a")
    record = fs.wait_status(second, {"completed", "failed"}, timeout=20)
    assert record["status"] == "completed" and record["attempts"] == 2, record
    assert fs.runtime_calls("rt-a")["warm-second"] == 1  # run once, by the second agent
    fs.collect_notifications()
    assert fs.notification_counts()[first] == 1 and fs.notification_counts()[second] == 1
    assert fs.queue_depth("rt-a") == 0


def test_agent_double_sigterm_cold_interrupts_runtime_releases_message_and_exits_promptly(faultstack):
    fs = faultstack
    runtime = fs.start_runtime("rt-a")
    patient = {envvars.AGENT_RUNTIME_TIMEOUT_SECONDS: "20"}  # only the signal may cut the 5 s generation short
    agent = fs.start_agent("rt-a", **patient)
    prompt = "fault:slow5:cold"
    task = fs.submit("rt-a", prompt)
    fs.wait_for(lambda: fs.runtime_calls("rt-a")[prompt] == 1, 20, "the task on the runtime")

    fs.signal(agent, signal.SIGTERM)
    # two signals sent back to back can reach Python's handler as one: send the second once the first is seen
    fs.wait_for(lambda: fs.ready(agent) == 503, 5, "the agent stopping after the first SIGTERM")
    t0 = time.monotonic()
    fs.signal(agent, signal.SIGTERM)
    assert fs.wait_exit(agent, 10) == 0
    assert time.monotonic() - t0 < 3.0  # well before the 5 s generation (or the 10 s grace period) would end
    assert _visible(fs, "rt-a") == 1  # released at once
    # the generation was interrupted: the runtime (one generation at a time) answers a new call straight away
    t1 = time.monotonic()
    httpx.post(f"{runtime[0].url}/sdapi/v1/txt2img", json={"prompt": "probe"}, timeout=10).raise_for_status()
    assert time.monotonic() - t1 < 1.5  # else it waits for the rest of the 5 s generation
    assert fs.record(task)["status"] == "running"

    fs.start_agent("rt-a", **patient)
    record = fs.wait_status(task, {"completed", "failed"}, timeout=20)
    assert record["status"] == "completed" and record["attempts"] == 2, record
    fs.collect_notifications()
    assert [n.status.value for n in fs.notes if n.id == task] == ["completed"]
    assert fs.queue_depth("rt-a") == 0
