# The project's diffusers runtime (SD WebUI API on :7860): CUDA, torch within pyproject's range, non-root.
# Build from the repository root:  docker buildx build --platform linux/amd64 -f infra/docker/runtime.Dockerfile -t <ecr>/sdlab-runtime:<tag> .
# Models are not baked in: the Mountpoint for S3 volume presents s3://<bucket>/<model_prefix>/ at /models (read-only).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE} AS common
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
# torch first, from the CUDA index, within the range pyproject's `runtime` extra allows; its layer is cached apart
RUN pip install --index-url ${TORCH_INDEX} "torch>=2.3,<3"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdlab/ sdlab/
COPY agent/ agent/
RUN pip install ".[runtime]" && rm -rf /src
RUN groupadd --system --gid 10001 sdlab && useradd --system --uid 10001 --gid sdlab --home-dir /home/sdlab --create-home sdlab
USER 10001:10001
WORKDIR /home/sdlab

# SageMaker (async inference, for comparison): `--target sagemaker`; SageMaker runs the image with `serve` and
# sends /ping and /invocations to :8080 (sdlab.deploy.sagemaker_serve starts the runtime on loopback).
FROM common AS sagemaker
EXPOSE 8080
ENTRYPOINT ["python", "-m", "sdlab.deploy.sagemaker_serve"]

# EKS (the default target): the Deployment passes --models-dir /models --model <name> --host 0.0.0.0 --port 7860
# (sdlab.k8s.context.RUNTIME_SPECS).
FROM common AS runtime
EXPOSE 7860
ENTRYPOINT ["python", "-m", "sdlab.runtime"]
