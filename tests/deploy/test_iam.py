"""IAM documents: no wildcard unless AWS requires it; trust; names; ensure_role against moto converges.
What each principal may do is proven by enforcement in tests/iam/, not restated here."""

from __future__ import annotations

import json

import pytest

from sdlab.config import parse_config
from sdlab.deploy.iam import REQUIRES_WILDCARD_RESOURCE, Arns, ensure_role, role_specs
from sdlab.deploy.names import DeployNames
from sdlab.deploy.sagemaker_async import execution_role

ACCOUNT, REGION = "123456789012", "us-east-1"


def _specs(settings):
    names = DeployNames.of(settings)
    arns = Arns(ACCOUNT, REGION)
    return [*role_specs(settings, names, arns), execution_role(settings, names, arns, "s3://models-bucket/sd/model.tar.gz")]


def _allow(spec):
    return [s for s in (spec.policy or {}).get("Statement", []) if s["Effect"] == "Allow"]


def _as_list(value):
    return [value] if isinstance(value, str) else list(value)


def test_policies_have_no_wildcard_except_where_aws_requires_it(test_settings):
    for spec in _specs(test_settings):
        for st in _allow(spec):
            actions, resources = _as_list(st["Action"]), _as_list(st["Resource"])
            assert not [a for a in actions if "*" in a], f"{spec.name}/{st['Sid']}: wildcard action {actions}"
            if "*" in resources:
                assert resources == ["*"] and set(actions) <= REQUIRES_WILDCARD_RESOURCE, (
                    f"{spec.name}/{st['Sid']}: Resource '*' for {actions}, which AWS scopes to resources")
            for arn in (r for r in resources if r != "*"):
                head = ":".join(arn.split(":")[:5])
                assert "*" not in head, f"{spec.name}/{st['Sid']}: wildcard service/region/account in {arn}"
                assert not arn.endswith(":::*") and arn.split(":")[5] not in ("*", "/*"), f"{spec.name}: whole service in {arn}"


def test_input_buckets_become_read_only_object_arns_and_s3_uris_are_normalised(test_settings):
    """One format (bare names) from the config on: an `s3://` URI in the config reads the same as the name."""
    data = test_settings.model_dump(mode="json")
    data["stack"]["input_buckets"] = ["s3://inputs-a", "inputs-b"]
    agent = next(s for s in _specs(parse_config(data)) if s.principal == "agent:rt-a")
    reads = next(st for st in _allow(agent) if st["Sid"] == "ReadInputs")
    assert {"arn:aws:s3:::inputs-a/*", "arn:aws:s3:::inputs-b/*"} <= set(reads["Resource"])


def test_trust_policies_name_the_right_service(test_settings):
    trust = {s.principal.split(":")[0]: s.trust["Statement"][0] for s in _specs(test_settings)}
    for kind in ("agent", "keda", "karpenter", "mountpoint"):
        assert trust[kind]["Principal"] == {"Service": "pods.eks.amazonaws.com"}
        assert trust[kind]["Action"] == ["sts:AssumeRole", "sts:TagSession"]
        assert trust[kind]["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}
    assert trust["lambda"]["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert trust["node"]["Principal"] == {"Service": "ec2.amazonaws.com"}


def test_role_names_fit_iam_limits():
    long = parse_config({"stack": {"name": "s" * 40}, "runtimes": [{"name": "r" * 40, "model": {"name": "m"}}]})
    names = [s.name for s in _specs(long)]
    assert all(len(n) <= 64 for n in names) and len(set(names)) == len(names)


@pytest.mark.integration
def test_ensure_role_converges_on_moto(test_settings, names, aws):
    from sdlab.aws import client

    iam = client("iam", aws)
    spec = next(s for s in role_specs(test_settings, names, Arns(ACCOUNT, REGION)) if s.principal == "agent:rt-a")
    arn = ensure_role(iam, spec)
    assert arn == f"arn:aws:iam::{ACCOUNT}:role/sdlab/sdlabtest/{spec.name}"
    iam.put_role_policy(RoleName=spec.name, PolicyName="sdlab", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}]}))
    assert ensure_role(iam, spec) == arn
    stored = iam.get_role_policy(RoleName=spec.name, PolicyName="sdlab")["PolicyDocument"]
    assert stored == spec.policy, "a hand-widened policy was not put back"
    assert {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=spec.name)["Tags"]} == {"sdlab:stack": "sdlabtest"}
    node = next(s for s in role_specs(test_settings, names, Arns(ACCOUNT, REGION)) if s.principal == "node")
    ensure_role(iam, node)
    ensure_role(iam, node)
    attached = iam.list_attached_role_policies(RoleName=node.name)["AttachedPolicies"]
    assert sorted(p["PolicyArn"] for p in attached) == sorted(node.managed_policies)
