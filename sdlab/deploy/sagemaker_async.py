"""SageMaker Asynchronous Inference, for comparison with the EKS path: the project runtime as an async endpoint.

SageMaker keeps the queue, the instances and the retries; requests go in through S3 (`InvokeEndpointAsync`) and
results come back in S3 with an SNS notification on the success or error topic. Scaling to zero needs two
policies (AWS docs, async-inference-autoscale): target tracking on `ApproximateBacklogSizePerInstance`, and a
step policy on `HasBacklogWithoutCapacity` that starts the first instance (target tracking alone would wait until
the backlog exceeds its target).

Two ways to create the endpoint: `deploy_with_sdk` (the `sagemaker` SDK v2, extra `aws`, what users run) and
`deploy_with_boto` (three boto3 calls; what the tests run against moto, the SDK being too heavy for the dev env).
The container is `infra/docker/runtime.Dockerfile` with `sdlab.deploy.sagemaker_serve` as its entry point.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from sdlab.config import Settings
from sdlab.deploy.iam import Arns, RoleSpec, service_trust
from sdlab.deploy.names import DeployNames

log = logging.getLogger(__name__)
VARIANT = "AllTraffic"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"


@dataclass(frozen=True)
class AsyncEndpointSpec:
    """One async endpoint. `model_data_url`: a tar.gz of the model folder (SageMaker unpacks it in /opt/ml/model)."""

    name: str
    image_uri: str
    model_data_url: str
    role_arn: str
    output_path: str  # s3://bucket/prefix for results
    failure_path: str
    success_topic_arn: str
    error_topic_arn: str
    instance_type: str = "ml.g5.xlarge"
    max_instances: int = 2
    max_concurrent_per_instance: int = 1
    backlog_per_instance: float = 4.0  # like KEDA's queue_length: target messages per instance
    scale_in_cooldown_seconds: int = 600
    scale_out_cooldown_seconds: int = 120

    @property
    def resource_id(self) -> str:
        return f"endpoint/{self.name}/variant/{VARIANT}"


def names_for(settings: Settings) -> dict[str, str]:
    stack = settings.stack.name
    return {"endpoint": f"{stack}-async", "success_topic": f"{stack}-async-success", "error_topic": f"{stack}-async-error",
            "role": f"{stack}-sagemaker-async", "prefix": f"{settings.stack.output_prefix}/sagemaker-async"}


def execution_role(settings: Settings, names: DeployNames, arns: Arns, model_data_url: str) -> RoleSpec:
    """The endpoint's role: pull its image, read the model archive, write results, notify, log, publish metrics."""
    n = names_for(settings)
    bucket, prefix = names.base.bucket, n["prefix"]
    model_bucket, _, model_key = model_data_url.removeprefix("s3://").partition("/")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "PullImage", "Effect": "Allow", "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                                                            "ecr:GetDownloadUrlForLayer"],
         "Resource": [arns.of("ecr", "repository/sdlab-runtime")]},
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": ["*"]},
        {"Sid": "ReadModel", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [f"arn:aws:s3:::{model_bucket}/{model_key}"]},
        {"Sid": "RequestsAndResults", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
         "Resource": [arns.objects(bucket, prefix)]},
        {"Sid": "Notify", "Effect": "Allow", "Action": ["sns:Publish"],
         "Resource": [arns.sns(n["success_topic"]), arns.sns(n["error_topic"])]},
        {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": [arns.of("logs", f"log-group:/aws/sagemaker/Endpoints/{n['endpoint']}:*")]},
        {"Sid": "Metrics", "Effect": "Allow", "Action": ["cloudwatch:PutMetricData"], "Resource": ["*"],
         "Condition": {"StringEquals": {"cloudwatch:namespace": ["AWS/SageMaker", "/aws/sagemaker/Endpoints"]}}},
    ]}
    trust = service_trust("sagemaker.amazonaws.com", arns.account)
    return RoleSpec(n["role"], "sagemaker", "sdlab SageMaker async endpoint", trust, policy,
                    path=names.role_path, tags=names.tags)


def async_inference_config(spec: AsyncEndpointSpec) -> dict[str, Any]:
    return {"OutputConfig": {"S3OutputPath": spec.output_path, "S3FailurePath": spec.failure_path,
                             "NotificationConfig": {"SuccessTopic": spec.success_topic_arn, "ErrorTopic": spec.error_topic_arn}},
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": spec.max_concurrent_per_instance}}


def deploy_with_sdk(spec: AsyncEndpointSpec, boto_session: Any) -> None:  # pragma: no cover - needs the SDK and AWS
    """Create the endpoint with the SageMaker Python SDK v2 (`pip install 'sdlab[aws]'`)."""
    try:
        from sagemaker.async_inference import AsyncInferenceConfig
        from sagemaker.model import Model
        from sagemaker.session import Session
    except ImportError as err:
        raise ImportError("the SageMaker SDK is not installed: pip install 'sdlab[aws]' (or use deploy_with_boto)") from err
    model = Model(image_uri=spec.image_uri, model_data=spec.model_data_url, role=spec.role_arn, name=spec.name,
                  sagemaker_session=Session(boto_session=boto_session))
    config = AsyncInferenceConfig(output_path=spec.output_path, failure_path=spec.failure_path,
                                  max_concurrent_invocations_per_instance=spec.max_concurrent_per_instance,
                                  notification_config={"SuccessTopic": spec.success_topic_arn,
                                                       "ErrorTopic": spec.error_topic_arn})
    model.deploy(initial_instance_count=1, instance_type=spec.instance_type, endpoint_name=spec.name,
                 async_inference_config=config, wait=False)


def deploy_with_boto(sm: Any, spec: AsyncEndpointSpec, tags: dict[str, str]) -> str:
    """Model → endpoint config (async) → endpoint, the calls the SDK makes; returns the endpoint ARN."""
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    sm.create_model(ModelName=spec.name, ExecutionRoleArn=spec.role_arn, Tags=tag_list,
                    PrimaryContainer={"Image": spec.image_uri, "ModelDataUrl": spec.model_data_url})
    sm.create_endpoint_config(EndpointConfigName=spec.name, Tags=tag_list, AsyncInferenceConfig=async_inference_config(spec),
                              ProductionVariants=[{"VariantName": VARIANT, "ModelName": spec.name, "InitialInstanceCount": 1,
                                                   "InstanceType": spec.instance_type}])
    return str(sm.create_endpoint(EndpointName=spec.name, EndpointConfigName=spec.name, Tags=tag_list)["EndpointArn"])


def ensure_autoscaling(aas: Any, cloudwatch: Any, spec: AsyncEndpointSpec) -> dict[str, str]:
    """Scale between 0 and `max_instances`: backlog target tracking + scale-out-from-zero step policy and its alarm."""
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=spec.resource_id, ScalableDimension=DIMENSION,
                                 MinCapacity=0, MaxCapacity=spec.max_instances)
    dims = [{"Name": "EndpointName", "Value": spec.name}]
    tracking = aas.put_scaling_policy(
        PolicyName=f"{spec.name}-backlog", ServiceNamespace="sagemaker", ResourceId=spec.resource_id,
        ScalableDimension=DIMENSION, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": spec.backlog_per_instance,
            "CustomizedMetricSpecification": {"MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
                                              "Dimensions": dims, "Statistic": "Average"},
            "ScaleInCooldown": spec.scale_in_cooldown_seconds, "ScaleOutCooldown": spec.scale_out_cooldown_seconds})
    step = aas.put_scaling_policy(
        PolicyName=f"{spec.name}-from-zero", ServiceNamespace="sagemaker", ResourceId=spec.resource_id,
        ScalableDimension=DIMENSION, PolicyType="StepScaling",
        StepScalingPolicyConfiguration={"AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                                        "Cooldown": spec.scale_out_cooldown_seconds,
                                        "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]})
    cloudwatch.put_metric_alarm(
        AlarmName=f"{spec.name}-backlog-without-capacity", MetricName="HasBacklogWithoutCapacity", Namespace="AWS/SageMaker",
        Dimensions=dims, Statistic="Average", Period=60, EvaluationPeriods=2, DatapointsToAlarm=2, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="missing", AlarmActions=[step["PolicyARN"]],
        AlarmDescription="no instance while requests wait: start one (the target tracking policy takes over from there)")
    return {"target_tracking": tracking["PolicyARN"], "step": step["PolicyARN"]}


def invoke(smr: Any, endpoint: str, input_location: str, *, ttl_seconds: int = 3600,
           timeout_seconds: int = 900) -> dict[str, str]:
    """Queue one request whose JSON body (an SD WebUI txt2img payload) is at `input_location` in S3."""
    out = smr.invoke_endpoint_async(EndpointName=endpoint, InputLocation=input_location, ContentType="application/json",
                                    RequestTTLSeconds=ttl_seconds, InvocationTimeoutSeconds=timeout_seconds)
    return {"id": out["InferenceId"], "output": out["OutputLocation"], "failure": out.get("FailureLocation", "")}


def delete_async_endpoint(sm: Any, aas: Any, cloudwatch: Any, spec: AsyncEndpointSpec) -> list[str]:
    """Scaling (target and policies), the alarm, endpoint, config, model; missing parts are skipped."""
    removed = []
    try:
        aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=spec.resource_id, ScalableDimension=DIMENSION)
        removed.append(f"scalable target {spec.resource_id}")
    except ClientError as err:
        if err.response["Error"]["Code"] != "ObjectNotFoundException" and "No scalable target" not in str(err):
            raise
    cloudwatch.delete_alarms(AlarmNames=[f"{spec.name}-backlog-without-capacity"])
    for kind, call, key in (("endpoint", sm.delete_endpoint, "EndpointName"),
                            ("endpoint config", sm.delete_endpoint_config, "EndpointConfigName"),
                            ("model", sm.delete_model, "ModelName")):
        try:
            call(**{key: spec.name})
            removed.append(f"SageMaker {kind} {spec.name}")
        except ClientError as err:
            if "Could not find" not in str(err) and err.response["Error"]["Code"] != "ValidationException":
                raise
    return removed


def describe(sm: Any, aas: Any, spec: AsyncEndpointSpec) -> dict[str, Any]:
    """The endpoint's status, async config and scaling policies (for the comparison table)."""
    endpoint = sm.describe_endpoint(EndpointName=spec.name)
    config = sm.describe_endpoint_config(EndpointConfigName=spec.name)
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=spec.resource_id)["ScalingPolicies"]
    return {"status": endpoint["EndpointStatus"], "async": json.loads(json.dumps(config.get("AsyncInferenceConfig", {}))),
            "policies": sorted(p["PolicyType"] for p in policies)}
