"""The logic behind the notebooks' widgets and tables, without a stack: form checks, manifests diff, tuning knobs,
the documented benchmark tables, cost arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlab.config import load_config
from sdlab.errors import SdlabError
from sdlab.workshop import cost, form, latency, manifests, tuning
from sdlab.workshop.session import Session, TargetError, check_target

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def settings():
    return load_config(ROOT / "sdlab.yaml")


@pytest.fixture()
def session(tmp_path):
    runtimes = {"webui-a": {"type": "sdwebui", "model": "tiny-a"}, "comfy-c": {"type": "comfyui", "model": "tiny-a"}}
    return Session(stack={"runtimes": runtimes}, home=tmp_path, started=False)


@pytest.mark.parametrize(("change", "field"), [({"prompt": " "}, "prompt"), ({"size": 100}, "size 100"),
                                               ({"runtime": "nope"}, "'comfy-c', 'webui-a'"), ({"steps": 0}, "steps"),
                                               ({"batch": 9}, "batch")])
def test_generate_request_check_names_the_field_and_the_fix(session, change, field):
    request = form.GenerateRequest(**{"prompt": "a red circle", "runtime": "webui-a", **change})
    with pytest.raises(form.FormError, match=field):
        request.check(session)


def test_generate_request_speaks_each_runtime_type(session):
    request = form.GenerateRequest("a red circle", "comfy-c", negative_prompt="blurry", size=64, steps=4, seed=5)
    comfy = request.submit_kwargs(session.runtimes["comfy-c"], index=2)
    assert comfy["task_type"] == "pipeline" and comfy["payload"]["workflow"] == "txt2img-basic"
    assert comfy["payload"]["params"].items() >= {"seed": 7, "negative_prompt": "blurry", "width": 64}.items()
    webui = request.submit_kwargs(session.runtimes["webui-a"])
    assert webui["prompt"] == "a red circle" and webui["payload"]["negative_prompt"] == "blurry"


def test_check_target_points_at_the_aws_notebook():
    assert check_target("aws", ("local", "aws")) == "aws"
    with pytest.raises(TargetError, match="13_deploy_to_aws"):
        check_target("aws")
    with pytest.raises(TargetError, match="not a target"):
        check_target("cloud")


def test_manifests_diff_shows_only_what_the_value_moves(settings):
    before = manifests.render(settings)
    after = manifests.render(manifests.with_value(settings, "webui-a", "scaling.queue_length", 2))
    diffs = manifests.diff(before, after)
    assert list(diffs) == ["ScaledObject/sdlab-webui-a"] and "+      queueLength: '2'" in diffs["ScaledObject/sdlab-webui-a"]
    assert manifests.problems(after) == []


def test_manifests_with_value_refuses_what_the_config_refuses(settings):
    with pytest.raises(SdlabError, match="min_replicas"):
        manifests.with_value(settings, "webui-a", "scaling.min_replicas", 99)
    with pytest.raises(SdlabError, match="pick one of"):
        manifests.with_value(settings, "webui-z", "scaling.queue_length", 2)


def test_tuning_adjust_names_bad_knobs(settings):
    base = settings.runtime("webui-a").scaling
    assert tuning.adjust(base, queue_length=2).queue_length == 2
    with pytest.raises(SdlabError, match="the knobs are"):
        tuning.adjust(base, queue_lenght=2)
    with pytest.raises(SdlabError, match="min_replicas"):
        tuning.adjust(base, min_replicas=9, max_replicas=2)


def test_tuning_sweep_runs_each_value_on_the_same_arrivals(settings):
    from sdlab.sim.workload import steady

    table = tuning.sweep(settings, "webui-a", steady(0.2, 600), "queue_length", [1, 8])
    assert list(table["queue_length"]) == [1, 8]
    assert table["completed"].nunique() == 1 and (table["unfinished"] == 0).all()


def test_doc_tables_reads_the_section_s_tables_only(tmp_path):
    doc = tmp_path / "bench.md"
    doc.write_text("# B\n## CPU (measured)\ntext\n\n| model | median |\n|---|---|\n| **tiny** | `0.3 s` |\n\n"
                   "| a | b |\n|---|---|\n| 1 | 2 |\n## GPU\n| x |\n|---|\n| 9 |\n")
    tables = latency.doc_tables(doc, "CPU")
    assert [list(t.columns) for t in tables] == [["model", "median"], ["a", "b"]]
    assert tables[0].iloc[0].tolist() == ["tiny", "0.3 s"]
    with pytest.raises(KeyError, match="no heading"):
        latency.doc_tables(doc, "TPU")


def test_cost_per_1000_images_adds_requests_to_gpu_time():
    one = cost.per_1000_images("g5.xlarge", 2.3, busy_fraction=1.0)
    assert one["gpu_usd"] == pytest.approx(1.006 * 2.3 * 1000 / 3600, rel=1e-3)
    assert one["total_usd"] == pytest.approx(one["gpu_usd"] + one["requests_usd"], abs=1e-4)
    with pytest.raises(KeyError, match="prices.yaml"):
        cost.per_1000_images("x9.huge", 1.0)
    with pytest.raises(ValueError, match="busy_fraction"):
        cost.per_1000_images("g5.xlarge", 1.0, busy_fraction=0)


def test_cost_monthly_fixed_cluster_against_sagemaker(settings):
    table = cost.monthly(settings, [10, 1_000_000])
    assert table["sdlab_eks_usd"].iloc[0] == pytest.approx(cost.fixed_per_hour(settings) * 730, rel=0.01)
    assert table["sdlab_eks_usd"].iloc[1] < table["sagemaker_async_min0_usd"].iloc[1]


def test_operations_reads_rollout_and_scale_in_settings_per_runtime(settings):
    table = manifests.operations(manifests.render(settings))
    assert sorted(table["deployment"]) == sorted(f"sdlab-{rt.name}" for rt in settings.runtimes)
    longest_task = max(rt.queue.visibility_timeout_seconds for rt in settings.runtimes)
    assert (table["grace_s"] > longest_task).all() and (table["max_unavailable"] == 0).all()
