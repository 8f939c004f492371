import time

import pytest

from sdlab.contracts import (
    Notification,
    SubmitRequest,
    TaskMessage,
    TaskStatus,
    check_task_id,
    image_key,
    json_schemas,
    result_key,
)


def test_keys_are_deterministic():
    assert image_key("outputs", "abc", 0) == "outputs/abc/0.png"
    assert image_key("outputs", "abc", 3) == image_key("outputs", "abc", 3)
    assert result_key("a/b", "t1") == "a/b/t1/result.json"


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "a b", "x" * 65, "-lead", "é"])
def test_task_id_rejects_path_tricks(bad):
    with pytest.raises(ValueError):
        check_task_id(bad)


def test_task_message_roundtrip_and_expiry():
    msg = TaskMessage(id="t1", runtime="rt", task_type="text-to-image", prefix="outputs",
                      payload={"prompt": "x"}, submitted_at=time.time() - 100, ttl_seconds=10)
    again = TaskMessage.model_validate_json(msg.model_dump_json())
    assert again == msg
    assert again.expired()
    assert not msg.model_copy(update={"ttl_seconds": None}).expired()


def test_terminal_statuses():
    assert {s for s in TaskStatus if s.terminal} == {TaskStatus.COMPLETED, TaskStatus.FAILED,
                                                    TaskStatus.CANCELLED, TaskStatus.EXPIRED}


def test_submit_request_forbids_unknown_fields():
    with pytest.raises(ValueError, match="extra"):
        SubmitRequest.model_validate({"runtime": "a", "payload": {}, "colour": 1})


def test_notification_shape():
    note = Notification(id="t", runtime="rt", status=TaskStatus.COMPLETED, images=["s3://b/k"])
    data = note.model_dump(mode="json")
    assert set(data) >= {"id", "runtime", "status", "images", "error", "timings", "context"}
    assert data["status"] == "completed"


def test_json_schemas_export():
    schemas = json_schemas()
    assert schemas["SubmitRequest"]["properties"]["runtime"]["type"] == "string"
    assert "payload" in schemas["SubmitRequest"]["required"]
