"""A running task shows its progress (at most one record write a second), sends `running` when asked, and every
ending carries its cost receipt; `GET /v1/usage` adds the receipts up per API key and per runtime."""

import hashlib
import io
import time

import httpx
import pytest
from PIL import Image

from sdlab import envvars

pytestmark = pytest.mark.faults
G6_XLARGE_SPOT_USD_PER_HOUR = 0.43  # sdlab/sim/data/facts.yaml, us-east-1


def test_progress_running_event_receipt_and_usage(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a")
    # as on EKS, where the agent learns its node from IMDSv2; here the node is named explicitly
    fs.start_agent("rt-a", **{envvars.AGENT_INSTANCE_TYPE: "g6.xlarge", envvars.AGENT_CAPACITY_TYPE: "spot"})
    submitted_at = time.time()
    slow = fs.submit("rt-a", "fault:slow3.5:progress", notify_events=["running", "completed"], preview=True,
                     payload={"steps": 20})
    quiet = fs.submit("rt-a", "no running event")

    seen = []  # (status, progress) as a client polling GET /v1/tasks/{id} sees them (a notebook's progress bar)
    for record in fs.client.follow(slow, every=0.1, timeout=60):
        seen.append((record["status"], record.get("progress")))
    assert record["status"] == "completed", record

    running = [p for status, p in seen if status == "running" and p]
    assert running, f"no progress seen while running: {seen[:5]}"
    assert any(0 < p["fraction"] < 1 for p in running)
    assert all(p["steps"] == 20 and 0 <= p["step"] <= 20 for p in running)
    writes = sorted({p["updated_at"] for p in running})
    assert len(writes) >= 2
    assert all(b - a >= 0.95 for a, b in zip(writes, writes[1:], strict=False)), f"more than 1 write/s: {writes}"
    # the preview it asked for: the runtime's current image, shrunk, beside its outputs; GET presigns it
    assert record["progress"]["preview"] == f"s3://{fs.resources.bucket}/outputs/{slow}/preview.png"
    png = httpx.get(record["preview_url"], timeout=10).content
    assert Image.open(io.BytesIO(png)).format == "PNG" and max(Image.open(io.BytesIO(png)).size) <= 256

    receipt = record["receipt"]
    assert receipt["instance_type"] == "g6.xlarge" and receipt["capacity_type"] == "spot"
    assert receipt["runtime"] == "rt-a" and receipt["batch"] == 1
    assert receipt["gpu_s"] == pytest.approx(record["run_s"], abs=0.002) and receipt["gpu_s"] >= 3.5
    assert receipt["usd_per_hour"] == G6_XLARGE_SPOT_USD_PER_HOUR
    assert receipt["cost_usd"] == pytest.approx(receipt["gpu_s"] * G6_XLARGE_SPOT_USD_PER_HOUR / 3600, rel=1e-4)
    assert receipt["price_source"].startswith("spot us-east-1 price (typical Spot price")
    assert record["api_key_id"] == "key-" + hashlib.sha256(fs.api_key.encode()).hexdigest()[:16]
    assert fs.api_key not in str(record)

    assert "preview_url" not in fs.wait_status(quiet, {"completed"})
    notes = fs.collect_notifications()
    kinds = [(n.id, n.status.value) for n in notes]
    assert kinds.count((slow, "running")) == 1 and kinds.index((slow, "running")) < kinds.index((slow, "completed"))
    assert (quiet, "running") not in kinds  # the default filter: the terminal notification only
    done = next(n for n in notes if n.id == slow and n.status.value == "completed")
    assert done.receipt is not None and done.receipt.model_dump() == receipt
    assert done.result is None and done.image_url is None  # the guidance's fields only when asked for

    usage = fs.client.usage(since=submitted_at - 1)
    quiet_cost = fs.record(quiet)["receipt"]["cost_usd"]
    assert usage["total"]["tasks"] == 2 and usage["by_runtime"]["rt-a"]["tasks"] == 2
    assert usage["by_api_key"] == {record["api_key_id"]: usage["total"]}
    assert usage["total"]["cost_usd"] == pytest.approx(receipt["cost_usd"] + quiet_cost, abs=1e-8)
    assert usage["total"]["by_status"] == {"completed": 2}
    assert fs.client.usage(since=time.time() + 10, until=time.time() + 20)["total"]["tasks"] == 0


def test_cancelled_task_has_a_zero_receipt_and_usage_refuses_bad_ranges(faultstack):
    fs = faultstack
    task = fs.submit("rt-b", "never runs")
    record = fs.client.cancel(task)
    assert record["receipt"]["gpu_s"] == 0 and record["receipt"]["cost_usd"] == 0
    for params, field in (({"since": "yesterday"}, "since"), ({"since": "20", "until": "10"}, "since"),
                          ({"by": "key"}, "by")):
        reply = fs.client._http.get(f"{fs.api_url}/v1/usage", params=params)
        assert reply.status_code == 400 and reply.json()["error"]["field"] == field, reply.text
    assert fs.client.usage(since="2000-01-01T00:00:00Z")["total"]["by_status"] == {"cancelled": 1}
