"""High-priority work for a runtime is taken before normal work; listing shows the newest first."""

import pytest

pytestmark = pytest.mark.faults


def test_priority_high_task_runs_before_the_backlog(faultstack):
    fs = faultstack
    fs.start_runtime("rt-a", seconds_per_image=0.05)
    normal = [fs.submit("rt-a", f"normal {i}") for i in range(5)]
    high = fs.submit("rt-a", "urgent", priority="high")
    fs.start_agent("rt-a")
    records = {t: fs.wait_status(t, {"completed"}) for t in [*normal, high]}
    first_normal = min(records[t]["started_at"] for t in normal)
    assert records[high]["started_at"] < first_normal, "the high-priority task must start first"

    listed = fs.client.list("rt-a", limit=3)
    assert [t["id"] for t in listed] == [high, normal[4], normal[3]]  # newest first
    assert fs.client.list("rt-a", status="completed", limit=10)
    assert len(fs.client.list("rt-a", limit=100)) == 6  # paginated with limit 100 > page sizes


def test_listing_pages_through_every_task(faultstack):
    fs = faultstack
    ids = {fs.submit("rt-b", f"page {i}") for i in range(5)}
    seen, token, pages = [], None, 0
    while True:
        params = {"runtime": "rt-b", "limit": 2, **({"next_token": token} if token else {})}
        page = fs.client._call("GET", "/v1/tasks", params=params)
        seen += [t["id"] for t in page["tasks"]]
        pages += 1
        token = page["next_token"]
        if not token:
            break
    assert set(seen) == ids and len(seen) == len(ids) and pages >= 3
    assert all(t["status"] == "queued" for t in fs.client.list("rt-b", status="queued"))
