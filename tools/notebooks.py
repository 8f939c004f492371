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

DEPLOY_TO_AWS = [
    ("md", """
# 02 · Deploy to AWS, step by step

**Goal:** walk the AWS deployment one step at a time: the plan and its cost, the messaging layer, least-privilege
IAM roles, the API function (a reproducible zip of the same handler the local gateway runs), API Gateway with an
API key and usage plan, Karpenter's interruption queue, ECR, the EKS cluster files and commands, then teardown,
checking that nothing is left.

**Prerequisites:** `make env`. With `target="local"` (the default) nothing else: the notebook starts its own moto
server and deploys to it; the cluster steps write the eksctl/Helm files and manifests and print the commands.
With `target="aws"`: credentials for an account (see `docs/aws.md` for permissions and GPU quotas); eksctl, helm
and kubectl for the cluster steps (`with_cluster = True`).

**Cost on AWS:** the serverless layer costs nothing while idle (requests only: well under $0.01 here). A cluster
costs about $0.31/h while it exists (control plane, two small system nodes, one NAT gateway) plus GPU nodes only
while tasks run; the plan below prints the breakdown. The last cells delete everything.
"""),
    ("params", """
target = "local"  # "local" (a moto server started here) or "aws" (your account: real resources)
config = "../sdlab.yaml"  # the stack's configuration
home = None  # state folder (None: ./.sdlab); cluster files go to <home>/aws/<stack>/
with_cluster = None  # None: print the cluster commands (local) / skip the cluster (aws); True: create it on AWS
teardown_at_end = True  # delete everything the notebook created
"""),
    ("code", """
import sdlab
"""),
    ("md", "## 1. Where the AWS calls go\\nEvery boto3 client is built from one `AwsTarget`: the moto server here, or your account."),
    ("code", """
from pathlib import Path

from sdlab.aws import AwsTarget
from sdlab.deploy import cluster as cluster_layer, plan, rehearsal, stack as aws_stack, teardown

settings = sdlab.load_config(config)
state = Path(home or ".sdlab")
moto = rehearsal.start(settings.stack.region, log_dir=state) if target == "local" else None
aws = moto.target if moto else AwsTarget.from_env(settings.stack.region)
aws
"""),
    ("md", "## 2. The plan: every resource, and what it costs while idle\\nA dry run: no AWS call. GPU node pools at `min_replicas: 0` cost nothing until a task arrives."),
    ("code", """
items = plan.build_plan(settings)
print(plan.format_plan(items))
"""),
    ("md", "## 3. Deploy the serverless layer\\nQueues, topics, table and bucket (`sdlab.provision`), IAM roles, the Lambda package and function, API Gateway, the interruption queue and ECR. Every step converges: running it again changes nothing."),
    ("code", """
deployment = aws_stack.deploy_serverless(settings, aws, cache_dir=state / "cache")
{"api": deployment.api.url, "function": deployment.function_arn, "roles": sorted(deployment.roles),
 "interruption queue": deployment.interruption_queue_url}
"""),
    ("md", "## 4. Least privilege, as deployed\\nThe first runtime's queue agent may touch only its own queues, its output prefix and the models, and publish results."),
    ("code", """
from sdlab.aws import client

agent_role = next(name for name in deployment.roles if name.endswith("-agent"))
policy = client("iam", aws).get_role_policy(RoleName=agent_role, PolicyName="sdlab")["PolicyDocument"]
[(st["Sid"], st["Action"], st["Resource"]) for st in policy["Statement"]]
"""),
    ("md", "## 5. The cluster layer\\nThe eksctl ClusterConfig, Helm values and manifests with this account's ARNs; eksctl and helm run when installed against AWS, and are printed otherwise."),
    ("code", """
run_cluster = with_cluster if with_cluster is not None else target == "local"
commands = cluster_layer.deploy_cluster(settings, aws, deployment.account, state) if run_cluster else []
folder = cluster_layer.cluster_dir(state, settings.stack.name)
sorted(str(p.relative_to(folder)) for p in folder.rglob("*.yaml"))[:8] if run_cluster else "cluster skipped"
"""),
    ("md", "## 6. What exists now"),
    ("code", """
left = teardown.remaining(settings, aws)
print(len(left), "resources of the stack exist")
left[:10]
"""),
    ("md", "## 7. What this notebook should have achieved"),
    ("code", """
assert deployment.api.url.startswith("https://") and deployment.api.key_value
assert f"Lambda function {settings.stack.name}-api" in left
assert {f"IAM role {name}" for name in deployment.roles} <= set(left)
assert not run_cluster or (folder / "infra/eksctl/cluster.yaml").exists()
assert not run_cluster or any(c.startswith("eksctl create cluster") for c in commands)
"""),
    ("md", "## 8. Tear down\\nThe cluster first (its manifests, so Karpenter removes its GPU nodes; then the charts and the cluster), then everything tagged `sdlab:stack=<name>`, in dependency order."),
    ("code", """
if teardown_at_end and run_cluster:
    cluster_layer.teardown_cluster(settings, aws, deployment.account, state)
removed = teardown.teardown_stack(settings, aws) if teardown_at_end else []
print(len(removed), "resources deleted")
assert not teardown_at_end or teardown.remaining(settings, aws) == []
if moto:
    moto.stop()
"""),
]

if __name__ == "__main__":
    NOTEBOOKS.mkdir(exist_ok=True)
    write_notebook(NOTEBOOKS / "01_run_local_stack.ipynb", RUN_LOCAL_STACK)
    write_notebook(NOTEBOOKS / "02_deploy_to_aws.ipynb", DEPLOY_TO_AWS)
