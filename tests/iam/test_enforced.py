"""IAM proven by enforcement: the API function (gateway + handler), queue agents beside runtimes and the callback
dispatcher run as processes against a moto server that enforces IAM, each with the keys of an IAM user whose only
policy is the one `sdlab.deploy.iam.role_specs` renders for that principal. The happy paths that touch every
statement pass; with one statement removed, the path that needs it fails.

One moto server for the module (`tests/iam/moto_enforcing.py`: moto's server, plus resource-level checks for SNS and
DynamoDB, which moto itself checks by action only). The diffusers runtimes are the session stack's (they only answer
HTTP; nothing of theirs talks to AWS); the cancel race runs on a fixed-time runtime of its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sdlab import envvars
from sdlab.aws import AwsTarget, client
from sdlab.client import ApiError, Client
from sdlab.config import parse_config
from sdlab.deploy.iam import Arns, role_specs
from sdlab.deploy.names import DeployNames
from sdlab.local import motoserver
from sdlab.local.processes import Proc, free_port, http_ok, spawn, stop, wait_until
from sdlab.provision import provision
from sdlab.wiring import Endpoints, agent_environment, api_environment, callback_environment
from sdlab.workflows import upload_workflows

pytestmark = pytest.mark.integration
ACCOUNT = "123456789012"  # moto's account
INPUTS = "iamtest-inputs"  # an allow-listed input bucket, written as an s3:// URI to prove the config normalises it
QUEUE = {"visibility_timeout_seconds": 30, "max_receive_count": 2, "receive_wait_seconds": 1}
CONFIG = {
    "stack": {"name": "iamtest", "region": "us-east-1", "input_buckets": [f"s3://{INPUTS}"]},
    "runtimes": [
        {"name": "rt-a", "type": "sdwebui", "model": {"name": "shapes", "source": "bundled"}, "queue": QUEUE},
        {"name": "rt-c", "type": "comfyui", "model": {"name": "shapes", "source": "bundled"}, "queue": QUEUE},
        {"name": "rt-f", "type": "sdwebui", "model": {"name": "fixed"}, "queue": QUEUE},  # the cancel race
    ],
}
PRINCIPALS = ("lambda", "callbacks", "agent:rt-a", "agent:rt-c", "agent:rt-f")


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 40)).save(out, format="PNG")
    return out.getvalue()


class IamStack:
    """Users, keys, processes; `policy(principal, without=sid)` swaps a user's policy while everything runs."""

    def __init__(self, home: Path, moto_url: str, runtime_urls: dict[str, str]) -> None:
        self.home = home
        self.settings = parse_config(CONFIG, "tests/iam")
        self.target = AwsTarget("us-east-1", moto_url)
        self.procs: list[Proc] = []
        names = DeployNames.of(self.settings)
        self.specs = {s.principal: s for s in role_specs(self.settings, names, Arns(ACCOUNT, "us-east-1"))}
        # 1. users, while moto still accepts anyone: an admin for set-up and observation, one per principal
        iam = client("iam", self.target)
        self.keys: dict[str, dict[str, str]] = {}
        for principal in ("admin", *PRINCIPALS):
            user = "iamtest-" + principal.replace(":", "-")
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            self.keys[principal] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        iam.put_user_policy(UserName="iamtest-admin", PolicyName="admin", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        for principal in PRINCIPALS:
            self.policy(principal)
        # 2. from here on every request is signed and checked
        httpx.post(f"{moto_url}/moto-api/reset-auth", content=b"0").raise_for_status()
        with self.credentials("admin"):
            self.resources = provision(self.settings, self.target)
            self.s3 = client("s3", self.target)
            self.s3.put_bucket_versioning(Bucket=self.resources.bucket, VersioningConfiguration={"Status": "Enabled"})
            self.s3.create_bucket(Bucket=INPUTS)
            self.s3.put_object(Bucket=INPUTS, Key="in/fox.png", Body=_png())
            upload_workflows(self.s3, self.resources.bucket, self.settings.stack.workflow_prefix)
            self.api_key = "iam-test-key"
            api_port = free_port()
            self.api_url = f"http://127.0.0.1:{api_port}"
            self.client = Client(self.api_url, self.api_key, self.target, self.resources.bucket,
                                 self.resources.results_topic_arn, "iamtest")
            self.client._ensure_inbox()
        # 3. the processes, each with its principal's keys, started together and then awaited
        gateway_env = {**api_environment(self.settings, self.resources, self.target), envvars.API_KEYS: self.api_key,
                       envvars.STATUS_BASE_URL: self.api_url}
        waits = [self._start("gateway", "lambda", ["-m", "sdlab.api.gateway", "--port", str(api_port)], gateway_env,
                             f"{self.api_url}/_gateway/health")]
        self._start("callbacks", "callbacks", ["-m", "sdlab.api.callbacks"],
                    {**callback_environment(self.resources, self.target, "iam-secret"), envvars.CALLBACK_ALLOW_PRIVATE: "1"})
        fixed_port = free_port()
        runtime_urls = {**runtime_urls, "rt-f": f"http://127.0.0.1:{fixed_port}"}
        waits.append(self._start("runtime-rt-f", None, ["-m", "agent.bench.fixed_runtime", "--port", str(fixed_port),
                                                        "--seconds-per-image", "0.05"], {},
                                 f"{runtime_urls['rt-f']}/sdapi/v1/options"))
        for rt in self.settings.runtimes:
            health = free_port()
            env = agent_environment(self.settings, rt, Endpoints.of_stack(self.resources, rt.name), self.target,
                                    runtime_url=runtime_urls[rt.name], health_port=health)
            waits.append(self._start(f"agent-{rt.name}", f"agent:{rt.name}", ["-m", "agent"], env,
                                     f"http://127.0.0.1:{health}/readyz"))
        for proc, popen, ready in waits:
            wait_until(http_ok(ready), popen, proc, 60)

    def _start(self, name: str, principal: str | None, args: list[str], env: dict[str, str],
               ready: str = "") -> tuple[Proc, subprocess.Popen[bytes], str]:
        keys = self.keys[principal] if principal else {}
        proc, popen = spawn(name, args, {**env, **keys}, self.home / f"{name}.log", ready or None)
        self.procs.append(proc)
        return proc, popen, ready

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    @contextlib.contextmanager
    def credentials(self, principal: str) -> Iterator[None]:
        """This process's boto3 clients built inside sign with `principal`'s keys."""
        saved = {k: os.environ.get(k) for k in self.keys[principal]}
        os.environ.update(self.keys[principal])
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def policy(self, principal: str, without: str | None = None) -> None:
        """Give `principal`'s user exactly its rendered policy, less the statement `without`."""
        doc = self.specs[principal].policy
        assert doc is not None
        statements = [s for s in doc["Statement"] if s["Sid"] != without]
        assert without is None or len(statements) == len(doc["Statement"]) - 1, f"{principal} has no statement {without}"
        # IAM itself is not under test here: the admin keys are in use once enforcement is on
        ctx = self.credentials("admin") if self.resources_ready else contextlib.nullcontext()
        with ctx:
            client("iam", self.target).put_user_policy(
                UserName="iamtest-" + principal.replace(":", "-"), PolicyName="sdlab",
                PolicyDocument=json.dumps({**doc, "Statement": statements}))

    @property
    def resources_ready(self) -> bool:
        return hasattr(self, "resources")

    def objects(self, prefix: str) -> list[str]:
        out = self.s3.list_objects_v2(Bucket=self.resources.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in out.get("Contents", []))

    def deleted(self, prefix: str) -> list[str]:
        """Keys under `prefix` that were written and then deleted (versioning keeps their delete markers)."""
        out = self.s3.list_object_versions(Bucket=self.resources.bucket, Prefix=prefix)
        return sorted(m["Key"] for m in out.get("DeleteMarkers", []))

    def wait_status(self, task_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: (r := self.client.status(task_id))["status"] in statuses and r, timeout,
                        f"task {task_id} in {statuses}")

    def close(self) -> None:
        with self.credentials("admin"):
            self.client.close()
        left = stop(self.procs)
        assert not left, f"processes left running: {left}"


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture(scope="module")
def iam(stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IamStack]:
    home = tmp_path_factory.mktemp("iam")
    server = motoserver.start(home / "moto.log", module="tests.iam.moto_enforcing")
    runtimes = {name: stack["runtimes"][name]["runtime_url"] for name in ("rt-a", "rt-c")}
    built: IamStack | None = None
    try:
        built = IamStack(home, server.url, runtimes)
        yield built
    finally:
        if built is not None:
            built.close()
        assert not server.stop()


SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 3}


def _custom_prefix_with_callback(iam: IamStack, webhook: tuple[str, list, dict]) -> str:
    url, _, _ = webhook
    task = iam.client.submit("rt-a", "iam prefix", payload=SMALL, prefix="outputs/iam-team", callback_url=url).id
    record = iam.wait_status(task, {"completed", "failed"})
    assert record["status"] == "completed", record
    assert iam.objects(f"outputs/iam-team/{task}/") == [f"outputs/iam-team/{task}/0.png", f"outputs/iam-team/{task}/result.json"]
    wait_for(lambda: iam.client.status(task).get("callback_status") == "delivered", 30, "the callback delivered")
    assert iam.client.list("rt-a", limit=5)[0]["id"] == task  # the API's index query
    return task


def test_iam_custom_prefix_task_and_its_callback(iam, webhook):
    task = _custom_prefix_with_callback(iam, webhook)
    assert any(json.loads(body)["id"] == task for _, body in webhook[1])


def test_iam_s3_input_from_an_allowed_bucket(iam):
    task = iam.client.submit("rt-a", "iam img2img", task_type="image-to-image",
                             payload={**SMALL, "init_images": [f"s3://{INPUTS}/in/fox.png"], "denoising_strength": 0.5}).id
    record = iam.wait_status(task, {"completed", "failed"})
    assert record["status"] == "completed", record


def test_iam_named_workflow(iam):
    task = iam.client.submit("rt-c", task_type="pipeline", payload={
        "workflow": "txt2img-basic", "params": {"prompt": "iam fox", "seed": 4, "steps": 2, "width": 64, "height": 64}}).id
    record = iam.wait_status(task, {"completed", "failed"})
    assert record["status"] == "completed", record


def _settled(iam: IamStack) -> int:
    log = iam.log("agent-rt-f")
    return log.count("cancelled task dropped") + log.count("task completed") + log.count("finishing the task failed")


def _cancel_after_outputs(iam: IamStack) -> str:
    """Cancel a task just as its 1 s generation ends, until one cancel lands after the agent stored the images
    (then its completion loses and the agent discards them, or tries to). Returns that task."""
    for n in range(8):
        prompt = f"fault:slow1:iam-cancel-{n}"
        task = iam.client.submit("rt-f", prompt, payload=SMALL).id
        wait_for(lambda t=task: iam.client.status(t)["status"] == "running", 20, "the task running")
        before = _settled(iam)
        time.sleep(0.95)  # the generation takes 1 s from about when the record says running
        try:
            iam.client.cancel(task)
        except ApiError as err:
            assert err.status == 409, err
            continue
        wait_for(lambda b=before: _settled(iam) > b, 20, "the agent settling the cancelled task")
        if iam.deleted(f"outputs/{task}/") or iam.objects(f"outputs/{task}/"):
            return task
    raise AssertionError("no cancel landed between the stored images and the status write in 8 tries")


def test_iam_cancel_that_wins_discards_the_images(iam):
    task = _cancel_after_outputs(iam)
    assert iam.client.status(task)["status"] == "cancelled"
    assert iam.objects(f"outputs/{task}/") == []
    assert iam.deleted(f"outputs/{task}/") == [f"outputs/{task}/0.png", f"outputs/{task}/result.json"]


# One statement removed, the path that needs it fails (and the failure names AccessDenied where it is logged).
def _submit_fails(iam: IamStack) -> None:
    with pytest.raises(ApiError) as err:
        iam.client.submit("rt-a", "iam denied", payload=SMALL)
    assert err.value.status >= 500, err.value


def _notified(iam: IamStack, task: str) -> bool:
    """Whether the task's notification arrived (moto delivers SNS → SQS before the publish returns)."""
    try:
        iam.client.wait(task, timeout=1)
        return True
    except TimeoutError:
        return False


def _agent_run_fails(runtime: str, payload_fields: dict[str, Any] | None = None, **fields: Any) -> Callable[[IamStack], None]:
    """The agent meets AccessDenied and the task does not end `completed` with its notification."""
    def check(iam: IamStack) -> None:
        before = iam.log(f"agent-{runtime}").count("AccessDenied")
        task = iam.client.submit(runtime, "iam denied", payload={**SMALL, **(payload_fields or {})}, **fields).id
        wait_for(lambda: iam.log(f"agent-{runtime}").count("AccessDenied") > before, 30, "the agent meeting the refusal")
        assert iam.client.status(task)["status"] != "completed" or not _notified(iam, task)
    return check


def _callback_fails(iam: IamStack) -> None:
    before = iam.log("callbacks").count("AccessDenied")
    # no webhook needed: the dispatcher reads the record (GetItem) before it calls anything
    task = iam.client.submit("rt-a", "iam cb denied", payload=SMALL, callback_url="https://127.0.0.1:9/hook").id
    iam.wait_status(task, {"completed"})
    wait_for(lambda: iam.log("callbacks").count("AccessDenied") > before, 30, "the dispatcher meeting the refusal")


def _cancel_fails(iam: IamStack) -> None:
    task = _cancel_after_outputs(iam)
    assert "AccessDenied" in iam.log("agent-rt-f")
    assert iam.objects(f"outputs/{task}/"), "the images of a cancelled task should have stayed (delete refused)"


NEGATIVE: dict[tuple[str, str], Callable[[IamStack], None]] = {
    ("lambda", "PublishTasksAndCancellations"): _submit_fails,
    ("lambda", "TaskRecords"): _submit_fails,
    ("agent:rt-a", "WriteOutputs"): _agent_run_fails("rt-a"),
    ("agent:rt-a", "ReadInputs"): _agent_run_fails("rt-a", {"init_images": [f"s3://{INPUTS}/in/fox.png"]},
                                                   task_type="image-to-image"),
    ("agent:rt-a", "MoveTaskRecords"): _agent_run_fails("rt-a"),
    ("agent:rt-a", "PublishResults"): _agent_run_fails("rt-a"),
    ("callbacks", "NoteDelivery"): _callback_fails,
}


@pytest.mark.parametrize(("principal", "sid"), list(NEGATIVE), ids=[f"{p}-without-{s}" for p, s in NEGATIVE])
def test_iam_without_one_statement_the_path_that_needs_it_fails(iam, principal, sid):
    iam.policy(principal, without=sid)
    try:
        NEGATIVE[(principal, sid)](iam)
    finally:
        iam.policy(principal)


def test_iam_cancel_without_delete_leaves_the_images(iam):
    try:  # WriteOutputs also carries PutObject: keep that, drop only DeleteObject
        doc = iam.specs["agent:rt-f"].policy
        assert doc is not None
        statements = [dict(s, Action=[a for a in s["Action"] if a != "s3:DeleteObject"]) if s["Sid"] == "WriteOutputs" else s
                      for s in doc["Statement"]]
        with iam.credentials("admin"):
            client("iam", iam.target).put_user_policy(UserName="iamtest-agent-rt-f", PolicyName="sdlab",
                                                      PolicyDocument=json.dumps({**doc, "Statement": statements}))
        _cancel_fails(iam)
    finally:
        iam.policy("agent:rt-f")

