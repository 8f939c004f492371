"""infra/ is what `sdlab aws render-infra` makes from sdlab.yaml (no drift), and it agrees with the manifests."""

from __future__ import annotations

from pathlib import Path

import yaml

from sdlab.config import load_config
from sdlab.deploy import eks
from sdlab.deploy.infra import GENERATED_DIRS, render_infra, write_infra
from sdlab.deploy.names import DeployNames

ROOT = Path(__file__).resolve().parents[2]


def test_committed_infra_matches_the_config():
    fresh = render_infra(load_config(ROOT / "sdlab.yaml"))
    committed = {str(p.relative_to(ROOT)): p.read_text() for d in GENERATED_DIRS for p in (ROOT / d).glob("*") if p.is_file()}
    assert sorted(fresh) == sorted(committed), "run `sdlab aws render-infra` and commit infra/"
    stale = [k for k in fresh if fresh[k] != committed[k]]
    assert not stale, f"stale {stale}: run `sdlab aws render-infra` and commit infra/"


def test_rendering_twice_changes_no_byte_and_removes_dropped_roles(tmp_path, test_settings):
    files = render_infra(test_settings)
    write_infra(files, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    write_infra(render_infra(test_settings), tmp_path)
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    one_runtime = test_settings.model_copy(update={"runtimes": test_settings.runtimes[:1]})
    write_infra(render_infra(one_runtime), tmp_path)
    assert not list(tmp_path.glob("infra/iam/*rt-b*")), "the dropped runtime's role documents must go"


def test_pod_identity_covers_every_service_account_the_manifests_render(test_settings):
    from sdlab.k8s.cli import PLACEHOLDER_ACCOUNT, context_for
    from sdlab.k8s.render import render_stack

    names = DeployNames.of(test_settings)
    config = yaml.safe_load(render_infra(test_settings)[eks.INFRA_FILES["cluster"]])
    associated = {(a["namespace"], a["serviceAccountName"]) for a in config["iam"]["podIdentityAssociations"]}
    ctx = context_for(test_settings, account_id=PLACEHOLDER_ACCOUNT, registry="r", cluster=names.cluster)
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in render_stack(test_settings, ctx)
                if o["kind"] == "ServiceAccount"}
    assert accounts and accounts <= associated
    assert {("keda", "keda-operator"), ("kube-system", "karpenter")} <= associated
    addons = {a["name"]: a for a in config["addons"]}
    assert {"eks-pod-identity-agent", "aws-mountpoint-s3-csi-driver"} <= set(addons)
    assert addons["aws-mountpoint-s3-csi-driver"]["podIdentityAssociations"][0]["serviceAccountName"] == "s3-csi-driver-sa"
    node_role = config["accessConfig"]["accessEntries"][0]["principalARN"]
    assert node_role.endswith(f":role/{ctx.node_role_name}"), "the EC2NodeClass role must be able to join the cluster"
    assert config["metadata"]["tags"]["karpenter.sh/discovery"] == ctx.cluster_name


def test_karpenter_values_point_at_the_interruption_queue(test_settings):
    names = DeployNames.of(test_settings)
    values = eks.karpenter_values(names)
    assert values["settings"] == {"clusterName": names.cluster, "interruptionQueue": names.interruption_queue}


def test_commands_are_printed_when_the_tools_are_absent(capsys):
    names = DeployNames.of(load_config(ROOT / "sdlab.yaml"))
    lines = eks.run_or_print(eks.install_commands(names), run=False)
    assert lines[0] == "eksctl create cluster -f infra/eksctl/cluster.yaml"
    assert any(line.startswith("helm upgrade --install karpenter oci://public.ecr.aws/karpenter/karpenter") for line in lines)
    assert capsys.readouterr().out.splitlines() == [f"run: {line}" for line in lines]


def test_dockerfiles_run_as_non_root_and_keep_torch_out_of_the_agent():
    agent = (ROOT / "infra/docker/agent.Dockerfile").read_text()
    runtime = (ROOT / "infra/docker/runtime.Dockerfile").read_text()
    assert "FROM python:3.12-slim" in agent and "USER 10001" in agent and "torch>" not in agent
    assert "rm -rf sdlab/runtime" in agent
    assert "nvidia/cuda" in runtime and "USER 10001" in runtime and '"torch>=2.3,<3"' in runtime
