"""Notebooks share the running stack: a session uses it, follows tasks with a bar each, and leaves it running."""

from __future__ import annotations

import pytest

from sdlab.local.stack import read_stack
from sdlab.workshop import anatomy, form, progress, session

pytestmark = pytest.mark.integration


def test_open_stack_uses_the_running_stack_and_close_leaves_it_up(stack):
    s = session.open_stack("no-config-needed.yaml", stack["home"], progress=False)
    assert s.started is False and s.stack["api_url"] == stack["api_url"]
    assert s.close() == [] and read_stack(stack["home"]) is not None
    assert s.client.status  # a new client after close, while the stack runs (a form pressed after "Run all")
    s.close()


def test_generate_follows_each_task_to_completed_and_shows_its_images(stack):
    s = session.open_stack("unused.yaml", stack["home"], progress=False)
    shown = []
    try:
        result = form.generate(s, form.GenerateRequest("two small red circles", "rt-a", size=64, steps=4, batch=2),
                               on_done=lambda note, images: shown.append((note.id, len(images))))
    finally:
        s.close()
    assert sorted(shown) == sorted((i, 1) for i in result.task_ids)
    assert all(t[-1] == "completed" and set(t) <= {"queued", "running", "completed"} for t in result.transitions.values())
    assert [img.size for img in result.images] == [(64, 64), (64, 64)]


def test_tap_sees_the_published_message_with_its_runtime_attribute(stack, client):
    tap = anatomy.Tap.open(stack)
    try:
        task = client.submit("rt-b", "a blue square", payload={"width": 64, "height": 64, "steps": 2})
        message = tap.take(task.id)
        notes, bars = progress.wait(client, [task.id], enabled=False)
    finally:
        tap.close()
    assert message["attributes"]["runtime"] == "rt-b" and message["body"]["id"] == task.id
    assert bars.transitions[task.id][-1] == notes[task.id].status.value == "completed"
    assert {o["key"].rsplit("/", 1)[-1] for o in anatomy.objects(stack, task.id)} == {"0.png", "result.json"}
