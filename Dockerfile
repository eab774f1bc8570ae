# syntax=docker/dockerfile:1
# transfer-pipeline: the pipeline CLI (`transfer-pipeline <command>`). Build from the repository root:
#   docker build -t REGISTRY/transfer-pipeline:0.1.0 .                        # GPU: TF + CUDA wheels
#   docker build --build-arg EXTRAS=gpu,gcp -t ...                            # + Dataflow, gs:// (GKE)
#   docker build --build-arg EXTRAS=gpu,aws -t ...                            # + s3:// for Beam (EKS)
#   docker build --build-arg EXTRAS= -t transfer-pipeline:0.1.0 .             # CPU only (kind)
#   docker build --build-arg BAKE_IMAGENET_WEIGHTS=0 -t ...                   # no weights
#
# CUDA comes from pip, not from the base image: the `gpu` extra is tensorflow[and-cuda], whose
# nvidia-* wheels (cuBLAS, cuDNN, cuFFT, cuSOLVER, cuSPARSE, nvJitLink, NCCL, ...) are pinned in
# constraints.txt to the CUDA 12.5 / cuDNN 9.3 set TensorFlow 2.21 is built against. TensorFlow's
# libraries find them through their RUNPATH ($ORIGIN/../nvidia/*/lib), so no system CUDA is
# involved, and none can shadow them. The node provides only the driver (libcuda): the NVIDIA
# container toolkit puts it on the loader path (EKS, on-prem); GKE mounts it at
# /usr/local/nvidia/lib64, hence LD_LIBRARY_PATH below.
#
# Layers, most stable first, so editing the sources rebuilds only the last two: the runtime user;
# the dependencies (pyproject.toml + constraints.txt); the VGG19 weights; the project itself.
# tests/test_deploy.py checks this order, the pins, the user and the entrypoint; hadolint
# (.hadolint.yaml) checks the rest.
FROM python:3.11-slim-bookworm

# Extras from pyproject.toml: gpu (TensorFlow's CUDA wheels), gcp (Dataflow runner, gs:// for
# Beam), aws (s3:// for Beam). Comma-separated; empty for a CPU-only image.
ARG EXTRAS=gpu
# 1 (default): download the VGG19 ImageNet no-top weights into the image, so pods never do.
ARG BAKE_IMAGENET_WEIGHTS=1
# The runtime user. Numeric in USER so the kubelet can verify runAsNonRoot; the manifests run as
# the same uid (runAsUser: 10001) and EFS access points write as it (overlays/eks).
ARG APP_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    KERAS_HOME=/opt/keras \
    MPLBACKEND=Agg \
    TF_CPP_MIN_LOG_LEVEL=2 \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN groupadd --gid "${APP_UID}" pipeline \
 && useradd --uid "${APP_UID}" --gid "${APP_UID}" --create-home --shell /usr/sbin/nologin pipeline

WORKDIR /opt/transfer-pipeline

# Dependencies only: the requirement list of pyproject.toml (plus the chosen extras), installed
# with the exact pins of constraints.txt. No project sources yet, so this layer survives edits.
COPY pyproject.toml constraints.txt ./
RUN python3 -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; extras = [e for e in sys.argv[1].split(",") if e]; print("\n".join(p["dependencies"] + [r for e in extras for r in p["optional-dependencies"][e]]))' "${EXTRAS}" > /tmp/requirements.txt \
 && python3 -m pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Keras looks for the weights in $KERAS_HOME/models and falls back to /tmp when KERAS_HOME is not
# writable, so the cache belongs to the runtime user. On Kubernetes the root filesystem is
# read-only: the ConfigMap's pipeline.yaml names the weights file by path instead
# (trainer.weights), which reads it without the cache lookup.
RUN mkdir -p "${KERAS_HOME}" \
 && if [ "${BAKE_IMAGENET_WEIGHTS}" = "1" ]; then \
      python3 -c 'import keras; keras.applications.VGG19(weights="imagenet", include_top=False)' \
      && test -s "${KERAS_HOME}/models/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"; \
    fi \
 && chown -R "${APP_UID}:${APP_UID}" "${KERAS_HOME}"

# The project. The wheel stays in dist/ so a Dataflow job can stage it (--extra_package); its
# dependencies are already installed (--no-deps), and `pip check` proves they satisfy it. The
# last line proves the console script works.
COPY README.md ./
COPY pipeline_components/ pipeline_components/
COPY serving/ serving/
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir dist . \
 && python3 -m pip install --no-cache-dir --no-deps dist/transfer_pipeline-*.whl \
 && python3 -m pip check \
 && rm -rf build ./*.egg-info \
 && transfer-pipeline --version

LABEL org.opencontainers.image.title="transfer-pipeline" \
      org.opencontainers.image.description="TFX-style transfer-learning image classification pipeline" \
      org.opencontainers.image.licenses="Apache-2.0"

USER ${APP_UID}:${APP_UID}
WORKDIR /home/pipeline
ENTRYPOINT ["transfer-pipeline"]
CMD ["--help"]
