# syntax=docker/dockerfile:1
# transfer-pipeline: the pipeline CLI (`transfer-pipeline <command>`). Build from the repository root:
#   docker build -t REGISTRY/transfer-pipeline:0.1.0 .                        # GPU: TF + CUDA wheels
#   docker build --build-arg EXTRAS=gpu,gcp -t ...                            # + Dataflow, gs:// (GKE)
#   docker build --build-arg EXTRAS=gpu,aws -t ...                            # + s3:// for Beam (EKS)
#   docker build --build-arg EXTRAS= -t transfer-pipeline:0.1.0 .             # CPU only (kind)
# podman and buildah need `--format docker` (the OCI format has no SHELL):
#   podman build --format docker --build-arg EXTRAS= -t transfer-pipeline:0.1.0 .
# docs/container.md: the image's sizes, running it with a read-only root, `make image-test`.
#
# VGG19 ImageNet weights (trainer.weights in the shipped k8s configs names the baked file):
#   BAKE_IMAGENET_WEIGHTS=1 (default)  bake $KERAS_HOME/models/vgg19_..._notop.h5: copied from
#       weights/ in the build context when it is there (no egress needed), else downloaded;
#       either way checked against the MD5 Keras publishes for it (VGG19_NOTOP_MD5).
#   BAKE_IMAGENET_WEIGHTS=0            none in the image: supply them at run time instead, a file
#       on a mounted volume or a gs:// path, named by trainer.weights (docs/container.md).
#
# CUDA comes from pip, not from the base image: the `gpu` extra is tensorflow[and-cuda], whose
# nvidia-* wheels (cuBLAS, cuDNN, cuFFT, cuSOLVER, cuSPARSE, nvJitLink, NCCL, ...) are pinned in
# constraints.txt to the CUDA 12.5 / cuDNN 9.3 set TensorFlow 2.21 is built against. TensorFlow's
# libraries find them through their RUNPATH ($ORIGIN/../nvidia/*/lib), so no system CUDA is
# involved, and none can shadow them. The node provides only the driver (libcuda): the NVIDIA
# container toolkit puts it on the loader path (EKS, on-prem); GKE mounts it at
# /usr/local/nvidia/lib64, hence LD_LIBRARY_PATH below. Without `gpu` the image installs
# tensorflow-cpu, the same TensorFlow release without the CUDA kernels.
#
# Stages: `deps` installs the runtime dependencies into a venv and prunes what the runtime never
# loads (docker/install_deps.py); `weights` fetches or copies the VGG19 file; `wheel` builds the
# project's wheel; the runtime stage copies the three in, most stable first, so editing the
# sources rebuilds only the wheel and the last layers. No compiler, test, bench or KFP SDK
# package and no pip cache reach it. tests/test_deploy.py checks the stages, the pins, the user and
# the entrypoint; hadolint (.hadolint.yaml) checks the rest.
FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    KERAS_HOME=/opt/keras

SHELL ["/bin/bash", "-o", "pipefail", "-c"]


FROM base AS deps
# Extras from pyproject.toml: gpu (TensorFlow's CUDA wheels), gcp (Dataflow runner, gs:// for
# Beam), aws (s3:// for Beam). Comma-separated; empty for a CPU-only image.
ARG EXTRAS=gpu
# binutils for `strip` (install_deps.py), in this stage only. Unpinned: the base's Debian release
# decides it, and nothing of it reaches the image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml constraints.txt docker/install_deps.py ./
RUN python3 -m venv "${VIRTUAL_ENV}" \
 && python3 install_deps.py --venv "${VIRTUAL_ENV}" --extras "${EXTRAS}"


FROM base AS weights
ARG BAKE_IMAGENET_WEIGHTS=1
ARG VGG19_NOTOP_MD5=253f8cb515780f3b799900260a226db6
ARG VGG19_NOTOP_URL=https://storage.googleapis.com/tensorflow/keras-applications/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
COPY docker/bake_weights.py /tmp/
COPY weights/ /tmp/weights/
RUN python3 /tmp/bake_weights.py --bake "${BAKE_IMAGENET_WEIGHTS}" --source /tmp/weights \
        --dest /keras/models --md5 "${VGG19_NOTOP_MD5}" --url "${VGG19_NOTOP_URL}"


FROM base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline_components/ pipeline_components/
COPY serving/ serving/
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .


FROM base AS runtime
ARG EXTRAS=gpu
# The runtime user. Numeric in USER so the kubelet can verify runAsNonRoot; the manifests run as
# the same uid (runAsUser: 10001) and EFS access points write as it (overlays/eks).
ARG APP_UID=10001

# `transfer-pipeline serve` listens on all interfaces in the image (a published port or a Service
# reaches it); outside the image its default stays 127.0.0.1. The InfraValidator's own server
# always binds 127.0.0.1.
ENV MPLBACKEND=Agg \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TRANSFER_PIPELINE_SERVE_HOST=0.0.0.0 \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN groupadd --gid "${APP_UID}" pipeline \
 && useradd --uid "${APP_UID}" --gid "${APP_UID}" --create-home --shell /usr/sbin/nologin pipeline

COPY --from=deps /opt/venv/ /opt/venv/
# Keras looks for the weights in $KERAS_HOME/models and falls back to /tmp when KERAS_HOME is not
# writable, so the cache belongs to the runtime user. On Kubernetes the root filesystem is
# read-only: the ConfigMap's pipeline.yaml names the weights file by path instead
# (trainer.weights), which reads it without the cache lookup.
COPY --from=weights --chown=${APP_UID}:${APP_UID} /keras/ ${KERAS_HOME}/

# The project. The wheel stays in dist/ so a Dataflow job can stage it (--extra_package); its
# dependencies are already installed (--no-deps), and install_deps.py's `pip check` proves they
# satisfy it. The last line proves the console script works.
WORKDIR /opt/transfer-pipeline
COPY docker/install_deps.py docker/
COPY --from=wheel /dist/ dist/
RUN python3 -m pip install --no-cache-dir --no-deps dist/transfer_pipeline-*.whl \
 && python3 docker/install_deps.py --check --venv "${VIRTUAL_ENV}" --extras "${EXTRAS}" \
 && transfer-pipeline --version

# The README's demo runs in the image: `docker run IMAGE demo` (configs/demo.yaml, relative to
# the working directory), `docker run IMAGE run --config configs/pipeline.yaml ...`.
COPY configs/ /home/pipeline/configs/

LABEL org.opencontainers.image.title="transfer-pipeline" \
      org.opencontainers.image.description="TFX-style transfer-learning image classification pipeline" \
      org.opencontainers.image.licenses="Apache-2.0"

USER ${APP_UID}:${APP_UID}
WORKDIR /home/pipeline
ENTRYPOINT ["transfer-pipeline"]
CMD ["--help"]
