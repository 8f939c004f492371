"""Rendering: what each object holds, determinism, and one file per object."""

from __future__ import annotations

import pytest
import yaml

from agent.settings import AgentSettings
from sdlab import envvars
from sdlab.config import parse_config
from sdlab.errors import ConfigError
from sdlab.k8s.files import HEADER, write_manifests
from sdlab.k8s.render import render_runtime, render_stack

from .conftest import CONFIG, find

RUNTIME_KINDS = [
    "ServiceAccount",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "EC2NodeClass",
    "NodePool",
    "Deployment",
    "PodDisruptionBudget",
    "TriggerAuthentication",
    "ScaledObject",
]


def test_render_stack_namespace_then_each_runtime_in_apply_order(objects):
    assert objects[0]["kind"] == "Namespace" and objects[0]["metadata"]["name"] == "sdlab"
    kinds = [o["kind"] for o in objects[1:]]
    assert kinds == RUNTIME_KINDS * 2
    runtimes = [o["metadata"]["labels"]["sdlab/runtime"] for o in objects[1:]]
    assert runtimes == ["webui-a"] * 9 + ["diff-b"] * 9


def test_render_stack_same_input_same_output(settings, make_ctx):
    first = yaml.safe_dump_all(render_stack(settings, make_ctx()), sort_keys=False)
    second = yaml.safe_dump_all(render_stack(parse_config(CONFIG), make_ctx()), sort_keys=False)
    assert first == second


def test_render_labels_name_part_of_runtime_and_stack(objects):
    for obj in objects[1:]:
        lbls = obj["metadata"]["labels"]
        assert lbls["app.kubernetes.io/part-of"] == "sdlab"
        assert lbls["sdlab/stack"] == "sdlab"
        assert lbls["app.kubernetes.io/name"] == lbls["sdlab/runtime"]


def test_deployment_runtime_is_native_sidecar_with_the_gpu(objects):
    pod = find(objects, "Deployment", "webui-a")["spec"]["template"]["spec"]
    (runtime,) = pod["initContainers"]
    (agent,) = pod["containers"]
    assert runtime["restartPolicy"] == "Always"
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in str(agent["resources"])
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(runtime)
    assert runtime["startupProbe"]["httpGet"]["path"] == "/sdapi/v1/memory"
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert agent["ports"] == [{"name": "health", "containerPort": 8081, "protocol": "TCP"}]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_deployment_scheduling_protection_and_grace(objects):
    deploy = find(objects, "Deployment", "webui-a")
    pod = deploy["spec"]["template"]
    assert "replicas" not in deploy["spec"]  # KEDA owns it; an apply must not reset it
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 300 + 60  # visibility timeout + margin
    assert pod["spec"]["nodeSelector"]["karpenter.sh/nodepool"] == find(objects, "NodePool", "webui-a")["metadata"]["name"]
    assert pod["spec"]["serviceAccountName"] == find(objects, "ServiceAccount", "webui-a")["metadata"]["name"]
    claim = find(objects, "PersistentVolumeClaim", "webui-a")["metadata"]["name"]
    assert pod["spec"]["volumes"] == [{"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]
    (mount,) = pod["spec"]["initContainers"][0]["volumeMounts"]
    assert mount["readOnly"] is True


def test_deployment_agent_env_uses_envvars_names(objects):
    env = {
        e["name"]: e["value"] for e in find(objects, "Deployment", "webui-a")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    read = set()

    class Recording(dict):  # what the agent reads of its environment
        def get(self, key, default=None):
            read.add(key)
            return super().get(key, default)

        def __getitem__(self, key):
            read.add(key)
            return super().__getitem__(key)

    AgentSettings.from_env(Recording(env))
    # every rendered variable is read by the agent, but the AWS SDK's own region names (boto3 reads those)
    assert set(env) - read == {"AWS_REGION", "AWS_DEFAULT_REGION"}
    assert env[envvars.AGENT_QUEUE_URL].endswith("/sdlab-webui-a")
    assert env[envvars.AGENT_DLQ_URL].endswith("/sdlab-webui-a-dlq")
    assert env[envvars.AGENT_RUNTIME_URL] == "http://127.0.0.1:8080"
    assert env[envvars.AGENT_HEALTH_PORT] == "8081"
    assert env[envvars.AGENT_VISIBILITY_TIMEOUT_SECONDS] == "300"
    assert env[envvars.BUCKET] == "sdlab-test-data"
    assert all(isinstance(v, str) for v in env.values())


def test_deployment_diffusers_runtime_gets_model_and_listen_args(objects):
    runtime = find(objects, "Deployment", "diff-b")["spec"]["template"]["spec"]["initContainers"][0]
    assert runtime["args"][:8] == ["--models-dir", "/models", "--model", "tiny-b", "--host", "0.0.0.0", "--port", "7860"]
    assert runtime["args"][8:] == ["--max-batch-wait-ms", "50"]  # batch settings from the config (defaults here)
    assert runtime["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_scaled_object_trigger_metadata_where_keda_reads_it(objects):
    spec = find(objects, "ScaledObject", "webui-a")["spec"]
    assert "scaleOnInFlight" not in spec
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 6, 240)
    assert [t["name"] for t in spec["triggers"]] == ["high", "normal"]
    for trigger in spec["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "aws-sqs-queue"
        assert meta["queueLength"] == "3" and meta["activationQueueLength"] == "1"
        assert meta["scaleOnInFlight"] == "true" and meta["awsRegion"] == "us-west-2"
        assert all(isinstance(v, str) for v in meta.values())
        assert trigger["authenticationRef"]["name"] == find(objects, "TriggerAuthentication", "webui-a")["metadata"]["name"]
    assert spec["advanced"]["scalingModifiers"]["formula"] == "high + normal"
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 240


def test_scaled_object_single_queue_follows_config(objects):
    spec = find(objects, "ScaledObject", "diff-b")["spec"]
    (trigger,) = spec["triggers"]
    assert trigger["metadata"]["scaleOnInFlight"] == "false"
    assert "scalingModifiers" not in spec["advanced"]


def test_trigger_authentication_pod_identity_aws(settings, make_ctx, objects):
    assert find(objects, "TriggerAuthentication", "webui-a")["spec"] == {
        "podIdentity": {"provider": "aws", "identityOwner": "keda"}
    }
    role = "arn:aws:iam::123456789012:role/keda-sqs"
    assumed = render_stack(settings, make_ctx(keda_role_arn=role))
    assert find(assumed, "TriggerAuthentication", "webui-a")["spec"] == {"podIdentity": {"provider": "aws", "roleArn": role}}


def test_node_pool_requirements_taints_disruption(objects):
    spec = find(objects, "NodePool", "diff-b")["spec"]
    reqs = {r["key"]: r for r in spec["template"]["spec"]["requirements"]}
    assert reqs["node.kubernetes.io/instance-type"]["values"] == ["g6e.xlarge"]
    assert reqs["karpenter.sh/capacity-type"]["values"] == ["on-demand"]
    assert reqs["kubernetes.io/arch"]["values"] == ["amd64"]
    assert spec["template"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    assert spec["limits"] == {"nvidia.com/gpu": 2}
    assert spec["disruption"]["consolidationPolicy"] == "WhenEmpty"
    assert spec["template"]["spec"]["nodeClassRef"]["name"] == find(objects, "EC2NodeClass", "diff-b")["metadata"]["name"]


def test_ec2_node_class_pinned_bottlerocket_imdsv2_raid0(objects):
    spec = find(objects, "EC2NodeClass", "webui-a")["spec"]
    assert spec["amiSelectorTerms"] == [{"alias": "bottlerocket@v1.63.0"}]
    assert spec["metadataOptions"]["httpTokens"] == "required"
    assert spec["metadataOptions"]["httpPutResponseHopLimit"] == 2
    assert spec["instanceStorePolicy"] == "RAID0"
    assert spec["subnetSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": "sdlab-eks"}}]
    assert [b["deviceName"] for b in spec["blockDeviceMappings"]] == ["/dev/xvda", "/dev/xvdb"]
    assert spec["role"] == "sdlab-eks-gpu-node"


def test_ec2_node_class_snapshot_goes_on_data_volume_without_raid0(settings, make_ctx):
    objects = render_stack(settings, make_ctx(snapshot_id="snap-0123456789abcdef0"))
    spec = find(objects, "EC2NodeClass", "webui-a")["spec"]
    assert spec["blockDeviceMappings"][1]["ebs"]["snapshotID"] == "snap-0123456789abcdef0"
    assert "instanceStorePolicy" not in spec  # containerd must stay on the pre-pulled data volume


def test_model_volume_mountpoint_read_only_prefix(objects):
    pv = find(objects, "PersistentVolume", "webui-a")
    pvc = find(objects, "PersistentVolumeClaim", "webui-a")
    assert pv["spec"]["csi"]["driver"] == "s3.csi.aws.com"
    assert pv["spec"]["csi"]["volumeAttributes"] == {"bucketName": "sdlab-test-data"}
    assert {"read-only", "allow-other", "prefix models/"} <= set(pv["spec"]["mountOptions"])
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"] == ""
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pv["spec"]["claimRef"] == {"namespace": "sdlab", "name": pvc["metadata"]["name"]}


def test_pdb_one_unavailable_selects_deployment_pods(objects):
    pdb = find(objects, "PodDisruptionBudget", "webui-a")["spec"]
    deploy = find(objects, "Deployment", "webui-a")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"] == deploy["selector"]


def test_context_lists_every_missing_value(settings, make_ctx):
    with pytest.raises(ConfigError) as err:
        render_stack(settings, make_ctx(queue_urls={}, runtime_images={}, node_role_name="", high_queue_urls={"nope": "x"}))
    text = "\n".join(err.value.problems)
    for needle in ("queue_urls['webui-a']", "queue_urls['diff-b']", "runtime_images['diffusers']", "node_role_name", "'nope'"):
        assert needle in text


def test_context_grace_must_exceed_visibility_timeout(settings, make_ctx):
    with pytest.raises(ConfigError, match="grace_seconds: 200 is not above runtime 'webui-a'"):
        render_stack(settings, make_ctx(grace_seconds=200))
    objects = render_stack(settings, make_ctx(grace_seconds=900))
    assert find(objects, "Deployment", "diff-b")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900


def test_render_runtime_needs_only_its_own_values(settings, make_ctx):
    ctx = make_ctx(queue_urls={"diff-b": "https://sqs/b"}, high_queue_urls={}, dlq_urls={})
    objects = render_runtime(settings, settings.runtime("diff-b"), ctx)
    assert [o["kind"] for o in objects] == RUNTIME_KINDS
    with pytest.raises(ConfigError, match="queue_urls\\['webui-a'\\]"):
        render_runtime(settings, settings.runtime("webui-a"), ctx)


def test_render_runtime_refuses_runtime_not_in_config(settings, make_ctx):
    other = parse_config({"runtimes": [{"name": "other", "model": {"name": "m"}}]}).runtimes[0]
    with pytest.raises(ConfigError, match="'other' is not in this config"):
        render_runtime(settings, other, make_ctx())


def test_long_names_are_shortened_stably(make_ctx):
    stack, runtime = "s" * 40, "r" * 40
    settings = parse_config({"stack": {"name": stack}, "runtimes": [{"name": runtime, "model": {"name": "m"}}]})
    ctx = make_ctx(queue_urls={runtime: "https://sqs/q"}, high_queue_urls={}, dlq_urls={})
    first, second = render_stack(settings, ctx), render_stack(settings, ctx)
    names = [o["metadata"]["name"] for o in first]
    assert all(len(n) <= 63 for n in names)
    assert names == [o["metadata"]["name"] for o in second]
    pool = find(first, "NodePool")["metadata"]["name"]
    assert pool == find(first, "Deployment")["spec"]["template"]["spec"]["nodeSelector"]["karpenter.sh/nodepool"]
    assert pool != find(first, "PersistentVolume")["metadata"]["name"]


def test_write_manifests_one_file_per_object_deterministic(objects, settings, make_ctx, tmp_path):
    paths = write_manifests(objects, tmp_path / "a")
    assert len(paths) == len(objects) == len(set(paths))
    rel = sorted(str(p.relative_to(tmp_path / "a")) for p in paths)
    assert "sdlab/namespace-sdlab.yaml" in rel
    assert "webui-a/deployment-sdlab-webui-a.yaml" in rel
    assert "diff-b/scaledobject-sdlab-diff-b.yaml" in rel
    for path, obj in zip(paths, objects, strict=True):
        text = path.read_text()
        assert text.startswith(HEADER) and "&id" not in text
        assert yaml.safe_load(text) == obj
    again = write_manifests(render_stack(settings, make_ctx()), tmp_path / "b")
    for one, two in zip(paths, again, strict=True):
        assert one.read_bytes() == two.read_bytes()


def test_write_manifests_removes_only_its_own_stale_files(objects, tmp_path):
    write_manifests(objects, tmp_path)
    mine = tmp_path / "old-rt" / "deployment-sdlab-old-rt.yaml"
    mine.parent.mkdir()
    mine.write_text(HEADER + "kind: Deployment\n")
    theirs = tmp_path / "webui-a" / "notes.yaml"
    theirs.write_text("kept: true\n")
    write_manifests(objects, tmp_path)
    assert not mine.exists() and not mine.parent.exists()
    assert theirs.exists()
