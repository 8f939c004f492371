"""What the agent refuses on its own, since a message can reach its queue without the API (published to the topic
directly): a prefix outside the output prefix, a sampler or scheduler the runtime does not offer."""

from __future__ import annotations

import time

import pytest

from sdlab.contracts import TaskMessage

pytestmark = pytest.mark.faults


def test_security_agent_refuses_a_prefix_outside_the_output_prefix(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    fs.start_agent("rt-a")
    for n, prefix in enumerate(("models/fixed", "workflows", "outputs-other")):
        fs.publish("rt-a", TaskMessage(id=f"escape-{n}", runtime="rt-a", task_type="text-to-image", prefix=prefix,
                                       payload={"prompt": f"escape-{n}", "steps": 4, "width": 64, "height": 64},
                                       submitted_at=time.time()).model_dump_json())
    dead = fs.wait_for(lambda: (m := fs.dlq("rt-a")) and len(m) == 3 and m, 20, "the three messages in the DLQ")
    for message in dead:
        assert "outside the output prefix" in message["MessageAttributes"]["reason"]["StringValue"], message
    assert sum(fs.runtime_calls("rt-a")[f"escape-{n}"] for n in range(3)) == 0
    assert fs.all_objects("") == []  # nothing written anywhere in the bucket


def test_security_sampler_the_runtime_does_not_offer_fails_the_task_with_its_list(faultstack):
    """The fixed runtime, like SD WebUI, would generate with any sampler name; the agent asks it which it has."""
    fs = faultstack
    fs.start_runtime("rt-a")
    fs.start_agent("rt-a")
    bad = fs.submit("rt-a", "bad-sampler", payload={"sampler_name": "Nope"})
    bad_scheduler = fs.submit("rt-a", "bad-scheduler", payload={"sampler_name": "Euler", "scheduler": "Sideways"})
    legacy = fs.submit("rt-a", "legacy-sampler", payload={"sampler_name": "DPM++ 2M Karras"})
    alias = fs.submit("rt-a", "alias-sampler", payload={"sampler_name": "k_euler_a", "scheduler": "Karras"})
    record = fs.wait_status(bad, {"completed", "failed"}, timeout=20)
    assert record["status"] == "failed", record
    assert record["error"] == ("payload.sampler_name: 'Nope' is not offered by the runtime; use one of "
                               "['DPM++ 2M', 'Euler a', 'Euler', 'DDIM']")
    record = fs.wait_status(bad_scheduler, {"completed", "failed"}, timeout=20)
    assert record["status"] == "failed" and "'Sideways' is not offered" in record["error"], record
    assert "Karras" in record["error"]
    for task in (legacy, alias):
        assert fs.wait_status(task, {"completed", "failed"}, timeout=20)["status"] == "completed"
    calls = fs.runtime_calls("rt-a")
    assert calls["bad-sampler"] == calls["bad-scheduler"] == 0  # refused before the runtime ran anything
    assert calls["GET /sdapi/v1/samplers"] == 1 and calls["GET /sdapi/v1/schedulers"] == 1  # asked once per agent
