# syntax=docker/dockerfile:1
# transfer-pipeline: the pipeline CLI (`transfer-pipeline <command>`) on the official TensorFlow
# GPU image, which already ships CUDA and tensorflow==2.21.0 (the pin in constraints.txt, so pip
# keeps it). Build from the repository root:
#   docker build -t REGISTRY/transfer-pipeline:0.1.0 .                         # weights baked in
#   docker build --build-arg BAKE_IMAGENET_WEIGHTS=0 -t ...                     # no weights
#   docker build --build-arg EXTRAS=gcp -t ...                                  # + Dataflow, gs://
# tests/test_deploy.py checks the base tag against the tensorflow pin, the non-root USER and the
# entrypoint; hadolint (.hadolint.yaml) checks the rest.
FROM tensorflow/tensorflow:2.21.0-gpu

# 1 (default): download the VGG19 ImageNet no-top weights into the image, so pods never do.
ARG BAKE_IMAGENET_WEIGHTS=1
# Optional extras from pyproject.toml: gcp (Dataflow runner, gs:// for Beam), aws.
ARG EXTRAS=""
# The image's system cuDNN (8.9) is older than the cuDNN 9 TF 2.21 is built against, and TF then
# registers no GPU; the pip cuDNN 9 (TF's own `and-cuda` lower bound) is put on the loader path.
ARG CUDNN_WHEEL_VERSION=9.3.0.75
ARG APP_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    KERAS_HOME=/opt/keras \
    MPLBACKEND=Agg \
    TF_CPP_MIN_LOG_LEVEL=2

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN groupadd --gid "${APP_UID}" pipeline \
 && useradd --uid "${APP_UID}" --gid "${APP_UID}" --create-home --shell /usr/sbin/nologin pipeline

WORKDIR /opt/transfer-pipeline
COPY pyproject.toml constraints.txt README.md ./
COPY pipeline_components/ pipeline_components/
COPY serving/ serving/

# The wheel stays in dist/ so a Dataflow job can stage it (--extra_package); it is installed with
# the exact pins of constraints.txt. The last line proves the console script works.
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir dist . \
 && wheel="$(ls dist/transfer_pipeline-*.whl)" \
 && python3 -m pip install --no-cache-dir -c constraints.txt \
      "${wheel}${EXTRAS:+[${EXTRAS}]}" "nvidia-cudnn-cu12==${CUDNN_WHEEL_VERSION}" \
 && python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0] + "/lib")' \
      > /etc/ld.so.conf.d/zz-nvidia-cudnn9.conf \
 && ldconfig \
 && rm -rf build ./*.egg-info \
 && transfer-pipeline --version

# Keras looks for the weights in $KERAS_HOME/models and falls back to /tmp when KERAS_HOME is not
# writable, so the cache belongs to the runtime user. On Kubernetes the root filesystem is
# read-only: the ConfigMap's pipeline.yaml names the weights file by path instead
# (trainer.weights), which reads it without the cache lookup.
RUN mkdir -p "${KERAS_HOME}" \
 && if [ "${BAKE_IMAGENET_WEIGHTS}" = "1" ]; then \
      python3 -c 'import keras; keras.applications.VGG19(weights="imagenet", include_top=False)' \
      && test -s "${KERAS_HOME}/models/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"; \
    fi \
 && chown -R pipeline:pipeline "${KERAS_HOME}"

LABEL org.opencontainers.image.title="transfer-pipeline" \
      org.opencontainers.image.description="TFX-style transfer-learning image classification pipeline" \
      org.opencontainers.image.licenses="Apache-2.0"

# Numeric, so the kubelet can verify runAsNonRoot; the manifests run as the same uid.
USER 10001:10001
WORKDIR /home/pipeline
ENTRYPOINT ["transfer-pipeline"]
CMD ["--help"]
