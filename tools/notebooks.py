"""The source of the numbered notebooks. `python tools/notebooks.py` rewrites notebooks/*.ipynb (no outputs)."""

from __future__ import annotations

from pathlib import Path

from make_notebook import write_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

RUN_LOCAL_STACK = [
    ("md", """
# 01 · Run the asynchronous pipeline

**Goal:** bring up the whole stack, send prompts to two runtimes through the authenticated HTTP API, and see the
images come back through the real asynchronous path: API → validation → SNS → per-runtime SQS queue → queue agent →
SD runtime → S3 → SNS notification → you.

**Prerequisites:** `make env` (or `conda env create -f environment.yml`). Nothing else: locally, AWS is a moto
server on 127.0.0.1 and the model is one the project builds itself.

**Cost on AWS:** none locally. With `target="aws"` (see `docs/aws.md`): API Gateway, Lambda, SNS, SQS and
DynamoDB at request prices (well under $0.01 for this notebook), plus the GPU nodes while tasks run.
"""),
    ("params", """
target = "local"  # "local" (moto server on loopback) or "aws"
config = "../sdlab.yaml"  # the stack's configuration
home = None  # state folder of the local stack (None: ./.sdlab next to this notebook)
prompts_per_runtime = 2  # tasks sent to each runtime
size = 256  # image width and height in pixels (a multiple of 8)
steps = 20  # sampling steps
timeout_seconds = 300  # how long to wait for all notifications
"""),
    ("code", """
import sdlab
"""),
    ("md", "## 1. Bring the stack up\nOne call starts the moto server, provisions queues/topics/table/bucket, builds and uploads the models, and starts the gateway, runtimes and agents."),
    ("code", """
assert target == "local", "this notebook drives the local stack; the AWS walk-through is docs/aws.md"
settings = sdlab.load_config(config)
stack = sdlab.up(settings, home)
{name: (rt["type"], rt["model"]) for name, rt in stack["runtimes"].items()}
"""),
    ("md", "## 2. Submit tasks\nEach call is one `POST /v1/tasks`: validated, recorded as `queued`, published, answered with 202 at once."),
    ("code", """
client = sdlab.Client.from_stack(home)
prompts = ["a lighthouse on a cliff at dusk", "a red fox in fresh snow", "a bowl of ramen"]
tasks = [
    client.submit(runtime, prompts[i % len(prompts)], payload={"steps": steps, "width": size, "height": size, "seed": i})
    for runtime in stack["runtimes"] for i in range(prompts_per_runtime)
]
[(t.runtime, t.id, t.status_url) for t in tasks]
"""),
    ("md", "## 3. Wait for the notifications and look at the images\nNotifications arrive on a queue subscribed to the `results` topic."),
    ("code", """
notes = client.wait([t.id for t in tasks], timeout=timeout_seconds)
images = [img for t in tasks for img in client.images(notes[t.id])]
titles = [f"{t.runtime}: {notes[t.id].timings.run_s:.2f} s" for t in tasks]
sdlab.display.show_images(images, titles)
"""),
    ("code", """
sdlab.display.timings_table([
    {"task": t.id[:8], "runtime": t.runtime, "status": notes[t.id].status.value,
     "queued s": notes[t.id].timings.queued_s, "running s": notes[t.id].timings.run_s}
    for t in tasks
])
"""),
    ("md", "## 4. What this notebook should have achieved"),
    ("code", """
assert all(n.status.value == "completed" for n in notes.values())
assert all(img.size == (size, size) for img in images)
assert {notes[t.id].runtime for t in tasks} == set(stack["runtimes"]), "every runtime served its own tasks"
assert client.status(tasks[0].id)["status"] == "completed"
"""),
    ("md", "## 5. Clean up"),
    ("code", """
client.close()
stopped = sdlab.down(home)
assert sdlab.status(home) == []
stopped
"""),
]

if __name__ == "__main__":
    NOTEBOOKS.mkdir(exist_ok=True)
    write_notebook(NOTEBOOKS / "01_run_local_stack.ipynb", RUN_LOCAL_STACK)
