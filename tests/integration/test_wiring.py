"""One wiring: the agent and the runtime get the same settings in a local process as in the rendered Deployment.

Read from the running processes themselves (/proc/<pid>/environ and cmdline), not from the code that builds them:
only the values that say where things are (URLs, ports, bind address, the moto endpoint) may differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import AgentSettings
from sdlab.config import RuntimeSettings, Settings
from sdlab.k8s.cli import PLACEHOLDER_ACCOUNT, context_for
from sdlab.k8s.render import render_runtime
from sdlab.wiring import AGENT_LOCATION_VARIABLES, RUNTIME_LOCATION_ARGUMENTS, timing

pytestmark = pytest.mark.integration


def process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def process_args(pid: int) -> list[str]:
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    return argv[argv.index("sdlab.runtime") + 1:]  # after `python -m sdlab.runtime`


def _without_location(args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in RUNTIME_LOCATION_ARGUMENTS:
            skip = True
        else:
            out.append(arg)
    return out


def rendered(settings: Settings, runtime: RuntimeSettings) -> tuple[dict[str, str], list[str], int]:
    """The agent's env, the project runtime's args and terminationGracePeriodSeconds of the rendered Deployment.
    Locally every runtime is the project's server; in a pod only `type: diffusers` is, so the args are those of
    the same runtime rendered as `diffusers`."""
    ctx = context_for(settings, account_id=PLACEHOLDER_ACCOUNT, registry="registry.example", cluster="wiring")
    ours = settings.model_copy(update={"runtimes": tuple(
        r.model_copy(update={"type": "diffusers"}) if r.name == runtime.name else r for r in settings.runtimes)})
    spec = _deployment(settings, runtime, ctx)["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
    ours_rt = ours.runtime(runtime.name)
    args = _deployment(ours, ours_rt, ctx)["spec"]["template"]["spec"]["initContainers"][0]["args"]
    return env, args, spec["terminationGracePeriodSeconds"]


def _deployment(settings: Settings, runtime: RuntimeSettings, ctx) -> dict:
    return next(o for o in render_runtime(settings, runtime, ctx) if o["kind"] == "Deployment")


def assert_same_wiring(settings: Settings, runtime: RuntimeSettings, agent_pid: int, runtime_pid: int) -> None:
    env, args, pod_grace = rendered(settings, runtime)
    local = process_env(agent_pid)
    keys = set(env) | {k for k in local if k.startswith("SDLAB_AGENT_")}
    differ = {k: (local.get(k), env.get(k)) for k in sorted(keys - AGENT_LOCATION_VARIABLES) if local.get(k) != env.get(k)}
    assert not differ, f"agent of {runtime.name}: local vs rendered {differ}"
    assert _without_location(process_args(runtime_pid)) == _without_location(args)
    # and the budgets hold together: the agent's grace covers the longest runtime call, the pod's covers the agent's
    agent = AgentSettings.from_env(local)
    assert agent.runtime_timeout_seconds <= agent.grace_seconds < pod_grace
    assert agent.runtime_timeout_seconds == runtime.queue.visibility_timeout_seconds
    assert pod_grace == timing(runtime).pod_grace_seconds


def test_local_stack_agents_and_runtimes_are_wired_as_the_rendered_deployment(stack, test_settings):
    procs = {p["name"]: p["pid"] for p in stack["processes"]}
    for rt in test_settings.runtimes:
        assert_same_wiring(test_settings, rt, procs[f"agent-{rt.name}"], procs[f"runtime-{rt.name}"])


def test_batch_settings_reach_the_runtime_and_the_agent(test_settings):
    """A batch section in the config changes what both the pod and a local process would get."""
    rt = test_settings.runtimes[0].model_copy(update={"type": "diffusers", "batch": test_settings.runtimes[0].batch.model_copy(
        update={"max_batch": 8, "max_wait_ms": 20, "buckets": (1, 2, 4, 8)})})
    settings = test_settings.model_copy(update={"runtimes": (rt, *test_settings.runtimes[1:])})
    env, args, _ = rendered(settings, rt)
    assert env["SDLAB_AGENT_MAX_BATCH"] == "8"
    assert _without_location(args) == ["--model", "shapes", "--max-batch", "8", "--max-batch-wait-ms", "20",
                                       "--batch-buckets", "1,2,4,8"]
