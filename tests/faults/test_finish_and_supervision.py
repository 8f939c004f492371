"""After the runtime call, and in every agent thread, AWS fails for real (botocore connection resets and read
timeouts from tests/faults/awsproxy.py; a bucket that does not exist; an agent killed on the last allowed receive).
Each accepted task still ends exactly once, with its reason and its notification, and the GPU never runs a task
again for a result it already has. A thread that cannot recover fails /healthz."""

from __future__ import annotations

import signal

import httpx
import pytest

from sdlab import envvars

from .awsproxy import RESET, STALL, FaultProxy

pytestmark = pytest.mark.faults

# botocore gives up fast through the proxy: one retry, 3 s reads (the proxy stalls 5 s)
FAST_AWS = {envvars.AWS_READ_TIMEOUT_SECONDS: "3", envvars.AWS_MAX_ATTEMPTS: "2"}  # reads > the 1 s long poll


def _notes(fs, task_id):
    fs.collect_notifications()
    return [n for n in fs.notes if n.id == task_id]


def _healthz(agent) -> int:
    try:
        return httpx.get(f"{agent[0].url}/healthz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


@pytest.fixture()
def proxy(faultstack):
    with FaultProxy(faultstack.target.endpoint_url) as p:
        yield p


def _proxied_agent(fs, proxy, **env):
    return fs.start_agent("rt-a", **{envvars.AWS_ENDPOINT_URL: proxy.url, **FAST_AWS,
                                     envvars.AGENT_FINISH_ATTEMPTS: "3", **env})


# -- point 2: every accepted task ends ---------------------------------------------------------------------------
def test_output_write_denied_ends_failed_with_reason_and_runs_once(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    fs.start_agent("rt-a", **{envvars.BUCKET: "no-such-bucket-anywhere", envvars.AGENT_FINISH_ATTEMPTS: "2"})
    task = fs.submit("rt-a", "write-denied")
    record = fs.wait_status(task, {"completed", "failed"}, timeout=30)
    assert record["status"] == "failed", record
    assert "could not be stored" in record["error"] and "NoSuchBucket" in record["error"], record["error"]
    notes = _notes(fs, task)
    assert [n.status.value for n in notes] == ["failed"] and notes[0].error == record["error"]
    assert fs.runtime_calls("rt-a")["write-denied"] == 1  # the GPU ran it once
    fs.wait_for(lambda: fs.queue_depth("rt-a") == 0, 10, "the message deleted")


def test_output_write_failing_briefly_is_retried_and_completes_once(faultstack, proxy):
    fs = faultstack
    fs.start_runtime("rt-a")
    _proxied_agent(fs, proxy, **{envvars.AGENT_FINISH_ATTEMPTS: "6"})
    proxy.fail("s3:PutObject", RESET, seconds=3)
    task = fs.submit("rt-a", "s3-blip")
    record = fs.wait_status(task, {"completed", "failed"}, timeout=40)
    assert record["status"] == "completed", record
    assert proxy.broken["s3:PutObject"] >= 1  # the blip happened, and was ridden out
    assert fs.runtime_calls("rt-a")["s3-blip"] == 1
    assert [n.status.value for n in _notes(fs, task)] == ["completed"]
    assert fs.objects(task) == [f"outputs/{task}/0.png", f"outputs/{task}/result.json"]


def test_notification_publish_failing_is_sent_by_redelivery_without_a_new_run(faultstack, proxy):
    fs = faultstack
    fs.start_runtime("rt-a")
    _proxied_agent(fs, proxy)
    proxy.fail("sns:Publish", RESET, seconds=6)
    task = fs.submit("rt-a", "sns-down")
    record = fs.wait_status(task, {"completed", "failed"}, timeout=30)
    assert record["status"] == "completed", record
    # the status is written; the publish fails on every try, the message is released, and its redelivery (after the
    # outage) sends the notification without calling the runtime again
    notes = fs.wait_for(lambda: _notes(fs, task), 40, "the notification, once SNS is back")
    assert [n.status.value for n in notes] == ["completed"]
    assert proxy.broken["sns:Publish"] >= 3
    assert fs.runtime_calls("rt-a")["sns-down"] == 1
    fs.wait_for(lambda: fs.queue_depth("rt-a") == 0, 20, "the message deleted")


def test_agent_killed_on_last_allowed_receive_task_ends_failed_through_the_sweeper(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    fast_sweep = {envvars.AGENT_SWEEP_INTERVAL_SECONDS: "1"}
    task = fs.submit("rt-a", "fault:slow30:doomed")  # runs far past every kill below
    for attempt in (1, 2, 3):  # max_receive_count is 3: each agent dies holding the message
        agent = fs.start_agent("rt-a", **fast_sweep)
        fs.wait_for(lambda a=attempt: (fs.record(task).get("attempts") or 0) >= a, 30, f"receive {attempt}")
        fs.signal(agent, signal.SIGKILL)
        fs.wait_exit(agent)
    assert fs.record(task)["status"] == "running"
    # the next receive moves the message to the DLQ (redrive policy); that agent's sweeper ends the task
    fs.start_agent("rt-a", **fast_sweep)
    record = fs.wait_status(task, {"failed", "completed"}, timeout=40)
    assert record["status"] == "failed" and "redrive" in record["error"], record
    notes = _notes(fs, task)
    assert [n.status.value for n in notes] == ["failed"] and notes[0].error == record["error"]
    # it waits in the DLQ for an operator (visible again after each sweep, which holds it for a moment)
    fs.wait_for(lambda: any(task in m["Body"] for m in fs.dlq("rt-a")), 10, "the message in the DLQ")


# -- point 3: supervised threads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("action,mode", [("sqs:ReceiveMessage", RESET), ("sqs:ReceiveMessage", STALL)])
def test_receiver_survives_connection_and_read_errors(faultstack, proxy, action, mode):
    fs = faultstack
    fs.start_runtime("rt-a")
    agent = _proxied_agent(fs, proxy)
    proxy.fail(action, mode, seconds=4)
    fs.wait_for(lambda: proxy.broken[action] >= 1, 15, "the receiver hit the fault")
    assert _healthz(agent) == 200  # failing briefly is not a reason to restart
    task = fs.submit("rt-a", f"after-{mode}")
    record = fs.wait_status(task, {"completed", "failed"}, timeout=40)
    assert record["status"] == "completed", record
    assert agent[1].poll() is None and _healthz(agent) == 200


def test_heartbeat_survives_read_errors_and_keeps_the_message(faultstack, proxy):
    fs = faultstack
    fs.start_runtime("rt-a")
    agent = _proxied_agent(fs, proxy, **{envvars.AGENT_RUNTIME_TIMEOUT_SECONDS: "30"})
    task = fs.submit("rt-a", "fault:slow9:long")  # 9 s > the 4 s visibility timeout: the heartbeat must extend it
    fs.wait_status(task, {"running"}, timeout=20)
    proxy.fail("sqs:ChangeMessageVisibility", STALL, seconds=1.5)  # one beat's worth; the next beats get through
    proxy.fail("dynamodb:GetItem", RESET, seconds=1.5)  # the cancellation check, same thread
    record = fs.wait_status(task, {"completed", "failed"}, timeout=40)
    assert record["status"] == "completed", record
    assert proxy.broken["sqs:ChangeMessageVisibility"] + proxy.broken["dynamodb:GetItem"] >= 1
    assert fs.runtime_calls("rt-a")["fault:slow9:long"] == 1  # never visible to be run twice
    assert agent[1].poll() is None and _healthz(agent) == 200


def test_a_thread_that_cannot_recover_fails_healthz(faultstack, proxy):
    fs = faultstack
    fs.start_runtime("rt-a")
    agent = _proxied_agent(fs, proxy, **{envvars.AGENT_UNHEALTHY_AFTER_SECONDS: "3",
                                         envvars.AGENT_SWEEP_INTERVAL_SECONDS: "2"})
    assert _healthz(agent) == 200
    proxy.fail("sqs:ReceiveMessage", RESET)
    fs.wait_for(lambda: _healthz(agent) == 503, 30, "/healthz failing")
    body = httpx.get(f"{agent[0].url}/healthz", timeout=5).text
    assert "receiver" in body and "ConnectionClosedError" in body, body
    proxy.heal()
    # each thread's next try comes within its backoff (at most 15 s) and succeeds
    fs.wait_for(lambda: _healthz(agent) == 200, 45, "/healthz healthy again once AWS answers")
