# The queue agent: the light core of sdlab (contracts, task store, AWS clients) + agent/, no torch.
# Build from the repository root:  docker buildx build --platform linux/amd64 -f infra/docker/agent.Dockerfile -t <ecr>/sdlab-agent:<tag> .
# (`sdlab aws deploy --push-images` runs or prints this with the stack's ECR repository.)
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdlab/ sdlab/
COPY agent/ agent/
# Only what the agent imports: drop the runtime (torch), k8s rendering, the local stack, deploy and benchmarks.
RUN rm -rf sdlab/runtime sdlab/k8s sdlab/local sdlab/deploy sdlab/bench agent/bench \
 && find . -name '__pycache__' -prune -exec rm -rf {} + \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels "boto3>=1.34" "pydantic>=2.6,<3" "httpx>=0.27" "pyyaml>=6" "pillow>=10" "prometheus-client>=0.20" "websockets>=13"

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 sdlab && useradd --system --uid 10001 --gid sdlab --home-dir /home/sdlab --create-home sdlab
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels /wheels/*.whl && rm -rf /wheels
USER 10001:10001
# /healthz, /readyz, /metrics (the pod's probes; SDLAB_AGENT_HEALTH_HOST=0.0.0.0 in the Deployment)
EXPOSE 8081
ENTRYPOINT ["sdlab-agent"]
