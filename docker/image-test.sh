#!/usr/bin/env bash
# `make image-test` (and CI): builds the CPU image with podman from Debian packages on a base made
# locally (docker/make-base.sh), then runs it as the k8s manifests do (uid 10001, read-only root,
# all capabilities dropped, no network but for `serve`, their volumes: /data, /pipeline_root,
# /serving_models, /etc/transfer-pipeline read-only, /tmp and /dev/shm scratch):
#   1. --help;
#   2. the local overlay's pipeline.yaml without weights: fails at once, naming both ways to supply
#      them;
#   3. the demo, its config from the image (configs/demo.yaml), outputs on the volumes;
#   4. `serve` on the demo's model with a published port, one gRPC Predict from the host, SIGTERM;
#   5. weights without egress, at run time: a VGG19 no-top file (tests/vgg19_notop_h5.py: the real
#      file's layout, random values) on a mounted volume, named by trainer.weights, runs the local
#      overlay's pipeline.yaml to the Evaluator's gate;
#   6. weights without egress, at build time: the same file in weights/ of the build context,
#      baked with its MD5; the trainer loads it from the path the shipped configs name.
# Each step prints its time. Needs root (podman as root, debootstrap); installs podman, runc and
# debootstrap with apt-get when missing, and skips with one line where it cannot.
#
#   IMAGE          tag to build (default transfer-pipeline:image-test)
#   HOST_PYTHON    python with this project installed, for the host's gRPC client (.venv/bin/python)
#   IMAGE_CACHE    where make-base.sh keeps the base tarball (/var/cache/transfer-pipeline)
#   KEEP=1         keep the work directory (volumes, logs) and the images
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-transfer-pipeline:image-test}
HOST_PYTHON=${HOST_PYTHON:-.venv/bin/python}
[[ "$HOST_PYTHON" != */* ]] || HOST_PYTHON=$(cd "$(dirname "$HOST_PYTHON")" && pwd)/$(basename "$HOST_PYTHON")
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
UID_GID=10001:10001   # the Dockerfile's APP_UID, the manifests' runAsUser/runAsGroup
WEIGHTS_FILE=vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5
START=$SECONDS
T0=$SECONDS

say() { printf 'image-test: %s\n' "$*"; }
# TensorFlow's C++ start-up lines (absl, oneDNN, "no CUDA drivers") and the pipeline's INFO log.
quiet() {
    grep -vE '^WARNING: All log messages before absl|^[IWE][0-9]{4} [0-9:.]+ +[0-9]+ \w+\.cc:[0-9]+\]|^[0-9:]{8} (INFO|WARNING) ' || true
}
step() {
    say "[$(( SECONDS - T0 ))s] $*"
    T0=$SECONDS
}

# --- 0. a container runtime ------------------------------------------------------------------
if ! command -v podman > /dev/null || ! command -v debootstrap > /dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
        say "SKIPPED: no podman/debootstrap, and no root apt-get to install them"
        exit 0
    fi
    apt-get update -qq > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap iptables \
        > /tmp/image-test-apt.log 2>&1 || { tail -20 /tmp/image-test-apt.log; exit 1; }
fi
if [ "$(id -u)" != 0 ]; then
    say "SKIPPED: needs root (podman as root, debootstrap)"
    exit 0
fi
step "podman $(podman --version | awk '{print $3}') ready"

WORK=$(mktemp -d /var/tmp/transfer-pipeline-image-test.XXXXXX)
SERVER=tp-image-test-serve-$$
PLACED=
cleanup() {
    podman rm -f "$SERVER" > /dev/null 2>&1 || true
    [ -z "$PLACED" ] || rm -f "$PLACED"
    if [ "${KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
        podman rmi -f "$IMAGE-weights" > /dev/null 2>&1 || true
        # dangling images older than a week: the deps stage of recent builds stays cached
        podman image prune -f --filter until=168h > /dev/null 2>&1 || true
    else
        say "kept $WORK"
    fi
}
trap cleanup EXIT

# --- the base and the image ------------------------------------------------------------------
docker/make-base.sh
step "base image"
podman build --format docker --build-arg EXTRAS= --build-arg BAKE_IMAGENET_WEIGHTS=0 \
    -t "$IMAGE" . > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
grep -E '^install_deps:|^bake_weights:|^\[[0-9]/[0-9]\] STEP' "$WORK/build.log" | cut -c1-150
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
step "built $IMAGE (CPU, no weights): $(( size / 1000000 )) MB"

# The manifests' pod: uid 10001, read-only root, nothing added, their scratch volumes and env.
mkdir -p "$WORK"/{data,pipeline_root,serving_models,pipeline_root2,serving_models2,weights}
chown -R "$UID_GID" "$WORK"
POD=(--user "$UID_GID" --read-only --read-only-tmpfs=false --cap-drop ALL
     --security-opt no-new-privileges --tmpfs /tmp:rw,size=4g,mode=1777 --shm-size 512m
     --memory 6g -e HOME=/tmp/home -e TMPDIR=/tmp -e MPLCONFIGDIR=/tmp/matplotlib)
RUN=(podman run --rm "${POD[@]}")
LOCAL_CONFIG=(-v "$PWD/k8s/overlays/local/pipeline.yaml:/etc/transfer-pipeline/pipeline.yaml:ro")

# --- 1. --help ----------------------------------------------------------------------------------
"${RUN[@]}" --network none "$IMAGE" --help > "$WORK/help.txt"
grep -q "^  demo " "$WORK/help.txt" && grep -q "^  serve " "$WORK/help.txt"
step "--help lists $(grep -c '^  [a-z]' "$WORK/help.txt") commands"

# --- 2. no weights: one line naming both ways ---------------------------------------------------
# Exactly the CronJob's command on the local overlay's ConfigMap: the runner's preflight fails it.
if "${RUN[@]}" --network none "${LOCAL_CONFIG[@]}" -v "$WORK/pipeline_root2:/pipeline_root" \
    -v "$WORK/serving_models2:/serving_models" "$IMAGE" \
    run --config /etc/transfer-pipeline/pipeline.yaml > "$WORK/noweights.txt" 2>&1; then
    say "FAILED: the local config ran without a weights file"; exit 1
fi
grep "does not exist; supply it at build time" "$WORK/noweights.txt" | grep -q "mounted volume" \
    || { cat "$WORK/noweights.txt"; exit 1; }
grep -o 'error: trainer.weights.*' "$WORK/noweights.txt"
step "without weights the local config fails at once, naming both ways to supply them"

# --- 3. the demo --------------------------------------------------------------------------------
# Its data is generated onto /data (the load-data Job's role); the rest of it on the volumes.
"${RUN[@]}" --network none -v "$WORK/data:/data" -v "$WORK/pipeline_root:/pipeline_root" \
    -v "$WORK/serving_models:/serving_models" "$IMAGE" \
    demo data_root=/data/shapes pipeline_root=/pipeline_root serving_dir=/serving_models \
    2>&1 | tee "$WORK/demo.log" | quiet || true
grep -q "^gRPC predictions from the local server" "$WORK/demo.log" \
    || { say "FAILED: the demo printed no predictions"; tail -30 "$WORK/demo.log"; exit 1; }
step "the demo in the image"

# --- 4. serve + Predict from the host through a published port --------------------------------
podman run -d --name "$SERVER" "${POD[@]}" -p 127.0.0.1::8500 \
    -v "$WORK/serving_models:/serving_models:ro" "$IMAGE" \
    serve --model-base-path /serving_models/shapes --model-name shapes > /dev/null
port=$(podman port "$SERVER" 8500/tcp | head -1 | awk -F: '{print $NF}')
images=()
for cls in circles stripes; do
    images+=("data/shapes/test/$cls/$(ls "$WORK/data/shapes/test/$cls" | head -1)")
done
for attempt in $(seq 60); do
    if (cd "$WORK" && "$HOST_PYTHON" -m pipeline_components.cli predict --model-name shapes \
        --server "127.0.0.1:$port" --timeout 10 "${images[@]}") > "$WORK/predict.txt" 2>&1; then
        break
    fi
    [ "$attempt" = 60 ] && { cat "$WORK/predict.txt"; podman logs "$SERVER" | tail; exit 1; }
    sleep 2
done
say "gRPC predictions from the image's server (127.0.0.1:$port -> container :8500):"
quiet < "$WORK/predict.txt"
podman stop --time 30 "$SERVER" > /dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$SERVER")
[ "$code" = 0 ] || { say "FAILED: serve exited $code on SIGTERM"; podman logs "$SERVER" | tail; exit 1; }
step "serve answered Predict through a published port and drained on SIGTERM (exit 0)"

# --- 5. weights at run time: a mounted file ----------------------------------------------------
"${RUN[@]}" --network none -v "$WORK/weights:/weights" -v "$PWD/tests/vgg19_notop_h5.py:/t.py:ro" \
    --entrypoint python3 "$IMAGE" /t.py "/weights/$WEIGHTS_FILE" 2>&1 | quiet
# The local overlay's pipeline.yaml as the ConfigMap mounts it, on the demo's images at 64x64
# (the shipped 224x224 takes ~12x the CPU), weights from the mounted volume.
"${RUN[@]}" --network none "${LOCAL_CONFIG[@]}" -v "$WORK/data:/data:ro" \
    -v "$WORK/weights:/weights:ro" -v "$WORK/pipeline_root2:/pipeline_root" \
    -v "$WORK/serving_models2:/serving_models" "$IMAGE" \
    run --config /etc/transfer-pipeline/pipeline.yaml data_root=/data/shapes \
    "trainer.image_size=[64,64]" "trainer.weights=/weights/$WEIGHTS_FILE" \
    2>&1 | tee "$WORK/local.log" | quiet || true
grep -qE '^Evaluator +completed' "$WORK/local.log" \
    || { say "FAILED: the local config did not reach the Evaluator"; tail -30 "$WORK/local.log"; exit 1; }
step "k8s/overlays/local/pipeline.yaml with weights from a mounted volume reached the gate"

# --- 6. weights at build time: the build context, MD5-checked ---------------------------------
if [ -e "weights/$WEIGHTS_FILE" ]; then
    say "weights/$WEIGHTS_FILE exists already: building with it as it is"
else
    cp "$WORK/weights/$WEIGHTS_FILE" "weights/$WEIGHTS_FILE"
    PLACED=weights/$WEIGHTS_FILE   # cleanup() removes it
fi
md5=$(md5sum "weights/$WEIGHTS_FILE" | cut -c1-32)
podman build --format docker --build-arg EXTRAS= --build-arg VGG19_NOTOP_MD5="$md5" \
    -t "$IMAGE-weights" . > "$WORK/build-weights.log" 2>&1 \
    || { tail -40 "$WORK/build-weights.log"; exit 1; }
# a cached build (the same file as a previous run) prints no bake_weights: line; say so
grep '^bake_weights:' "$WORK/build-weights.log" || say "bake_weights: layer reused from the build cache"
"${RUN[@]}" --network none "${LOCAL_CONFIG[@]}" --entrypoint python3 "$IMAGE-weights" -c "
from pipeline_components.core import registry
from pipeline_components.trainer import model
path = registry.load_config('/etc/transfer-pipeline/pipeline.yaml').sections['trainer'].weights
net = model.build_backbone('vgg19', path, (64, 64))
print('image-test: the trainer loaded', path, 'named by the local config:', len(net.weights), 'arrays')
" 2>&1 | grep '^image-test:'
step "weights baked from the build context (no download), MD5-checked, loaded by the trainer"

say "passed in $(( SECONDS - START ))s"
