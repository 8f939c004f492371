"""What SQS and SNS may do to messages: deliver one twice, carry a poison body, or lose the notification's publish
after the task's status was written. Messages here are published straight to the tasks topic with the `runtime`
attribute, as the public guidance lets users do (no API, no record until an agent makes one)."""

import signal

import httpx
import pytest

from sdlab import envvars

pytestmark = pytest.mark.faults


def _statuses(fs, task_id):
    fs.collect_notifications()
    return [n.status.value for n in fs.notes if n.id == task_id]


def test_delivery_same_message_after_completion_is_not_run_again(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    agent = fs.start_agent("rt-a")
    body = fs.task_message("rt-a", "dup-sequential", "dup-sequential")
    fs.publish("rt-a", body)
    record = fs.wait_status("dup-sequential", {"completed", "failed"}, timeout=20)
    assert record["status"] == "completed" and record["attempts"] == 1, record
    fs.wait_for(lambda: fs.queue_depth("rt-a") == 0, 10, "first copy deleted")

    fs.publish("rt-a", body)
    dropped = "sdlab_agent_ended_task_messages_total"
    fs.wait_for(lambda: fs.metric(agent, dropped, outcome="dropped") == 1, 10, "the second copy received and dropped")
    assert fs.queue_depth("rt-a") == 0 and fs.metric(agent, dropped, outcome="renotified") == 0
    assert fs.runtime_calls("rt-a")["dup-sequential"] == 1  # not run again
    assert fs.record("dup-sequential")["finished_at"] == record["finished_at"]
    assert _statuses(fs, "dup-sequential") == ["completed"]
    assert fs.objects("dup-sequential") == ["outputs/dup-sequential/0.png", "outputs/dup-sequential/result.json"]


def test_delivery_same_message_concurrently_to_two_agents_ends_once(faultstack):
    fs = faultstack
    first_runtime = fs.start_runtime("rt-a")
    other_runtime = fs.start_runtime("rt-a", extra=True)  # one runtime per agent, as on EKS
    patient = {envvars.AGENT_RUNTIME_TIMEOUT_SECONDS: "60"}
    fs.start_agent("rt-a", **patient)
    # `hang` holds each copy on its runtime until the test interrupts it: both copies are surely in flight at once
    prompt = "fault:hang:dup-concurrent"
    body = fs.task_message("rt-a", "dup-concurrent", prompt)
    fs.publish("rt-a", body)
    fs.wait_for(lambda: fs.runtime_calls_at(first_runtime[0].url)[prompt] == 1, 20, "first copy on the first runtime")
    filler = fs.submit("rt-a", "filler")
    fs.wait_status(filler, {"running"})  # the first agent's buffer is full: it takes nothing more for now
    fs.start_agent("rt-a", runtime_url=other_runtime[0].url, **patient)
    fs.publish("rt-a", body)
    fs.wait_for(lambda: fs.runtime_calls_at(other_runtime[0].url)[prompt] == 1, 20, "second copy on the other runtime")

    for runtime in (first_runtime, other_runtime):  # both generations end (with images); both agents finish
        httpx.post(f"{runtime[0].url}/sdapi/v1/interrupt", timeout=5).raise_for_status()
    fs.wait_for(lambda: fs.queue_depth("rt-a") == 0, 30, "both copies and the filler done")
    record = fs.record("dup-concurrent")
    assert record["status"] == "completed" and record["attempts"] == 1, record
    assert _statuses(fs, "dup-concurrent") == ["completed"]  # two runs, one terminal status, one notification
    assert fs.objects("dup-concurrent") == ["outputs/dup-concurrent/0.png", "outputs/dup-concurrent/result.json"]
    assert record["images"] == [f"s3://{fs.resources.bucket}/outputs/dup-concurrent/0.png"]


def test_delivery_poison_messages_go_to_dlq_with_reason_and_agent_keeps_working(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    agent = fs.start_agent("rt-a")
    fs.publish("rt-a", "this is {not json")
    fs.publish("rt-a", '{"id": "../../etc", "runtime": "rt-a"}')  # JSON, but not a task message
    dead = fs.wait_for(lambda: (m := fs.dlq("rt-a")) and len(m) == 2 and m, 20, "both poison messages in the DLQ")
    assert sorted(m["Body"] for m in dead) == sorted(["this is {not json", '{"id": "../../etc", "runtime": "rt-a"}'])
    for message in dead:
        reason = message["MessageAttributes"]["reason"]["StringValue"]
        assert reason.startswith("unparseable message:"), reason
        assert message["MessageAttributes"]["runtime"]["StringValue"] == "rt-a"

    task = fs.submit("rt-a", "after-poison")
    assert fs.wait_status(task, {"completed", "failed"}, timeout=20)["status"] == "completed"
    assert agent[1].poll() is None and fs.ready(agent) == 200
    assert fs.queue_depth("rt-a") == 0


def test_delivery_notification_lost_after_status_write_is_sent_on_redelivery(faultstack):
    """The status is written, then the publish fails (SNS outage, or the agent dies in between): the message is not
    deleted, so its redelivery sends the missing notification, without running the task again."""
    fs = faultstack
    fs.start_runtime("rt-a")
    broken = fs.start_agent("rt-a", **{envvars.RESULTS_TOPIC_ARN: fs.resources.results_topic_arn + "-gone"})
    task = fs.submit("rt-a", "lost-notification")
    record = fs.wait_status(task, {"completed", "failed"}, timeout=20)
    assert record["status"] == "completed"
    fs.signal(broken, signal.SIGKILL)  # it would only fail to publish again
    assert _statuses(fs, task) == []  # the notification was lost

    agent = fs.start_agent("rt-a")  # the message comes back after its visibility timeout (4 s)
    fs.wait_for(lambda: _statuses(fs, task), 20, "the notification sent on redelivery")
    fs.wait_for(lambda: fs.queue_depth("rt-a") == 0, 10, "the message deleted")
    assert fs.metric(agent, "sdlab_agent_ended_task_messages_total", outcome="renotified") == 1
    assert _statuses(fs, task) == ["completed"]
    assert fs.notes[-1].images == record["images"]
    assert fs.runtime_calls("rt-a")["lost-notification"] == 1  # not run again
    assert fs.record(task)["finished_at"] == record["finished_at"]
