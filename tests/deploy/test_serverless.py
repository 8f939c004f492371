"""The serverless layer against a moto server process: API Gateway, interruption queue, ECR, EKS describe, the
whole deploy twice (idempotent), teardown in order, and nothing left behind."""

from __future__ import annotations

import json

import pytest

from sdlab.aws import client
from sdlab.deploy import apigw, ecr, eks, interruption
from sdlab.deploy.stack import deploy_serverless
from sdlab.deploy.teardown import remaining, teardown_stack

pytestmark = pytest.mark.integration
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:sdlabtest-api"


def test_api_is_key_protected_proxy_to_the_function_and_converges(aws, names):
    gw, lam = client("apigateway", aws), client("lambda", aws)
    from sdlab.deploy.iam import Arns, ensure_role, role_specs
    from sdlab.deploy.lambda_pkg import build_zip, ensure_function

    role = next(s for s in role_specs(_settings(), names, Arns("123456789012", aws.region)) if s.principal == "lambda")
    fn = ensure_function(lam, names.function, role_arn=ensure_role(client("iam", aws), role), code=build_zip(vendor=False),
                         environment={}, tags=names.tags)
    limits = apigw.ApiLimits(rate_per_second=10, burst=20, quota_per_day=500)
    first = apigw.ensure_api(gw, lam, names, function_arn=fn, account="123456789012", limits=limits)
    second = apigw.ensure_api(gw, lam, names, function_arn=fn, account="123456789012", limits=limits)
    assert first == second
    assert len(gw.get_deployments(restApiId=first.api_id)["items"]) == 1, "an unchanged API must not be redeployed"
    proxy = next(r for r in gw.get_resources(restApiId=first.api_id)["items"] if r["path"] == "/{proxy+}")
    method = gw.get_method(restApiId=first.api_id, resourceId=proxy["id"], httpMethod="ANY")
    assert method["apiKeyRequired"] is True
    assert method["methodIntegration"]["type"] == "AWS_PROXY" and fn in method["methodIntegration"]["uri"]
    plan = gw.get_usage_plan(usagePlanId=first.usage_plan_id)
    assert plan["throttle"] == {"rateLimit": 10, "burstLimit": 20} and plan["quota"]["limit"] == 500
    assert plan["apiStages"] == [{"apiId": first.api_id, "stage": "v1"}]
    assert [k["id"] for k in gw.get_usage_plan_keys(usagePlanId=first.usage_plan_id)["items"]] == [first.key_id]
    statement = json.loads(lam.get_policy(FunctionName=names.function)["Policy"])["Statement"][0]
    assert statement["Principal"] == {"Service": "apigateway.amazonaws.com"}
    assert first.url == f"https://{first.api_id}.execute-api.us-east-1.amazonaws.com/v1"
    assert "key_value" in first.to_dict() and first.key_value not in json.dumps(first.to_dict())
    removed = apigw.delete_api(gw, names)
    assert len(removed) == 3 and apigw.delete_api(gw, names) == []


def test_interruption_queue_gets_the_four_karpenter_event_kinds(aws, names):
    sqs, events = client("sqs", aws), client("events", aws)
    url, arn = interruption.ensure_interruption_queue(sqs, events, names)
    assert interruption.ensure_interruption_queue(sqs, events, names) == (url, arn)
    kinds = set()
    for rule in events.list_rules(NamePrefix=f"{names.cluster}-karpenter-")["Rules"]:
        kinds |= set(json.loads(rule["EventPattern"])["detail-type"])
        assert [t["Arn"] for t in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]] == [arn]
    assert kinds == {"EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation",
                     "EC2 Instance State-change Notification", "AWS Health Event"}
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    assert policy["Statement"][0]["Principal"]["Service"] == ["events.amazonaws.com", "sqs.amazonaws.com"]
    assert len(interruption.delete_interruption_queue(sqs, events, names)) == 5
    assert events.list_rules(NamePrefix=f"{names.cluster}-karpenter-")["Rules"] == []


def test_repositories_scan_on_push_with_immutable_tags_and_are_deleted_only_when_ours(aws, names):
    reg = client("ecr", aws)
    uri = ecr.ensure_repository(reg, "sdlab-agent", names.tags)
    assert ecr.ensure_repository(reg, "sdlab-agent", names.tags) == uri
    repo = reg.describe_repositories(repositoryNames=["sdlab-agent"])["repositories"][0]
    assert repo["imageTagMutability"] == "IMMUTABLE" and repo["imageScanningConfiguration"] == {"scanOnPush": True}
    ecr.ensure_repository(reg, "sdlab-runtime", {"sdlab:stack": "someone-else"})
    assert ecr.delete_repository(reg, "sdlab-runtime", names.tags) is False  # another stack's: left alone
    assert ecr.delete_repository(reg, "sdlab-agent", names.tags) is True
    commands = ecr.push_images(reg, "123456789012", aws.region, "0.1.0", run=False)
    assert commands[0].startswith("aws ecr get-login-password") and "--platform linux/amd64" in commands[1]


def test_cluster_status_describes_an_existing_cluster(aws, names):
    eks_client = client("eks", aws)
    assert eks.cluster_status(eks_client, names.cluster) is None
    eks_client.create_cluster(name=names.cluster, roleArn="arn:aws:iam::123456789012:role/eks",
                              resourcesVpcConfig={"subnetIds": []})
    assert eks.cluster_status(eks_client, names.cluster)["status"] == "ACTIVE"


def _dispatcher_is_deployed_on_the_callbacks_queue(aws, deployed) -> None:
    from sdlab import envvars
    from sdlab.aws import client

    lam, sqs = client("lambda", aws), client("sqs", aws)
    config = lam.get_function_configuration(FunctionName="sdlabtest-callbacks")
    assert config["Handler"] == "sdlab.api.callbacks.handler" and config["Role"].endswith("sdlabtest-callbacks-lambda")
    env = config["Environment"]["Variables"]
    assert env[envvars.CALLBACK_QUEUE_URL] == deployed.resources.callbacks_queue_url
    assert env[envvars.CALLBACK_DLQ_URL] == deployed.resources.callbacks_dlq_url
    assert env[envvars.TASK_TABLE] == deployed.resources.table and env[envvars.CALLBACK_SECRET] == deployed.callback_secret
    assert envvars.CALLBACK_ALLOW_PRIVATE not in env  # only the local stack may call loopback and private addresses
    queue = sqs.get_queue_attributes(QueueUrl=deployed.resources.callbacks_queue_url,
                                     AttributeNames=["QueueArn", "VisibilityTimeout"])["Attributes"]
    assert config["Timeout"] <= int(queue["VisibilityTimeout"])  # what Lambda requires of an SQS trigger
    [mapping] = lam.list_event_source_mappings(FunctionName="sdlabtest-callbacks")["EventSourceMappings"]
    assert mapping["EventSourceArn"] == queue["QueueArn"] and mapping["FunctionArn"] == deployed.callbacks_function_arn
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"] and mapping["BatchSize"] == 5
    assert deployed.to_dict()["callback_secret"].endswith("…")  # printed redacted


def _plan_lists_everything_deployed(aws, test_settings) -> None:
    """`sdlab aws plan` (no AWS call) names every resource the deploy made, and prices the idle stack."""
    from sdlab.deploy.plan import build_plan, format_plan

    planned = " ".join(i.name for i in build_plan(test_settings))
    for line in remaining(test_settings, aws):
        name = line.split(" ")[-1] if "(" not in line else line.split(" ")[-2]
        assert name.rsplit("/", 1)[-1].rsplit(":", 1)[-1] in planned, f"deployed but not planned: {line}"
    assert "idle cost $0.3082/h" in format_plan(build_plan(test_settings))


def test_deploy_twice_then_teardown_leaves_nothing(aws, test_settings, tmp_path):
    first = deploy_serverless(test_settings, aws, vendor=False)
    second = deploy_serverless(test_settings, aws, vendor=False)
    assert first.to_dict() == second.to_dict()
    assert first.callback_secret == second.callback_secret and len(first.callback_secret) >= 32  # kept, not re-rolled
    _dispatcher_is_deployed_on_the_callbacks_queue(aws, second)
    _plan_lists_everything_deployed(aws, test_settings)
    left = remaining(test_settings, aws)
    for expected in ("Lambda function sdlabtest-api", "Lambda function sdlabtest-callbacks", "IAM role sdlabtest-rt-a-agent",
                     "S3 bucket sdlabtest-data",
                     "DynamoDB table sdlabtest-tasks", "ECR repository sdlab-agent", "usage plan sdlabtest-plan",
                     "EventBridge rule sdlabtest-karpenter-spot-interruption"):
        assert expected in left
    removed = teardown_stack(test_settings, aws)
    kinds = [r.split(" ")[0] for r in removed]
    assert kinds.index("usage") < kinds.index("Lambda") < kinds.index("IAM") < kinds.index("ECR") < kinds.index("EventBridge")
    assert remaining(test_settings, aws) == []
    assert teardown_stack(test_settings, aws) == []


def test_remaining_reports_other_tagged_resources_and_gpu_nodes(aws, test_settings):
    sm = client("sagemaker", aws)
    sm.create_model(ModelName="leftover", ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
                    PrimaryContainer={"Image": "x"}, Tags=[{"Key": "sdlab:stack", "Value": "sdlabtest"}])
    ec2 = client("ec2", aws)
    ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="g5.xlarge", TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "sdlab/stack", "Value": "sdlabtest"}]}])
    left = remaining(test_settings, aws)
    assert any(x.startswith("tagged arn:aws:sagemaker") for x in left)
    assert any(x.startswith("EC2 instance") and "g5.xlarge" in x for x in left)


def _settings():
    from sdlab.config import parse_config
    from tests.conftest import TEST_CONFIG

    return parse_config(TEST_CONFIG)
