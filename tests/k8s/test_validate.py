"""Strict validation: every rendered object passes, and the validator does reject what the API server would prune."""

from __future__ import annotations

import copy

import yaml

from sdlab.k8s.files import write_manifests
from sdlab.k8s.render import render_stack
from sdlab.k8s.validate import load_crds, strict_schema, validate_all, validate_object

from .conftest import find

CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "NodePool", "EC2NodeClass"}


def test_validate_all_rendered_objects_pass(objects, crds):
    assert {o["kind"] for o in objects} >= CRD_KINDS | {"Deployment", "PersistentVolume", "Namespace"}
    assert validate_all(objects, crds) == []


def test_validate_all_variants_pass(settings, make_ctx, crds):
    objects = render_stack(
        settings,
        make_ctx(
            snapshot_id="snap-0123456789abcdef0", keda_role_arn="arn:aws:iam::1:role/k", grace_seconds=400, high_queue_urls={}
        ),
    )
    assert validate_all(objects, crds) == []


def test_validate_written_files_pass(objects, crds, tmp_path):
    loaded = [yaml.safe_load(p.read_text()) for p in write_manifests(objects, tmp_path)]
    assert validate_all(loaded, crds) == []


def test_crds_load_served_versions(crds):
    schemas = load_crds(str(crds))
    assert {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
        ("karpenter.sh/v1", "NodePool"),
        ("karpenter.k8s.aws/v1", "EC2NodeClass"),
    } <= set(schemas)
    assert schemas[("karpenter.sh/v1", "NodePool")].namespaced is False
    assert schemas[("keda.sh/v1alpha1", "ScaledObject")].namespaced is True


def test_validate_rejects_scale_on_in_flight_at_spec_level(objects, crds):
    obj = copy.deepcopy(find(objects, "ScaledObject", "webui-a"))
    obj["spec"]["scaleOnInFlight"] = False  # where the upstream chart put it; KEDA never reads it there
    problems = validate_object(obj, crds)
    assert len(problems) == 1
    assert "ScaledObject/sdlab-webui-a: spec:" in problems[0] and "'scaleOnInFlight' was unexpected" in problems[0]


def test_validate_rejects_unknown_trigger_field_but_accepts_any_metadata_key(objects, crds):
    obj = copy.deepcopy(find(objects, "ScaledObject", "webui-a"))
    obj["spec"]["triggers"][0]["metadata"]["anyKey"] = "metadata is a string map"
    assert validate_object(obj, crds) == []
    obj["spec"]["triggers"][0]["queueLength"] = "3"
    assert any("'queueLength' was unexpected" in p for p in validate_object(obj, crds))
    obj["spec"]["triggers"][0]["metadata"]["queueLength"] = 3  # must be a string
    assert any("triggers.0.metadata.queueLength" in p for p in validate_object(obj, crds))


def test_validate_rejects_unknown_field_in_deployment_container(objects):
    obj = copy.deepcopy(find(objects, "Deployment", "webui-a"))
    obj["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    problems = validate_object(obj)
    assert problems == [
        "Deployment/sdlab-webui-a: spec.template.spec.containers.0: Additional properties are not allowed ('gpus' was unexpected)"
    ]


def test_validate_rejects_bad_node_pool_requirement_operator(objects, crds):
    obj = copy.deepcopy(find(objects, "NodePool", "diff-b"))
    obj["spec"]["template"]["spec"]["requirements"][1]["operator"] = "Equals"
    problems = validate_object(obj, crds)
    assert len(problems) == 1
    assert "spec.template.spec.requirements.1.operator: 'Equals' is not one of" in problems[0]


def test_validate_rejects_unknown_pod_identity_provider_and_ec2_field(objects, crds):
    auth = copy.deepcopy(find(objects, "TriggerAuthentication", "webui-a"))
    auth["spec"]["podIdentity"]["provider"] = "eks-pod-identity"
    assert any("provider: 'eks-pod-identity' is not one of" in p for p in validate_object(auth, crds))
    nodeclass = copy.deepcopy(find(objects, "EC2NodeClass", "webui-a"))
    nodeclass["spec"]["metadataOptions"]["hopLimit"] = 2
    assert any("'hopLimit' was unexpected" in p for p in validate_object(nodeclass, crds))


def test_validate_checks_metadata_of_custom_resources(objects, crds):
    obj = copy.deepcopy(find(objects, "NodePool", "webui-a"))
    obj["metadata"]["namespace"] = "sdlab"
    obj["metadata"]["label"] = {"a": "b"}
    obj["metadata"]["labels"]["sdlab/runtime"] = "x" * 64
    problems = "\n".join(validate_object(obj, crds))
    assert "NodePool is cluster-scoped" in problems
    assert "'label' was unexpected" in problems
    assert "not a valid label value" in problems


def test_validate_rejects_missing_namespace_and_long_node_pool_name(objects, crds):
    pvc = copy.deepcopy(find(objects, "PersistentVolumeClaim", "webui-a"))
    del pvc["metadata"]["namespace"]
    assert any("metadata.namespace: missing" in p for p in validate_object(pvc))
    pool = copy.deepcopy(find(objects, "NodePool", "webui-a"))
    pool["metadata"]["name"] = "n" * 64
    assert any("DNS label of at most 63" in p for p in validate_object(pool, crds))


def test_validate_reports_unknown_kind_and_missing_crd_folder(objects, tmp_path):
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "sdlab"}}
    assert any("CRD folder" in p and "not found" in p for p in validate_object(unknown, tmp_path / "absent"))
    assert any("no CRD in" in p for p in validate_object(unknown, tmp_path))
    core = {"apiVersion": "v1", "kind": "Gadget", "metadata": {"name": "g"}}
    assert any("Couldn't find schema" in p for p in validate_object(core))


def test_validate_all_finds_dangling_references_and_duplicates(objects, crds):
    without_sa = [o for o in objects if o["kind"] != "ServiceAccount"]
    problems = validate_all(without_sa, crds)
    assert "Deployment/sdlab-webui-a: refers to ServiceAccount/sdlab-webui-a, which is not rendered" in problems
    doubled = validate_all(objects + [objects[1]], crds)
    assert any("defined twice" in p for p in doubled)


def test_strict_schema_closes_listed_properties_only():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"c": {}}},
            "map": {"type": "object", "additionalProperties": {"type": "object", "properties": {"d": {}}}},
            "list": {"type": "array", "items": {"type": "object", "properties": {"e": {}}}},
            "either": {"anyOf": [{"type": "object", "properties": {"f": {}}}]},
        },
    }
    strict = strict_schema(schema)
    assert "additionalProperties" not in schema  # the input is not modified
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["open"]
    assert strict["properties"]["map"]["additionalProperties"]["additionalProperties"] is False
    assert strict["properties"]["list"]["items"]["additionalProperties"] is False
    assert strict["properties"]["either"]["anyOf"][0]["additionalProperties"] is False


def test_hpa_behaviour_from_config_renders_and_validates(make_ctx, crds):
    from sdlab.config import parse_config

    from .conftest import CONFIG

    rt = {**CONFIG["runtimes"][0], "scaling": {**CONFIG["runtimes"][0]["scaling"], "hpa": {
        "scale_up": {"stabilization_window_seconds": 30, "policies": [{"type": "Pods", "value": 2, "period_seconds": 60}]},
        "scale_down": {"stabilization_window_seconds": 600, "select_policy": "Min",
                       "policies": [{"type": "Percent", "value": 50, "period_seconds": 120},
                                    {"type": "Pods", "value": 1, "period_seconds": 60}]}}}}
    settings = parse_config({**CONFIG, "runtimes": [rt, CONFIG["runtimes"][1]]}, "hpa test")
    objects = render_stack(settings, make_ctx())
    behavior = find(objects, "ScaledObject", "webui-a")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"] == {"stabilizationWindowSeconds": 30,
                                   "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}
    assert behavior["scaleDown"]["selectPolicy"] == "Min" and behavior["scaleDown"]["stabilizationWindowSeconds"] == 600
    other = find(objects, "ScaledObject", "diff-b")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert "scaleUp" not in other  # unset: Kubernetes' defaults, not rendered
    assert validate_all(objects, crds) == []
