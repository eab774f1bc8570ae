"""Dockerfile and k8s/: what renders, validates, and fits together.

Every kustomization (base, the overlays, the load-data Job, each overlay with the optional
Prometheus Operator component) is rendered with `kubectl kustomize` and each object is validated
strictly against Kubernetes 1.33 and the newest schema kubernetes-validate ships. The cross-checks
are the misconfigurations a schema cannot see: TF Serving must read the directory the Pusher
writes, on storage both can reach (one node, a shared file system, or Cloud Storage with the
credentials to use it); the CronJob must run a real subcommand on the config it mounts; files
named in flags must be mounted, ports must line up, images must be pinned, containers hardened,
GPUs only where asked; TF Serving's memory limit must hold what its batching lets the model
hold in flight; no probe may kill TF Serving while it waits for its first model version.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import kubernetes_validate
import numpy as np
import pytest
import tensorflow as tf
import yaml
from google.protobuf import json_format, text_format
from kubernetes_validate.utils import latest_version
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from tensorflow_serving.config import model_server_config_pb2

from pipeline_components import cli
from pipeline_components.core import artifacts, config
from pipeline_components.core import beam as core_beam
from pipeline_components.core.errors import PipelineError
from pipeline_components.core.registry import components, config_from_dict
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.tools import demo as demo_lib
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer import plan as trainer_plan
from serving import server as server_lib
from serving.batching import BatchingParameters, parse_batching_parameters
from serving.services import ServerLimits

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
TARGETS = ("base", "overlays/local", "overlays/gpu", "overlays/gke", "overlays/eks")
LOAD_DATA = "jobs/load-data"
TRAIN_MULTIWORKER = "jobs/train-multiworker"  # tests/test_multi_worker_deploy.py: the rest
TUNE_MULTIWORKER = "jobs/tune-multiworker"  # tests/test_tuner.py: the rest
JOBS = (LOAD_DATA, TRAIN_MULTIWORKER, TUNE_MULTIWORKER)
PROMETHEUS_OPERATOR = "components/prometheus-operator"
# The oldest Kubernetes the manifests support (GKE and EKS still run it) and the newest schema.
K8S_VERSIONS = ("1.33.0", latest_version())
# Custom resources kubernetes-validate has no schema for, checked by the cross-checks instead.
CUSTOM_KINDS = {"PodMonitor", "PrometheusRule"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPT = "transfer-pipeline"
VGG19_NOTOP = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"  # keras.applications.vgg19
MiB = 2**20
# Where the pipeline pod and TF Serving pods can land on different nodes, a volume they share must
# be ReadWriteMany from a named StorageClass; base and local are one node (ReadWriteOnce).
MULTI_NODE = {"overlays/gpu", "overlays/gke", "overlays/eks"}
GPU_WORKLOADS = {
    "base": {"transfer-pipeline"},
    "overlays/local": set(),
    "overlays/gpu": {"transfer-pipeline", "tf-serving"},
    "overlays/gke": {"transfer-pipeline", "tf-serving"},
    "overlays/eks": {"transfer-pipeline", "tf-serving"},
}
PVC_COUNT = {
    "base": 3,
    "overlays/local": 3,
    "overlays/gpu": 3,
    "overlays/gke": 0,
    "overlays/eks": 2,
}
CLUSTER_SCOPED = {"Namespace", "StorageClass"}
# ServiceAccount annotations that give a pod cloud credentials for a scheme.
CREDENTIALS = {
    "gs": "iam.gke.io/gcp-service-account",  # GKE Workload Identity
    "s3": "eks.amazonaws.com/role-arn",  # EKS IAM roles for service accounts
}
# TF Serving memory: what a full batch in flight holds, estimated from the model's layers.
#  - per image: its 224x224x3 float32 input, plus the activations alive at the worst point of the
#    forward pass: for a chain of layers, one layer's input and output together (the executor
#    frees a tensor once its consumer has run), times ACTIVATION_HEADROOM for what the CPU kernels
#    add (oneDNN layout copies, scratch). Measured on this machine, VGG19 at 224x224 on CPU,
#    batches of 8 and 32: 28.8-29.5 MiB per image with its input, 1.18-1.20x the layer-pair
#    estimate of 24.5 MiB (test_activation_estimate_covers_a_measured_batch measures it again).
#  - per server: the weights twice (TF Serving loads a new version before it unloads the old one)
#    and the server itself (RUNTIME).
ACTIVATION_HEADROOM = 1.5
RUNTIME = 512 * MiB


def tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the test extras (make venv)")
    return path


# --- rendering and lookup --------------------------------------------------------------------


def kustomize(path: Path) -> str:
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {path}:\n{out.stderr}"
    return out.stdout


@functools.cache
def rendered_text(target: str) -> str:
    return kustomize(K8S / target)


def render(target: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(rendered_text(target)) if d]


def with_component(target: str, component: str, tmp_path: Path) -> list[dict]:
    """`target` built with `component` added, as a user's kustomization.yaml would."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / target, tmp_path)],
                "components": [os.path.relpath(K8S / component, tmp_path)],
            }
        )
    )
    return [d for d in yaml.safe_load_all(kustomize(tmp_path)) if d]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [
        d
        for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"].startswith(name))
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict]) -> dict[str, dict]:
    """Workload name -> pod template, for Deployments, CronJobs and Jobs."""
    specs = {}
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            specs[d["metadata"]["name"]] = d["spec"]["template"]
        elif d["kind"] == "CronJob":
            specs[d["metadata"]["name"]] = d["spec"]["jobTemplate"]["spec"]["template"]
    return specs


def containers(pod_template: dict) -> list[dict]:
    spec = pod_template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def cronjob(docs):
    return one(docs, "CronJob", "transfer-pipeline")


def cron_pod(docs) -> dict:
    return cronjob(docs)["spec"]["jobTemplate"]["spec"]["template"]


def serving_pod(docs) -> dict:
    return one(docs, "Deployment", "tf-serving")["spec"]["template"]


def configmap_data(docs, name: str) -> dict[str, str]:
    return one(docs, "ConfigMap", f"{name}-")["data"]


def pipeline_config(docs) -> config.PipelineConfig:
    raw = yaml.safe_load(configmap_data(docs, "pipeline-config")["pipeline.yaml"])
    return config_from_dict(raw, source="pipeline-config ConfigMap")


def service_account(docs, pod: dict) -> dict:
    return one(docs, "ServiceAccount", pod["spec"]["serviceAccountName"])


def argv(container: dict) -> list[str]:
    return list(container.get("command", [])) + list(container.get("args", []))


def flags(container: dict) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in container.get("args", []) if a.startswith("--"))


def volume_at(pod: dict, container: dict, path: str) -> tuple[dict, dict] | None:
    """(volumeMount, volume) whose mount holds `path` in `container`, the deepest one."""
    mounts = [
        m
        for m in container.get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    if not mounts:
        return None
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def configmap_file(docs, pod: dict, container: dict, path: str) -> str | None:
    """The text of the ConfigMap key mounted at `path`, or None if nothing is mounted there."""
    found = volume_at(pod, container, path)
    if found is None or "configMap" not in found[1]:
        return None
    mount, volume = found
    key = posixpath.relpath(path, mount["mountPath"])
    (cm,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    ]
    return cm["data"].get(key)


def claims(pod: dict) -> dict[str, dict]:
    """Volume name -> its persistentVolumeClaim source."""
    return {
        v["name"]: v["persistentVolumeClaim"]
        for v in pod["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }


def cpu(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def memory(q) -> float:
    units = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    m = re.fullmatch(r"([0-9.]+)(|k|M|G|Ki|Mi|Gi)", str(q))
    assert m, f"memory quantity {q!r} not understood"
    return float(m[1]) * units[m[2]]


def beam_flag(beam_args: list[str], name: str) -> str | None:
    for a in beam_args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def scheme(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else ""


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def tensorflow_pin() -> str:
    return constraint_pins()["tensorflow"]


def selector_matches(selector: dict, labels: dict) -> bool:
    """metav1.LabelSelector semantics: matchLabels and every matchExpression must hold."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def admitted_ports(policy: dict, namespace: dict, pod_labels: dict) -> set[int]:
    """Ports of the selected pods that a NetworkPolicy's ingress rules open to a pod with
    `pod_labels` in the namespace whose labels are `namespace`."""
    own_namespace = policy["metadata"]["namespace"]
    ports = set()
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
            if ns_sel is None:
                in_ns = namespace["kubernetes.io/metadata.name"] == own_namespace
            else:
                in_ns = selector_matches(ns_sel, namespace)
            if in_ns and (pod_sel is None or selector_matches(pod_sel, pod_labels)):
                ports |= {p["port"] for p in rule["ports"]}
    return ports


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, buf = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        keyword, _, rest = (buf + s).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        buf = ""
    return instructions


def stages() -> dict[str, list[tuple[str, str]]]:
    """The build stages by name, in order, each starting with its FROM; the last is the image."""
    found: dict[str, list[tuple[str, str]]] = {}
    for keyword, rest in dockerfile():
        if keyword == "FROM":
            words = rest.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"FROM {rest}: name every stage"
            found[words[2]] = []
        assert found, f"{keyword} before the first FROM"
        found[list(found)[-1]].append((keyword, rest))
    return found


def image_stage() -> list[tuple[str, str]]:
    return list(stages().values())[-1]


def stage_chain(name: str) -> list[str]:
    """The stage and the stages it is built FROM, base first."""
    chain, all_stages = [name], stages()
    while (parent := all_stages[chain[0]][0][1].split()[0]) in all_stages:
        chain.insert(0, parent)
    return chain


def dockerfile_env(stage: str | None = None) -> dict[str, str]:
    """ARG defaults and ENV values a stage (default: the image) sees, its parents' included
    (an ENV wins over an ARG of the same name)."""
    args, env = {}, {}
    for name in stage_chain(stage or list(stages())[-1]):
        for keyword, rest in stages()[name]:
            if keyword in ("ENV", "ARG"):
                target = env if keyword == "ENV" else args
                target.update(item.partition("=")[::2] for item in shlex.split(rest))
    return args | env


def expand(text: str, stage: str | None = None) -> str:
    """${NAME} and $NAME replaced by the stage's ARG defaults / ENV values."""
    env = dockerfile_env(stage)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], m[0]), text)


def copies(stage: str) -> list[tuple[dict[str, str], list[str], str]]:
    """The stage's COPY instructions as (flags, sources, destination)."""
    found = []
    for keyword, rest in stages()[stage]:
        if keyword == "COPY":
            words = shlex.split(rest)
            opts = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            found.append((opts, paths[:-1], paths[-1]))
    return found


def image_uid() -> int:
    users = [rest for keyword, rest in image_stage() if keyword == "USER"]
    assert users, "the Dockerfile never leaves root"
    uid = expand(users[-1]).split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: numeric, so the kubelet can verify runAsNonRoot"
    return int(uid)


def image_workdir() -> str:
    return [rest for keyword, rest in image_stage() if keyword == "WORKDIR"][-1]


def baked_weights_path() -> str:
    return posixpath.join(dockerfile_env()["KERAS_HOME"], "models", VGG19_NOTOP)


def docker_script(name: str):
    """docker/<name>.py as a module (docker/ is no package: the Dockerfile runs these files)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "docker" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    excluded = False
    parts = path.split("/")
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip("/"))
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, token if token.startswith("[") else re.escape(token)
            )
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def build_context() -> set[str]:
    """The files of a clean clone that the .dockerignore lets into the build context."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    return {p for p in listed.split("\0") if p and not dockerignore_excludes(p)}


def image_files(context: set[str]) -> dict[str, str]:
    """Path in the image -> context file, for what the image stage COPYs from the context."""
    found = {}
    for opts, sources, dest in copies(list(stages())[-1]):
        if "from" in opts:
            continue
        for src in sources:
            src = src.rstrip("/")
            for path in context:
                if path == src or path.startswith(src + "/"):
                    rel = posixpath.relpath(path, src) if path != src else posixpath.basename(src)
                    found[posixpath.join(expand(dest), rel)] = path
    return found


def test_hadolint_passes_with_explained_ignores():
    out = subprocess.run(
        [tool("hadolint"), "--config", ".hadolint.yaml", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for rule in yaml.safe_load("\n".join(lines)).get("ignored") or []:
        (i,) = [i for i, x in enumerate(lines) if rule in x and not x.lstrip().startswith("#")]
        explained = "#" in lines[i] or (i > 0 and lines[i - 1].lstrip().startswith("#"))
        assert explained, f".hadolint.yaml ignores {rule} without a comment saying why"
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            assert lines[i - 1].startswith("#") and not lines[i - 1].startswith("# hadolint")


def test_base_image_is_a_pinned_python_the_project_supports():
    """One image from outside (the first stage's); every other FROM is a stage of this file."""
    froms = [rest.split()[0] for keyword, rest in dockerfile() if keyword == "FROM"]
    base, *internal = froms
    assert set(internal) <= set(stages()), f"FROM {internal}: not a stage of this Dockerfile"
    repo, _, tag = base.partition(":")
    assert repo == "python", "CUDA comes from pip wheels, not from a CUDA base image"
    minor = re.match(r"(3\.\d+)-slim-\w+$", tag)
    assert minor, f"FROM {base}: a Python minor version and a Debian release, both pinned"
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(f"{minor[1]}.0")
    # CI builds it with the locally made base (docker/make-base.sh), tagged the same.
    make_base = (ROOT / "docker" / "make-base.sh").read_text()
    assert f"TAG=${{1:-docker.io/library/{base}}}" in make_base
    assert f"python{minor[1]}" in make_base or "python3 " in make_base


def test_gpu_image_installs_tensorflows_own_cuda_set_at_pinned_versions():
    """The `gpu` extra is tensorflow[and-cuda]; every nvidia-* wheel it asks for is pinned
    exactly in constraints.txt, inside the range TensorFlow's own metadata declares."""
    extras = dockerfile_env("deps")["EXTRAS"]
    assert "gpu" in extras.split(","), "the default image is the GPU image"
    assert dockerfile_env()["EXTRAS"] == extras, "the image's pip check sees the same extras"
    (gpu,) = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    gpu = Requirement(gpu)
    assert gpu.name == "tensorflow" and gpu.extras == {"and-cuda"}
    assert gpu.specifier.contains(tensorflow_pin())
    assert importlib.metadata.version("tensorflow") == tensorflow_pin()
    cuda = [
        Requirement(r)
        for r in importlib.metadata.requires("tensorflow")
        if re.search(r"""extra\s*==\s*['"]and-cuda['"]""", r)
    ]
    names = {r.name for r in cuda}
    assert {"nvidia-cublas-cu12", "nvidia-cudnn-cu12", "nvidia-cufft-cu12"} <= names
    assert {"nvidia-cusolver-cu12", "nvidia-cusparse-cu12", "nvidia-nvjitlink-cu12"} <= names
    pins = constraint_pins()
    for r in cuda:
        assert r.name in pins, f"{r.name} (tensorflow[and-cuda]: {r.specifier}) is not pinned"
        assert r.specifier.contains(pins[r.name]), f"{r.name}=={pins[r.name]} outside {r}"
    stray = {n for n in pins if n.startswith("nvidia-")} - names
    assert not stray, f"nvidia pins TensorFlow does not ask for: {stray}"


def test_image_runs_as_non_root_the_user_the_manifests_run_as():
    uid = image_uid()
    assert uid != 0
    (user,) = [rest for keyword, rest in image_stage() if keyword == "USER"]
    assert "APP_UID" in user, "USER follows ARG APP_UID, so --build-arg APP_UID changes both"
    useradd = [r for k, r in image_stage() if k == "RUN" and "useradd" in r]
    assert useradd and "APP_UID" in useradd[0] and dockerfile_env()["APP_UID"] == str(uid)
    for target in TARGETS:
        for name, pod in workloads(render(target)).items():
            sc = pod["spec"]["securityContext"]
            assert sc["runAsUser"] == sc["runAsGroup"] == uid, f"k8s/{target}: {name}"


def test_entrypoint_is_the_console_script():
    (entrypoint,) = [rest for keyword, rest in image_stage() if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == [SCRIPT]
    assert PYPROJECT["project"]["scripts"][SCRIPT] == "pipeline_components.cli:main"
    assert dockerfile_env()["VIRTUAL_ENV"] + "/bin" == dockerfile_env()["PATH"].split(":")[0]


def test_stages_keep_dependencies_and_weights_apart_from_the_sources():
    """Editing a source file must not reinstall TensorFlow and CUDA or fetch the weights: the
    sources enter only the wheel stage, and the image copies dependencies and weights first."""
    context_copies = {
        name: {s.rstrip("/") for opts, srcs, _ in copies(name) if "from" not in opts for s in srcs}
        for name in stages()
    }
    assert context_copies["deps"] == {"pyproject.toml", "constraints.txt", "docker/install_deps.py"}
    assert context_copies["weights"] == {"docker/bake_weights.py", "weights"}
    sources = {"pipeline_components", "serving"}
    assert [n for n, srcs in context_copies.items() if srcs & sources] == ["wheel"]
    image = image_stage()
    order = [opts.get("from") for opts, _, _ in copies(list(stages())[-1]) if "from" in opts]
    assert order == ["deps", "weights", "wheel"], order
    (install,) = [i for i, (k, r) in enumerate(image) if k == "RUN" and "dist/" in r]
    assert "--no-deps" in image[install][1] and "install_deps.py --check" in image[install][1]
    for k, r in dockerfile():
        if k == "RUN" and ("pip install" in r or "pip wheel" in r):
            assert "--no-cache-dir" in r
    assert "--no-cache-dir" in (ROOT / "docker" / "install_deps.py").read_text()


def test_dependency_stage_installs_exactly_what_pyproject_lists():
    """install_deps.py's requirements: the project's dependencies plus the chosen extras, each
    name pinned in constraints.txt; without `gpu`, tensorflow-cpu at tensorflow's own pin."""
    install_deps = docker_script("install_deps")
    project = PYPROJECT["project"]
    pins = constraint_pins()
    for extras in (dockerfile_env("deps")["EXTRAS"].split(","), []):
        wanted = [Requirement(r) for r in install_deps.requirements(PYPROJECT, extras)]
        assert len(wanted) == len(project["dependencies"]) + sum(
            len(project["optional-dependencies"][e]) for e in extras
        )
        assert all(re.sub(r"[-_.]+", "-", r.name).lower() in pins for r in wanted)
        names = {r.name: r for r in wanted}
        if "gpu" in extras:
            assert "and-cuda" in names["tensorflow"].extras and "tensorflow-cpu" not in names
        else:
            assert "tensorflow" not in names and names["tensorflow-cpu"].specifier.contains(
                pins["tensorflow-cpu"]
            )
            assert pins["tensorflow-cpu"] == tensorflow_pin()
        assert "tensorflow-serving-api" in names
        for extra in ("test", "bench", "kfp", "dev"):
            assert extra not in extras


def test_dependency_stage_tolerates_only_the_gaps_it_makes():
    install_deps = docker_script("install_deps")
    removed = install_deps.pruned([])
    assert set(removed) == {"libclang", "pyarrow"}
    assert "pyarrow" not in install_deps.pruned(["gpu", "gcp"])  # BigQuery clients use it
    allowed = functools.partial(install_deps.allowed_check_line, removed=removed)
    line = "{} 1.0 requires {}, which is not installed."
    assert allowed(line.format("apache-beam", "pyarrow"), cpu=False)
    assert allowed(line.format("tensorflow-cpu", "libclang"), cpu=True)
    assert allowed(line.format("tensorflow-serving-api", "tensorflow"), cpu=True)
    assert allowed(line.format("transfer-pipeline", "tensorflow"), cpu=True)
    assert not allowed(line.format("transfer-pipeline", "tensorflow"), cpu=False)
    assert not allowed(line.format("apache-beam", "fastavro"), cpu=True)
    assert not allowed("keras 3.15.1 has requirement numpy<2, but you have numpy 2.4.6.", cpu=True)


def test_pruned_distributions_are_never_imported_by_the_project():
    """What install_deps.py removes from the image must be no import of the wheel's code."""
    install_deps = docker_script("install_deps")
    pruned = set(install_deps.PRUNED)
    forbidden = {
        top
        for top, dists in importlib.metadata.packages_distributions().items()
        if {re.sub(r"[-_.]+", "-", d).lower() for d in dists} & pruned
    }
    assert {"pyarrow", "clang"} <= forbidden
    for path in [*ROOT.glob("pipeline_components/**/*.py"), *ROOT.glob("serving/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            hit = {n.split(".")[0] for n in names} & forbidden
            assert not hit, f"{path.relative_to(ROOT)} imports {hit}, which the image removes"


def test_dependency_stage_prunes_headers_static_libraries_and_test_suites(tmp_path):
    install_deps = docker_script("install_deps")
    site = tmp_path / "site-packages"
    keep = ["tensorflow/libtensorflow_cc.so.2", "nvidia/cublas/lib/libcublas.so.12",
            "numpy/testing/__init__.py", "numpy/_core/multiarray.py"]  # fmt: skip
    drop = ["tensorflow/include/tensorflow/core/framework/op.h", "nvidia/cublas/include/cublas.h",
            "nvidia/cuda_runtime/lib/libcudart_static.a", "numpy/_core/tests/test_api.py",
            "numpy/tests/test_public_api.py", "matplotlib/tests/test_axes.py"]  # fmt: skip
    for path in keep + drop:
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text("x")
    install_deps.prune(str(site))
    assert [p for p in keep if not (site / p).exists()] == []
    assert [p for p in drop if (site / p).exists()] == []


def test_vgg19_weights_are_baked_where_the_configs_read_them():
    env = dockerfile_env("weights")
    assert env["BAKE_IMAGENET_WEIGHTS"] == "1", "weights baked by default"
    (bake,) = [r for k, r in stages()["weights"] if k == "RUN" and "bake_weights.py" in r]
    assert "--dest /keras/models" in bake and '--bake "${BAKE_IMAGENET_WEIGHTS}"' in bake
    assert '--md5 "${VGG19_NOTOP_MD5}"' in bake and "--source /tmp/weights" in bake
    bake_weights = docker_script("bake_weights")
    assert bake_weights.FILE == VGG19_NOTOP
    assert env["VGG19_NOTOP_URL"].endswith("/" + VGG19_NOTOP)
    # The MD5 Keras itself checks its download against (keras/src/applications/vgg19.py).
    keras_source = Path(importlib.util.find_spec("keras.src.applications.vgg19").origin)
    notop = re.search(rf'"{VGG19_NOTOP}",\s*\w+,\s*cache_subdir="models",\s*file_hash="(\w+)"',
                      keras_source.read_text())  # fmt: skip
    assert notop and env["VGG19_NOTOP_MD5"] == bake_weights.KERAS_MD5 == notop[1]
    # Keras uses its cache only when KERAS_HOME is writable by the runtime user.
    ((opts, sources, dest),) = [c for c in copies("runtime") if c[0].get("from") == "weights"]
    assert sources == ["/keras/"] and expand(dest).rstrip("/") == dockerfile_env()["KERAS_HOME"]
    assert expand(opts["chown"]) == f"{image_uid()}:{image_uid()}"
    assert "!weights/" + VGG19_NOTOP in (ROOT / ".dockerignore").read_text().splitlines()
    assert "/weights/*.h5" in (ROOT / ".gitignore").read_text().splitlines()


def bake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "docker" / "bake_weights.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_weights_baked_from_the_build_context_are_md5_checked(tmp_path):
    source, dest = tmp_path / "weights", tmp_path / "keras" / "models"
    source.mkdir()
    (source / VGG19_NOTOP).write_bytes(b"\x89HDF\r\n" + os.urandom(4096))
    md5 = hashlib.md5((source / VGG19_NOTOP).read_bytes()).hexdigest()
    common = ["--source", str(source), "--dest", str(dest), "--url", "file:///no/such/file.h5"]
    out = bake("--bake", "1", "--md5", md5, *common)
    assert out.returncode == 0, out.stderr
    assert (dest / VGG19_NOTOP).read_bytes() == (source / VGG19_NOTOP).read_bytes()
    assert os.listdir(dest) == [VGG19_NOTOP]
    (dest / VGG19_NOTOP).unlink()
    out = bake("--bake", "1", *common)  # Keras's MD5: not this file
    err = out.stderr.strip()
    assert out.returncode == 1 and "\n" not in err and os.listdir(dest) == []
    assert (
        f"has MD5 {md5}, not 253f8cb515780f3b799900260a226db6" in err and "VGG19_NOTOP_MD5" in err
    )
    (source / VGG19_NOTOP).unlink()  # no file and no egress: one line naming both ways
    out = bake("--bake", "1", *common)
    err = out.stderr.strip()
    assert out.returncode == 1 and "\n" not in err and os.listdir(dest) == []
    assert "cannot download file:///no/such/file.h5" in err
    assert "weights/ of the build context" in err and "BAKE_IMAGENET_WEIGHTS=0" in err
    assert "mounted volume" in err and "gs://" in err
    out = bake("--bake", "0", *common)
    assert out.returncode == 0 and os.listdir(dest) == []


def test_a_weights_file_in_keras_applications_layout_loads(tmp_path):
    """The stand-in for the ImageNet file (tests/vgg19_notop_h5.py, which image-test.sh mounts
    into the image) is read by the legacy loader that reads the real file, value for value."""
    import h5py
    import vgg19_notop_h5

    path = str(tmp_path / VGG19_NOTOP)
    vgg19_notop_h5.write(path)
    with h5py.File(path) as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        assert "block5_conv4" in names and "block1_conv1" in names
        kernel = np.asarray(f["block5_conv4"]["block5_conv4"]["kernel"])
    backbone = model_lib.build_backbone("vgg19", path, (32, 32))
    assert len(backbone.weights) == 32
    np.testing.assert_array_equal(backbone.get_layer("block5_conv4").weights[0].numpy(), kernel)


def test_missing_weights_error_names_both_ways_to_supply_them():
    """An image built with BAKE_IMAGENET_WEIGHTS=0 fails the shipped configs at once, saying
    how to supply the file at build time and at run time."""
    for target in TARGETS:
        trainer = pipeline_config(render(target)).sections["trainer"]
        assert trainer.weights == baked_weights_path() and not os.path.exists(trainer.weights)
        weights = trainer.weights
        with pytest.raises(PipelineError) as e:
            trainer_plan.check_config(dataclasses.replace(trainer, require_gpu=False))
        message = str(e.value)
        assert message.startswith(f"trainer.weights: weights file {weights} does not exist")
        assert "\n" not in message and "BAKE_IMAGENET_WEIGHTS=1" in message
        assert "weights/ in the build context" in message
        assert "mounted volume" in message and "gs://" in message


def test_serve_listens_on_all_interfaces_in_the_image_only(monkeypatch):
    env = dockerfile_env()
    assert env[server_lib.HOST_ENV] == "0.0.0.0"
    monkeypatch.delenv(server_lib.HOST_ENV, raising=False)
    assert server_lib.build_parser().parse_args([]).host == "127.0.0.1"
    monkeypatch.setenv(server_lib.HOST_ENV, env[server_lib.HOST_ENV])
    assert server_lib.build_parser().parse_args([]).host == "0.0.0.0"
    assert server_lib.build_parser().parse_args(["--host", "::1"]).host == "::1"
    # The InfraValidator's own server never follows it.
    source = (ROOT / "pipeline_components/infra_validator/executor.py").read_text()
    assert '"--host", "127.0.0.1"' in source


def test_dockerignore_keeps_out_data_venvs_and_artifacts_but_not_the_sources():
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "data/cats_dogs/train/cats/1.jpg",
        "pipeline_root/runs/1/run.json",
        "serving_models/cats_dogs/1/saved_model.pb",
        "demo_output/plots/loss.png",
        "benchmarks/out/results.json",
        "pipeline_components/__pycache__/cli.cpython-311.pyc",
        "transfer_pipeline.egg-info/PKG-INFO",
        "k8s/base/kustomization.yaml",
        "tests/test_deploy.py",
        "docker/image-test.sh",
        "weights/other.h5",
    ):
        assert dockerignore_excludes(path), f"{path} would be sent to the Docker daemon"
    context = build_context()
    for keyword, rest in dockerfile():
        if keyword == "COPY" and "--from" not in rest:
            for src in shlex.split(rest)[:-1]:
                src = src.rstrip("/")
                assert (ROOT / src).exists(), f"COPY {src}: no such file"
                assert any(p == src or p.startswith(src + "/") for p in context), (
                    f"COPY {src}: nothing of it is in the build context (.dockerignore)"
                )
    assert {"pipeline_components/cli.py", "serving/config/models.config"} <= context


def test_the_image_holds_what_the_demo_reads():
    """`docker run IMAGE demo` reads its config relative to the working directory: the image
    must hold configs/demo.yaml there, so .dockerignore must let it in and the image stage copy
    it. The shipped configs come along for `run --config configs/pipeline.yaml`."""
    files = image_files(build_context())
    workdir = image_workdir()
    wanted = {posixpath.join(workdir, demo_lib.DEFAULT_CONFIG)}
    wanted |= {posixpath.join(workdir, "configs", p.name) for p in (ROOT / "configs").glob("*")}
    missing = sorted(wanted - set(files))
    assert not missing, f"the image lacks {missing}: dockerignored, or not copied to {workdir}"
    assert "demo" in cli.commands(), "`docker run IMAGE demo` (the entrypoint is the CLI)"
    # Its outputs can move onto the manifests' volumes on a read-only root.
    args = demo_lib.build_parser().parse_args(["pipeline_root=/pipeline_root"])
    assert args.config == demo_lib.DEFAULT_CONFIG and args.overrides == [
        "pipeline_root=/pipeline_root"
    ]


def test_image_test_runs_the_image_as_the_manifests_do():
    """docker/image-test.sh (make image-test, CI) runs the CronJob's user, read-only root,
    dropped capabilities, scratch volumes and config mount, and the CronJob's own command."""
    script = (ROOT / "docker" / "image-test.sh").read_text()
    pod = cron_pod(render("overlays/local"))
    container = pod["spec"]["containers"][0]
    assert f"UID_GID={pod['spec']['securityContext']['runAsUser']}:{image_uid()}" in script
    assert container["securityContext"]["readOnlyRootFilesystem"] and "--read-only" in script
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "--cap-drop ALL" in script
    for e in container["env"]:
        if e["name"] in ("HOME", "TMPDIR", "MPLCONFIGDIR"):
            assert f"-e {e['name']}={e['value']}" in script
    for mount in container["volumeMounts"]:
        assert (
            f":{mount['mountPath']}" in script
            or f"--tmpfs {mount['mountPath']}" in script
            or (mount["mountPath"] == "/dev/shm" and "--shm-size" in script)
        ), mount["mountPath"]
    config_mount = "k8s/overlays/local/pipeline.yaml:/etc/transfer-pipeline/pipeline.yaml:ro"
    assert config_mount in script and " ".join(container["args"]) in " ".join(script.split())
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^image-test:.*\n\t.*docker/image-test\.sh", makefile, re.M)
    assert "make image-test" in (ROOT / ".ci" / "run").read_text()


# --- manifests: rendering and schemas ----------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_kustomization_builds_the_whole_deployment(target):
    docs = render(target)
    kinds = sorted(d["kind"] for d in docs)
    expected = ["Namespace", "ServiceAccount", "ServiceAccount", "ConfigMap", "ConfigMap"]
    expected += ["CronJob", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"]
    expected += ["PersistentVolumeClaim"] * PVC_COUNT[target]
    expected += ["StorageClass"] if target == "overlays/eks" else []
    assert kinds == sorted(expected)
    ns = one(docs, "Namespace")["metadata"]["name"]
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"].get("namespace") == ns, f"{d['kind']}/{d['metadata']['name']}"


def validation_errors(docs: list[dict], version: str) -> list[str]:
    errors = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            if doc["kind"] not in CUSTOM_KINDS:
                errors.append(f"{where}: {e.message}")
    return errors


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", (*TARGETS, *JOBS))
def test_every_object_validates_strictly(target, version):
    errors = validation_errors(render(target), version)
    assert not errors, f"k8s/{target} against Kubernetes {version}:\n" + "\n".join(errors)


def test_validation_at_1_33_catches_what_newer_schemas_accept():
    """Kubernetes <= 1.34 requires `status` in a podFailurePolicy onPodConditions entry
    (kubernetes#131512): a CronJob without it validates at the newest schema only."""
    doc = copy.deepcopy(cronjob(render("base")))
    rules = doc["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    conditions = [c for r in rules for c in r.get("onPodConditions", [])]
    assert conditions and all(c["status"] == "True" for c in conditions)
    for c in conditions:
        del c["status"]
    assert validation_errors([doc], "1.33.0"), "1.33 accepted a condition without status"
    assert not validation_errors([doc], latest_version())


def test_strict_validation_catches_a_misspelt_field():
    doc = copy.deepcopy(cronjob(render("base")))
    doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    for version in K8S_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(doc, version, strict=True)


# --- the pipeline's paths and the storage behind them -------------------------------------------


def beam_jobs(cfg: config.PipelineConfig) -> dict[str, list[str]]:
    """Every Beam component's options as it runs them: its beam_args, else beam.args."""
    return {
        c.name: list(core_beam.setup(c.section_of(cfg).beam_args, cfg).args)
        for c in components()
        if c.beam
    }


def beam_problems(cfg: config.PipelineConfig, beam_args: list[str], cpus: float) -> list[str]:
    problems = []
    runner = beam_flag(beam_args, "runner") or "DirectRunner"
    if runner == "DataflowRunner":
        # Dataflow workers read data_root and write under pipeline_root: no pod volumes there.
        for key in ("data_root", "pipeline_root"):
            if scheme(getattr(cfg, key)) != "gs":
                problems.append(f"{key}={getattr(cfg, key)} is not on gs://")
        for flag in ("project", "region"):
            if not beam_flag(beam_args, flag):
                problems.append(f"DataflowRunner without --{flag}")
        if scheme(beam_flag(beam_args, "temp_location") or "") != "gs":
            problems.append("DataflowRunner needs --temp_location=gs://...")
    else:
        assert runner == "DirectRunner", f"no check written for {runner}"
        workers = beam_flag(beam_args, "direct_num_workers")
        if workers is not None and not 0 < int(workers) <= cpus:
            problems.append(f"--direct_num_workers={workers} with {cpus:g} CPUs")
    return problems


def pipeline_config_problems(cfg: config.PipelineConfig, docs: list[dict]) -> list[str]:
    """Where the pipeline reads and writes must exist in the pod that runs it, with the
    credentials a remote file system needs and a client that can use it."""
    pod = cron_pod(docs)
    container = pod["spec"]["containers"][0]
    problems = []
    limit = cpu(container["resources"]["limits"]["cpu"])
    for job, beam_args in beam_jobs(cfg).items():
        problems += [f"{job}: {p}" for p in beam_problems(cfg, beam_args, limit)]
    beam_args = beam_jobs(cfg)["ExampleGen"]  # it lists and reads data_root
    annotations = service_account(docs, pod)["metadata"].get("annotations", {})
    tf_schemes = set(tf.io.gfile.get_registered_schemes())
    for key, writes in (("data_root", False), ("pipeline_root", True), ("serving_dir", True)):
        path = getattr(cfg, key)
        if scheme(path) == "":
            found = volume_at(pod, container, path)
            if found is None or "persistentVolumeClaim" not in found[1]:
                problems.append(f"{key}={path} is not on a PersistentVolumeClaim mount")
            elif writes and found[0].get("readOnly"):
                problems.append(f"{key}={path} is mounted read-only")
            continue
        if scheme(path) not in CREDENTIALS:
            problems.append(f"{key}={path}: no credentials story for {scheme(path)}://")
        elif CREDENTIALS[scheme(path)] not in annotations:
            problems.append(f"{key}={path} without {CREDENTIALS[scheme(path)]} on the account")
        # Beam reads data_root; TensorFlow reads and writes the other two (TFRecords,
        # checkpoints, SavedModels) and TF Serving reads serving_dir.
        if key != "data_root" and scheme(path) not in tf_schemes:
            problems.append(f"{key}={path}: TensorFlow has no {scheme(path)}:// file system")
    if scheme(cfg.data_root) == "s3" and not beam_flag(beam_args, "s3_region_name"):
        problems.append("s3:// data without --s3_region_name")
    weights = cfg.sections["trainer"].weights
    read_only_root = container["securityContext"].get("readOnlyRootFilesystem")
    if weights == "imagenet" and read_only_root:
        problems.append("weights: imagenet downloads at run time on a read-only root filesystem")
    elif weights not in ("imagenet", "none") and weights != baked_weights_path():
        # Supplied at run time (docs/container.md): a file on a volume, or a path TF can read.
        where = f"trainer.weights={weights}"
        if scheme(weights) == "":
            if volume_at(pod, container, weights) is None:
                problems.append(f"{where}: not the file the image bakes, and on no volume")
        elif scheme(weights) not in tf_schemes:
            problems.append(f"{where}: TensorFlow has no {scheme(weights)}:// file system")
        elif CREDENTIALS.get(scheme(weights)) not in annotations:
            problems.append(f"{where} without credentials for {scheme(weights)}://")
    if cfg.sections["trainer"].backbone != "vgg19":
        problems.append("the image bakes VGG19 weights only")
    gpu = "nvidia.com/gpu" in container["resources"]["limits"]
    if cfg.sections["trainer"].require_gpu != gpu:
        problems.append(
            f"trainer.require_gpu={cfg.sections['trainer'].require_gpu} with a GPU limit: {gpu}"
        )
    return problems


@pytest.mark.parametrize("target", TARGETS)
def test_pipeline_config_is_valid_and_its_paths_are_reachable(target):
    docs = render(target)
    cfg = pipeline_config(docs)  # from_dict raises on an unknown key or a bad value
    assert pipeline_config_problems(cfg, docs) == []


def test_path_checks_catch_what_the_platforms_cannot_do():
    gke, eks = render("overlays/gke"), render("overlays/eks")
    cfg = pipeline_config(eks)
    # TF 2.21 has no s3:// (tf.io.gfile raises UnimplementedError): only Beam's data may be there.
    with pytest.raises(tf.errors.UnimplementedError):
        tf.io.gfile.exists(cfg.data_root)
    s3_root = dataclasses.replace(cfg, pipeline_root="s3://my-bucket/pipeline_root")
    assert any("no s3:// file system" in p for p in pipeline_config_problems(s3_root, eks))
    # gs:// without Workload Identity on the pipeline's account.
    for sa in (d for d in gke if d["kind"] == "ServiceAccount"):
        del sa["metadata"]["annotations"]
    assert any("iam.gke.io" in p for p in pipeline_config_problems(pipeline_config(gke), gke))
    # Weights supplied at run time: on a volume or Cloud Storage with credentials, not elsewhere.
    gke, local = render("overlays/gke"), render("overlays/local")
    for docs, weights, problem in (
        (gke, "gs://my-bucket/vgg19_notop.h5", None),
        (local, "/data/weights/vgg19_notop.h5", None),  # on the pipeline-data claim
        (local, "/opt/weights/vgg19_notop.h5", "on no volume"),
        (eks, "s3://my-bucket/vgg19_notop.h5", "no s3:// file system"),
        (eks, "gs://my-bucket/vgg19_notop.h5", "without credentials for gs://"),
    ):
        base = pipeline_config(docs)
        trainer = dataclasses.replace(base.sections["trainer"], weights=weights)
        found = pipeline_config_problems(
            dataclasses.replace(base, sections={**base.sections, "trainer": trainer}), docs
        )
        found = [p for p in found if p.startswith("trainer.weights=")]
        assert found == [] if problem is None else len(found) == 1 and problem in found[0], found
    # A GPU CronJob that would train on the CPU without a word.
    sections = {
        **cfg.sections,
        "trainer": dataclasses.replace(cfg.sections["trainer"], require_gpu=False),
    }
    quiet = dataclasses.replace(cfg, sections=sections)
    assert any("require_gpu" in p for p in pipeline_config_problems(quiet, eks))


def test_dataflow_example_config_is_coherent():
    """overlays/gke/pipeline.dataflow.yaml, the Dataflow variant, is not rendered by default."""
    raw = yaml.safe_load((K8S / "overlays/gke/pipeline.dataflow.yaml").read_text())
    cfg = config_from_dict(raw, source="pipeline.dataflow.yaml")
    docs = render("overlays/gke")
    assert beam_flag(cfg.sections["example_gen"].beam_args, "runner") == "DataflowRunner"
    assert pipeline_config_problems(cfg, docs) == []
    assert cfg.serving_dir == pipeline_config(docs).serving_dir, "TF Serving reads this one"
    # Workers install the wheel the image holds in <WORKDIR>/dist, copied from the wheel stage.
    image = image_stage()
    (i,) = [i for i, (k, r) in enumerate(image) if k == "COPY" and "--from=wheel" in r]
    ((_, (built,), dest),) = [c for c in copies("runtime") if c[0].get("from") == "wheel"]
    (build,) = [r for k, r in stages()["wheel"] if k == "RUN" and "pip wheel" in r]
    assert f"--wheel-dir {built.rstrip('/')} " in build
    workdir = [r for k, r in image[:i] if k == "WORKDIR"][-1]
    name = PYPROJECT["project"]["name"].replace("-", "_")
    whl = f"{name}-{PYPROJECT['project']['version']}-py3-none-any.whl"
    wheel = posixpath.join(workdir, dest, whl)
    assert beam_flag(cfg.sections["example_gen"].beam_args, "extra_package") == wheel


@pytest.mark.parametrize("target", TARGETS)
def test_tf_serving_reads_the_directory_the_pusher_writes(target):
    docs = render(target)
    cfg = pipeline_config(docs)
    pusher_dir = posixpath.join(cfg.serving_dir, cfg.model_name)
    cron = cron_pod(docs)
    (cron_c,) = cron["spec"]["containers"]
    serving = serving_pod(docs)
    (tfs,) = serving["spec"]["containers"]
    # TF Serving reads the models.config the Pusher maintains; the ConfigMap's is its seed.
    assert flags(tfs)["model_config_file"] == artifacts.models_config_path(cfg.serving_dir)
    models = text_format.Parse(
        configmap_data(docs, "tf-serving-config")["models.config"],
        model_server_config_pb2.ModelServerConfig(),
    )
    (model,) = models.model_config_list.config
    assert model.name == cfg.model_name
    assert model.base_path == pusher_dir, "models.config base_path != <serving_dir>/<model_name>"
    assert model.model_version_policy.WhichOneof("policy_choice") == "all", "as the Pusher"

    if scheme(pusher_dir) == "gs":
        # Both read the bucket with their own Google identity; nothing is mounted there.
        assert volume_at(serving, tfs, "/serving_models") is None
        for pod in (cron, serving):
            sa = service_account(docs, pod)["metadata"]
            assert sa["annotations"][CREDENTIALS["gs"]].endswith(".iam.gserviceaccount.com")
        identities = {
            service_account(docs, p)["metadata"]["annotations"][CREDENTIALS["gs"]]
            for p in (cron, serving)
        }
        assert len(identities) == 2, "TF Serving only reads: its own, read-only identity"
        return
    assert scheme(pusher_dir) == "", f"TF Serving cannot read {pusher_dir}"
    cron_mount, cron_vol = volume_at(cron, cron_c, pusher_dir)
    assert not cron_mount.get("readOnly"), "the Pusher must be able to write"
    serving_mount, serving_vol = volume_at(serving, tfs, model.base_path)
    assert serving_mount.get("readOnly"), "TF Serving mounts the models read-only"
    claim = serving_vol["persistentVolumeClaim"]["claimName"]
    assert claim == cron_vol["persistentVolumeClaim"]["claimName"], "different volumes"
    assert posixpath.relpath(model.base_path, serving_mount["mountPath"]) == posixpath.relpath(
        pusher_dir, cron_mount["mountPath"]
    )
    assert volume_at(serving, tfs, flags(tfs)["model_config_file"])[1] == serving_vol


def seed_container(docs) -> dict | None:
    pod = serving_pod(docs)
    found = [c for c in pod["spec"].get("initContainers", []) if c["name"] == "seed-models-config"]
    return found[0] if found else None


@pytest.mark.parametrize("target", TARGETS)
def test_models_config_is_seeded_where_tf_serving_reads_it(target, tmp_path):
    """Before the first push, the init container copies the ConfigMap's models.config to where
    TF Serving reads it; it never replaces the file the Pusher wrote (run here for real)."""
    docs = render(target)
    serving = serving_pod(docs)
    (tfs,) = serving["spec"]["containers"]
    path = flags(tfs)["model_config_file"]
    seed = seed_container(docs)
    if scheme(path) == "gs":
        assert seed is None, "no volume to seed on Cloud Storage (docs/kubernetes.md)"
        assert "gcloud storage cp --no-clobber" in (ROOT / "docs" / "kubernetes.md").read_text()
        return
    assert seed is not None
    mount, volume = volume_at(serving, seed, path)
    assert not mount.get("readOnly") and volume == volume_at(serving, tfs, path)[1]
    config_mount = volume_at(serving, seed, "/etc/tf-serving/models.config")
    assert config_mount[1]["configMap"]["name"].startswith("tf-serving-config-")
    script = seed["args"][0]
    assert seed["command"] == ["/bin/sh", "-c"] and path in script
    # Run it with the mounts moved under tmp_path.
    volume_dir, config_dir = tmp_path / "volume", tmp_path / "config"
    volume_dir.mkdir()
    config_dir.mkdir()
    seed_text = configmap_data(docs, "tf-serving-config")["models.config"]
    (config_dir / "models.config").write_text(seed_text)
    local = script.replace(mount["mountPath"], str(volume_dir)).replace(
        "/etc/tf-serving", str(config_dir)
    )
    env = {**os.environ, "HOSTNAME": "pod-1"}
    run = subprocess.run(["sh", "-c", local], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    target_file = volume_dir / posixpath.relpath(path, mount["mountPath"])
    assert target_file.read_text() == seed_text
    assert sorted(os.listdir(volume_dir)) == [target_file.name], "no temporary left"
    target_file.write_text("# written by the Pusher\n")
    run = subprocess.run(["sh", "-c", local], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and target_file.read_text() == "# written by the Pusher\n"


@pytest.mark.parametrize("target", (*TARGETS, *JOBS))
def test_no_claim_is_attached_read_only(target):
    """A read-only attachment cannot format a new disk: the pod would wait until its deadline.
    Containers that only read mount read-only; the claims themselves are attached read-write."""
    for name, pod in workloads(render(target)).items():
        for volume, source in claims(pod).items():
            assert not source.get("readOnly"), f"{name}: volume {volume} attached read-only"


@pytest.mark.parametrize("target", TARGETS)
def test_claims_provision_where_their_pods_run(target):
    docs = render(target)
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    used = {}  # claim -> workloads that mount it
    for name, pod in workloads(docs).items():
        for source in claims(pod).values():
            used.setdefault(source["claimName"], set()).add(name)
    assert set(pvcs) == set(used), f"claims {set(pvcs)} vs mounted {set(used)}"
    classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StorageClass"}
    for claim, pvc in pvcs.items():
        modes, cls = pvc["spec"]["accessModes"], pvc["spec"].get("storageClassName")
        if target in MULTI_NODE and len(used[claim]) > 1:
            # The default class of a managed cluster is block storage: Pending as ReadWriteMany.
            assert modes == ["ReadWriteMany"] and cls, f"{claim}: shared across nodes"
        elif target not in MULTI_NODE:
            assert modes == ["ReadWriteOnce"] and cls is None, f"{claim}: the default class"
        if cls in classes:
            parameters = classes[cls]["parameters"]
            assert classes[cls]["provisioner"] == "efs.csi.aws.com"
            assert parameters["provisioningMode"] == "efs-ap"
            # fsGroup does not reach EFS volumes; the access point writes as the pods' user.
            for name in used[claim]:
                sc = workloads(docs)[name]["spec"]["securityContext"]
                assert (parameters["uid"], parameters["gid"]) == (
                    str(sc["runAsUser"]),
                    str(sc["runAsGroup"]),
                ), f"{claim}: access point identity != {name}'s user"


# --- the CronJob -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_cronjob_runs_a_real_subcommand_on_the_mounted_config(target):
    docs = render(target)
    pod = cron_pod(docs)
    (container,) = pod["spec"]["containers"]
    args = argv(container)
    assert args[0] == SCRIPT and SCRIPT in PYPROJECT["project"]["scripts"]
    assert args[1] in cli.commands() and args[1] == "run", args
    config_path = args[args.index("--config") + 1]
    mounted = configmap_file(docs, pod, container, config_path)
    assert mounted == configmap_data(docs, "pipeline-config")["pipeline.yaml"], (
        f"--config {config_path} is not the pipeline-config ConfigMap's pipeline.yaml"
    )


@pytest.mark.parametrize("target", TARGETS)
def test_cronjob_schedule_and_failure_policy(target):
    cj = cronjob(render(target))["spec"]
    assert len(cj["schedule"].split()) == 5
    assert cj["concurrencyPolicy"] == "Forbid"
    assert cj["startingDeadlineSeconds"] > 0
    assert cj["successfulJobsHistoryLimit"] >= 1 and cj["failedJobsHistoryLimit"] >= 1
    job = cj["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 0 and job["activeDeadlineSeconds"] > 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    names = {c["name"] for c in pod["containers"]}
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] in names
        for condition in rule.get("onPodConditions", []):
            assert condition.get("status") == "True", "required up to Kubernetes 1.34"


@pytest.mark.parametrize("target", (*TARGETS, *JOBS))
def test_writable_locations_are_scratch_volumes(target):
    """A read-only root filesystem: HOME, TMPDIR and caches must point at an emptyDir."""
    for name, pod in workloads(render(target)).items():
        for c in containers(pod):
            found = volume_at(pod, c, "/tmp")
            assert found and "emptyDir" in found[1], f"{name}/{c['name']}: /tmp is not scratch"
            for var in c.get("env", []):
                if var["name"] in ("HOME", "TMPDIR", "MPLCONFIGDIR", "CUDA_CACHE_PATH"):
                    found = volume_at(pod, c, var["value"])
                    assert found and "emptyDir" in found[1], f"{name}: {var} is not writable"


# --- TF Serving --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_tf_serving_flags_name_mounted_files_and_declared_ports(target):
    docs = render(target)
    pod = serving_pod(docs)
    (tfs,) = pod["spec"]["containers"]
    f = flags(tfs)
    assert argv(tfs)[0] == "tensorflow_model_server"
    for flag in ("batching_parameters_file", "monitoring_config_file"):
        assert configmap_file(docs, pod, tfs, f[flag]) is not None, f"--{flag}={f[flag]}"
    # models.config: the Pusher's, re-read periodically; labels at a restart need the flag
    assert f["model_config_file"] == artifacts.models_config_path(pipeline_config(docs).serving_dir)
    assert int(f["model_config_file_poll_wait_seconds"]) > 0
    assert f["allow_version_labels_for_unavailable_models"] == "true"
    assert f["enable_batching"] == "true"
    ports = {p["name"]: p["containerPort"] for p in tfs["ports"]}
    assert ports == {"grpc": int(f["port"]), "http": int(f["rest_api_port"])}
    threads = int(f["tensorflow_intra_op_parallelism"])
    assert threads == cpu(tfs["resources"]["limits"]["cpu"]), "thread pools sized to the limit"
    assert int(f["file_system_poll_wait_seconds"]) > 0


# What a hostile client meets on TF Serving in the cluster: the connection bounds of
# `transfer-pipeline serve` (whose limits the hostile-request tests exercise). TF Serving sets its
# own message size limit, so the message lengths (and so_reuseport) are not among them.
NOT_CHANNEL_ARGUMENTS = {
    "grpc.max_receive_message_length",
    "grpc.max_send_message_length",
    "grpc.so_reuseport",
}


@pytest.mark.parametrize("target", TARGETS)
def test_tf_serving_bounds_connections_like_the_local_server(target):
    (tfs,) = serving_pod(render(target))["spec"]["containers"]
    given = dict(pair.split("=", 1) for pair in flags(tfs)["grpc_channel_arguments"].split(","))
    expected = {
        key: str(value)
        for key, value in ServerLimits().grpc_options()
        if key not in NOT_CHANNEL_ARGUMENTS
    }
    assert given == expected, f"k8s/{target}: --grpc_channel_arguments"


@functools.cache
def model_footprint(backbone: str, image_size: tuple[int, int]) -> tuple[int, int]:
    """(bytes of the activations alive at the worst point of one image's forward pass, bytes
    of the weights), from the backbone's layers as model.py builds it."""
    net = model_lib.build_backbone(backbone, "none", image_size)
    sizes = [math.prod(layer.output.shape[1:]) for layer in net.layers]
    assert [type(layer).__name__ for layer in net.layers][0] == "InputLayer"
    pairs = zip(sizes, sizes[1:], strict=False)
    return 4 * max(a + b for a, b in pairs), 4 * net.count_params()


def serving_memory_needed(cfg: config.PipelineConfig, params: BatchingParameters) -> float:
    """Bytes TF Serving needs with every batch thread running a full batch (see ACTIVATION_
    HEADROOM and RUNTIME for what is measured and what is assumed)."""
    size = model_lib.image_size_for(
        cfg.sections["trainer"].backbone, cfg.sections["trainer"].image_size
    )
    activations, weights = model_footprint(cfg.sections["trainer"].backbone, tuple(size))
    per_image = size[0] * size[1] * 3 * 4 + ACTIVATION_HEADROOM * activations
    # policy `all`: every kept version is loaded, plus the new one before retention drops one
    copies = cfg.sections["pusher"].keep_versions + 1
    return RUNTIME + copies * weights + params.num_batch_threads * params.max_batch_size * per_image


def batching(docs) -> BatchingParameters:
    pod = serving_pod(docs)
    (tfs,) = pod["spec"]["containers"]
    path = flags(tfs)["batching_parameters_file"]
    return parse_batching_parameters(configmap_file(docs, pod, tfs, path), path)


@pytest.mark.parametrize("target", TARGETS)
def test_serving_memory_limit_holds_a_full_batch_in_flight_on_every_thread(target):
    docs = render(target)
    (tfs,) = serving_pod(docs)["spec"]["containers"]
    params = batching(docs)
    need = serving_memory_needed(pipeline_config(docs), params)
    limit = memory(tfs["resources"]["limits"]["memory"])
    assert limit >= need, (
        f"k8s/{target}: tf-serving limit {limit / MiB:.0f} MiB < {need / MiB:.0f} MiB for"
        f" {params.num_batch_threads} x {params.max_batch_size} images in flight"
    )


def test_memory_check_rejects_the_batching_that_was_shipped_before():
    """4 batch threads x 32 images at 224x224 (the earlier batching_parameters.txt) need more
    than the base's 4 Gi and the local overlay's 2 Gi; VGG19 holds ~1 GiB per batch."""
    cfg = pipeline_config(render("base"))
    old = BatchingParameters(max_batch_size=32, num_batch_threads=4)
    need = serving_memory_needed(cfg, old)
    assert need > memory("4Gi") and need > memory("2Gi")
    per_batch = need - serving_memory_needed(cfg, dataclasses.replace(old, num_batch_threads=3))
    assert 0.8 * 2**30 < per_batch < 1.6 * 2**30, f"{per_batch / MiB:.0f} MiB per batch"


@pytest.mark.slow
def test_activation_estimate_covers_a_measured_batch():
    """Runs VGG19 (random weights) on a batch of 8 224x224 images in a fresh process and
    compares its peak resident-memory growth (the kernel's high-water mark, reset just before)
    with the per-image estimate the limits are sized by."""
    batch = 8
    code = textwrap.dedent(
        f"""
        import re, tensorflow as tf, keras
        def status(field):
            with open("/proc/self/status") as f:
                return int(re.search(rf"^{{field}}:\\s+(\\d+) kB", f.read(), re.M)[1]) * 1024
        net = keras.applications.VGG19(weights=None, include_top=False, input_shape=(224, 224, 3))
        run = tf.function(lambda x: net(x, training=False)).get_concrete_function(
            tf.TensorSpec([None, 224, 224, 3], tf.float32))
        run(tf.zeros([1, 224, 224, 3]))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        before = status("VmRSS")
        run(tf.random.uniform([{batch}, 224, 224, 3]))[0].numpy()
        print(status("VmHWM") - before)
        """
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    measured = int(out.stdout.split()[-1]) / batch
    activations, _ = model_footprint("vgg19", (224, 224))
    estimate = 224 * 224 * 3 * 4 + ACTIVATION_HEADROOM * activations
    assert 0.8 * activations < measured < estimate, (
        f"measured {measured / MiB:.1f} MiB per image; estimate {estimate / MiB:.1f} MiB"
    )


@pytest.mark.parametrize("target", TARGETS)
def test_no_probe_kills_tf_serving_while_it_waits_for_its_first_version(target):
    """tensorflow_model_server opens its ports only once a version of every configured model is
    AVAILABLE; before the first push none exists. A startup or liveness probe on its ports would
    restart it in a loop; readiness keeps the waiting pod out of the Service instead."""
    docs = render(target)
    cfg = pipeline_config(docs)
    (tfs,) = serving_pod(docs)["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in tfs["ports"]}
    for probe in ("startupProbe", "livenessProbe"):
        spec = tfs.get(probe) or {}
        assert not {"tcpSocket", "httpGet", "grpc"} & set(spec), f"{probe} on a server port"
    ready = tfs["readinessProbe"]["httpGet"]
    assert ready["path"] == f"/v1/models/{cfg.model_name}/metadata"
    assert ports.get(ready["port"], ready["port"]) == int(flags(tfs)["rest_api_port"])


@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_scrape_annotations_match_the_server(target):
    docs = render(target)
    pod = serving_pod(docs)
    (tfs,) = pod["spec"]["containers"]
    f = flags(tfs)
    monitoring = configmap_file(docs, pod, tfs, f["monitoring_config_file"])
    (metrics_path,) = re.findall(r'^\s*path:\s*"([^"]+)"', monitoring, re.M)
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == f["rest_api_port"]
    assert ann["prometheus.io/path"] == metrics_path


@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_operator_component_scrapes_every_serving_pod(target, tmp_path):
    docs = render(target)
    with_monitor = with_component(target, PROMETHEUS_OPERATOR, tmp_path)
    added = [d for d in with_monitor if d not in docs]
    # the PodMonitor, the alert rules and the dashboard (tests/test_monitoring_rules.py)
    assert sorted(d["kind"] for d in added) == ["ConfigMap", "PodMonitor", "PrometheusRule"]
    assert len(with_monitor) == len(docs) + 3
    monitor = one(added, "PodMonitor")
    dashboard = one(added, "ConfigMap", "transfer-pipeline-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    rule = one(added, "PrometheusRule")
    assert dashboard["metadata"]["namespace"] == rule["metadata"]["namespace"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    ns = one(docs, "Namespace")["metadata"]["name"]
    assert monitor["metadata"]["namespace"] == ns, "a component's objects get no namespace"
    assert "namespaceSelector" not in monitor["spec"], "its own namespace: the serving pods'"
    pod = serving_pod(docs)
    assert selector_matches(monitor["spec"]["selector"], pod["metadata"]["labels"])
    (tfs,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in tfs["ports"]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert ports[endpoint["port"]] == int(flags(tfs)["rest_api_port"])
    assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"]
    # The Operator's Prometheus pods may reach that port (labels it sets on every Prometheus pod).
    policy = one(docs, "NetworkPolicy")
    operator_pod = {
        "app.kubernetes.io/name": "prometheus",
        "app.kubernetes.io/managed-by": "prometheus-operator",
        "app.kubernetes.io/instance": "k8s",
        "operator.prometheus.io/name": "k8s",
    }
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    assert ports[endpoint["port"]] in admitted_ports(policy, monitoring, operator_pod)
    for version in K8S_VERSIONS:
        assert validation_errors(with_monitor, version) == []


@pytest.mark.parametrize("target", TARGETS)
def test_service_and_pdb_select_serving_and_drain_unready_pods(target):
    docs = render(target)
    pod = serving_pod(docs)
    labels = pod["metadata"]["labels"]
    (tfs,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in tfs["ports"]}

    svc = one(docs, "Service", "tf-serving")["spec"]
    assert svc["selector"].items() <= labels.items()
    for p in svc["ports"]:
        assert ports.get(p["targetPort"], p["targetPort"]) == p["port"] == ports[p["name"]]
    assert {p["port"] for p in svc["ports"]} == set(ports.values())

    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    replicas = one(docs, "Deployment")["spec"]["replicas"]
    assert pdb.get("maxUnavailable", 0) >= 1 or pdb["minAvailable"] < replicas, "undrainable"
    # Until the first push every replica is unready; IfHealthyBudget would block every drain.
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize("target", TARGETS)
def test_network_policy_admits_clients_and_prometheus_only(target):
    docs = render(target)
    policy = one(docs, "NetworkPolicy")
    spec = policy["spec"]
    pod = serving_pod(docs)
    assert selector_matches(spec["podSelector"], pod["metadata"]["labels"])
    assert spec["policyTypes"] == ["Ingress"]
    for rule in spec["ingress"]:
        assert rule.get("from"), "an ingress rule without `from` admits every pod"
    (tfs,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in tfs["ports"]}
    grpc, http = ports["grpc"], ports["http"]
    ns = one(docs, "Namespace")["metadata"]["name"]
    own = {"kubernetes.io/metadata.name": ns}
    monitoring = {"kubernetes.io/metadata.name": "monitoring"}
    other = {"kubernetes.io/metadata.name": "default"}
    client = {"transfer-pipeline/client": "true"}
    operator = {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}
    agent = {"app.kubernetes.io/name": "prometheus-agent", "operator.prometheus.io/name": "a"}
    cases = [
        (own, client, {grpc, http}),
        (own, {"app": "something-else"}, set()),
        (other, client, set()),  # the client label counts in this namespace only
        (monitoring, operator, {http}),  # metrics, not predictions over gRPC
        (monitoring, agent, {http}),
        (monitoring, {"app.kubernetes.io/name": "grafana"}, set()),
        (other, operator, set()),
    ]
    for namespace, labels, expected in cases:
        got = admitted_ports(policy, namespace, labels)
        assert got == expected, f"{namespace} {labels}: {got} != {expected}"


# --- images, hardening, GPUs -------------------------------------------------------------------


@pytest.mark.parametrize("target", (*TARGETS, *JOBS))
def test_images_are_pinned(target):
    docs = render(target)
    tf_minor = ".".join(tensorflow_pin().split(".")[:2])
    for name, pod in workloads(docs).items():
        # an init container uses its pod's TF Serving image (already on the node)
        pod_gpu = any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in containers(pod))
        for c in containers(pod):
            image = c["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and "/" not in tag and tag != "latest", f"{name}: {image} is not pinned"
            gpu = pod_gpu
            if repo.endswith("transfer-pipeline"):
                assert tag == PYPROJECT["project"]["version"], f"{image}: not the project version"
            elif repo == "tensorflow/serving":
                assert tag.startswith(f"{tf_minor}."), f"{image} vs tensorflow {tf_minor}"
                assert tag.endswith("-gpu") == gpu, f"{image} with GPU limit: {gpu}"
            else:
                pytest.fail(f"{name}: unexpected image {image}")


@pytest.mark.parametrize("target", (*TARGETS, *JOBS))
def test_every_container_is_non_root_hardened_and_limited(target):
    docs = render(target)
    if target in TARGETS:
        ns = one(docs, "Namespace")["metadata"]["labels"]
        assert ns["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, pod in workloads(docs).items():
        spec = pod["spec"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in containers(pod):
            where = f"{name}/{c['name']}"
            sc = c["securityContext"]
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert sc.get("runAsUser", psc["runAsUser"]) > 0, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert not sc.get("privileged") and sc["readOnlyRootFilesystem"] is True, where
            req, lim = c["resources"]["requests"], c["resources"]["limits"]
            assert cpu(req["cpu"]) <= cpu(lim["cpu"]), where
            assert memory(req["memory"]) <= memory(lim["memory"]), where


@pytest.mark.parametrize("target", TARGETS)
def test_gpus_exactly_where_asked_and_schedulable(target):
    docs = render(target)
    if not GPU_WORKLOADS[target]:
        assert "nvidia.com/gpu" not in rendered_text(target)
    for name, pod in workloads(docs).items():
        spec = pod["spec"]
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for c in spec["containers"]]
        assert (name in GPU_WORKLOADS[target]) == any(gpus), f"{name}: GPU limits {gpus}"
        if any(gpus):
            tolerations = spec.get("tolerations", [])
            assert any(
                t["key"] == "nvidia.com/gpu" and t.get("effect", "NoSchedule") == "NoSchedule"
                for t in tolerations
            ), f"{name} requests a GPU without tolerating GPU nodes' taint"
            assert len(spec.get("nodeSelector", {})) == 1, f"{name}: one GPU pool label"
        else:
            assert "tolerations" not in spec and "nodeSelector" not in spec, name


def test_platform_overlays_use_their_platforms_gpu_nodes_and_registry():
    for target, label, registry in (
        ("overlays/gke", "cloud.google.com/gke-nodepool", r"[a-z0-9-]+-docker\.pkg\.dev/"),
        ("overlays/eks", "eks.amazonaws.com/nodegroup", r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\."),
    ):
        docs = render(target)
        for name, pod in workloads(docs).items():
            assert list(pod["spec"]["nodeSelector"]) == [label], f"{target}: {name}"
        (pipeline,) = cron_pod(docs)["spec"]["containers"]
        assert re.match(registry, pipeline["image"]), f"{target}: {pipeline['image']}"


# --- the load-data Job -------------------------------------------------------------------------


def load_data_script(tmp_path: Path) -> tuple[Path, dict]:
    """The script as the Job mounts it (from the rendered ConfigMap), and the Job's env."""
    docs = render(LOAD_DATA)
    pod = one(docs, "Job", "load-data")["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["command"][0] == "sh"
    text = configmap_file(docs, pod, c, c["command"][1])
    assert text, f"{c['command'][1]} is not the mounted script"
    script = tmp_path / "load-data.sh"
    script.write_text(text)
    return script, {e["name"]: e["value"] for e in c["env"]}


def test_load_data_job_fills_the_claim_the_pipeline_reads():
    docs = render(LOAD_DATA)
    job = one(docs, "Job", "load-data")
    pod = job["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    mount, volume = volume_at(pod, c, env["DATA_DIR"])
    assert not mount.get("readOnly"), "the Job writes the images (and formats a new disk)"
    job_claim = volume["persistentVolumeClaim"]["claimName"]
    assert job["metadata"]["namespace"] == "transfer-pipeline"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] > 0
    timeout = int(env["LOAD_DATA_TIMEOUT_SECONDS"])
    assert 0 < timeout < job["spec"]["activeDeadlineSeconds"]
    for target in TARGETS:
        targets_docs = render(target)
        cfg = pipeline_config(targets_docs)
        if scheme(cfg.data_root):
            continue  # gs:// or s3://: loaded with gcloud storage / aws s3, no Job
        cron = cron_pod(targets_docs)
        cron_mount, cron_volume = volume_at(cron, cron["spec"]["containers"][0], cfg.data_root)
        assert cron_volume["persistentVolumeClaim"]["claimName"] == job_claim, target
        assert cron_mount.get("readOnly"), f"{target}: the pipeline only reads its images"
        # The folder the Job installs (DATA_DIR/NAME) is data_root in the CronJob's mount.
        relative = posixpath.relpath(cfg.data_root, cron_mount["mountPath"])
        assert "/" not in relative, f"{target}: data_root is one folder below the mount"


def tar_stream(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=folder.name)
    return buf.getvalue()


def test_load_data_script_installs_a_folder_whole_then_lets_the_job_finish(tmp_path, make_dataset):
    script, job_env = load_data_script(tmp_path)
    volume = tmp_path / "volume"
    volume.mkdir()
    env = {**os.environ, **job_env, "DATA_DIR": str(volume), "LOAD_DATA_TIMEOUT_SECONDS": "60"}
    source = make_dataset(per_split=(6, 2, 2))
    images = source.rename(source.with_name("cats_dogs"))

    waiting = subprocess.Popen(
        ["sh", str(script), "wait"], env=env, stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.5)
    assert waiting.poll() is None, "the Job's process waits for an upload"
    received = subprocess.run(
        ["sh", str(script), "receive", "cats_dogs"],
        input=tar_stream(images),
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert received.returncode == 0, received.stderr
    out, _ = waiting.communicate(timeout=30)
    files = [p for p in images.rglob("*") if p.is_file()]
    assert waiting.returncode == 0 and f"{len(files)} files in" in out
    loaded = volume / "cats_dogs"
    assert sorted(p.relative_to(loaded) for p in loaded.rglob("*")) == sorted(
        p.relative_to(images) for p in images.rglob("*")
    )
    assert sorted(os.listdir(volume)) == ["cats_dogs"], "no staging or marker left behind"
    # The pipeline reads what was loaded.
    stats = run_example_gen(str(loaded), str(tmp_path / "examples"), num_shards=1)
    train = [p for p in (images / "train").rglob("*") if p.is_file()]
    assert stats["splits"]["train"]["num_examples"] == len(train) > 0


@pytest.mark.parametrize(
    "stream, name, message",
    [
        (b"not a tar stream", "cats_dogs", "stdin is not a tar stream"),
        (None, "dogs", "the tar stream has no folder dogs/"),
        (b"", "../etc", "receive NAME: a plain folder name"),
    ],
)
def test_load_data_script_refuses_bad_input_and_keeps_the_old_copy(tmp_path, stream, name, message):
    script, job_env = load_data_script(tmp_path)
    volume = tmp_path / "volume"
    (volume / "cats_dogs" / "train" / "cats").mkdir(parents=True)
    (volume / "cats_dogs" / "train" / "cats" / "old.jpg").write_bytes(b"old")
    empty = tmp_path / "cats_dogs"
    empty.mkdir()
    env = {**os.environ, **job_env, "DATA_DIR": str(volume)}
    result = subprocess.run(
        ["sh", str(script), "receive", name],
        input=tar_stream(empty) if stream is None else stream,
        env=env,
        capture_output=True,
        text=False,
        timeout=60,
    )
    err = result.stderr.decode()
    assert result.returncode != 0 and f"load-data: {message}" in err, err
    assert sorted(os.listdir(volume)) == ["cats_dogs"]
    assert (volume / "cats_dogs" / "train" / "cats" / "old.jpg").read_bytes() == b"old"


def test_load_data_script_refuses_a_folder_without_images(tmp_path):
    script, job_env = load_data_script(tmp_path)
    volume = tmp_path / "volume"
    volume.mkdir()
    empty = tmp_path / "cats_dogs" / "train" / "cats"
    empty.mkdir(parents=True)
    result = subprocess.run(
        ["sh", str(script), "receive", "cats_dogs"],
        input=tar_stream(tmp_path / "cats_dogs"),
        env={**os.environ, **job_env, "DATA_DIR": str(volume)},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1 and b"no <split>/<class>/<image> files" in result.stderr
    assert os.listdir(volume) == []


def test_load_data_job_gives_up_when_nothing_arrives(tmp_path):
    script, job_env = load_data_script(tmp_path)
    env = {**os.environ, **job_env, "DATA_DIR": str(tmp_path), "LOAD_DATA_TIMEOUT_SECONDS": "2"}
    result = subprocess.run(
        ["sh", str(script), "wait"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1 and "nothing received in 2s" in result.stderr


# --- Kubeflow Pipelines: components/kubeflow-pipelines, overlays/kubeflow -------------------------

KUBEFLOW = "overlays/kubeflow"
KFP_COMPONENT = "components/kubeflow-pipelines"
KFP_SERVICE_ACCOUNT = "transfer-pipeline"  # README: runs are submitted with this account


def with_kfp_component(target: str, tmp_path: Path) -> list[dict]:
    """`target` plus the Kubeflow Pipelines component, as the component's comment says to add it
    (in a kustomization that sets the namespace)."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "transfer-pipeline",
                "resources": [os.path.relpath(K8S / target, tmp_path)],
                "components": [os.path.relpath(K8S / KFP_COMPONENT, tmp_path)],
            }
        )
    )
    return [d for d in yaml.safe_load_all(kustomize(tmp_path)) if d]


def kfp_objects_problems(docs: list[dict]) -> list[str]:
    """What KFP tasks need in their namespace: the account they run as, with its token and a
    Role bound that grants what the KFP driver, launcher and Argo's executor do, no more; no
    CronJob left to race the KFP runs."""
    problems = []
    kinds = [d["kind"] for d in docs]
    if "CronJob" in kinds:
        problems.append("the CronJob is still there")
    sa = one(docs, "ServiceAccount", KFP_SERVICE_ACCOUNT)
    if sa.get("automountServiceAccountToken") is not True:
        problems.append("the tasks' account mounts no token (the KFP launcher calls the API)")
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    namespace = sa["metadata"]["namespace"]
    for d in (role, binding):
        if d["metadata"].get("namespace") != namespace:
            problems.append(f"{d['kind']} not in {namespace}")
    if binding["roleRef"] != {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }:
        problems.append("the RoleBinding binds another role")
    if binding["subjects"] != [
        {"kind": "ServiceAccount", "name": KFP_SERVICE_ACCOUNT, "namespace": namespace}
    ]:
        problems.append(f"the RoleBinding's subjects: {binding['subjects']}")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {
        ("", "pods", "get"),
        ("", "configmaps", "get"),
        ("", "secrets", "get"),
        ("argoproj.io", "workflowtaskresults", "create"),
        ("argoproj.io", "workflowtaskresults", "patch"),
    }
    if granted != needed:
        problems.append(
            f"the Role grants {sorted(granted - needed)}, lacks {sorted(needed - granted)}"
        )
    for rule in role["rules"]:
        if rule["resources"] in (["configmaps"], ["secrets"]) and not rule.get("resourceNames"):
            problems.append(f"{rule['resources'][0]}: every one of them, not KFP's by name")
    return problems


def kfp_beam_problems(cfg: config.PipelineConfig) -> list[str]:
    """Each Beam component runs in a KFP task of its own: its DirectRunner workers must fit
    that task's CPUs (kfp.resources.<Component>, else default)."""
    resources = cfg.sections["kfp"].resources
    problems = []
    for job, beam_args in beam_jobs(cfg).items():
        cpus = (resources.get(job) or resources["default"]).cpu
        problems += [f"{job}: {p}" for p in beam_problems(cfg, beam_args, cpus)]
    return problems


def test_kubeflow_beam_jobs_fit_their_tasks():
    """The overlay's StatisticsGen used to inherit ExampleGen's 8 worker processes in a 1-CPU
    task; with the `beam:` section every Beam job without its own options runs in one process."""
    docs = render(KUBEFLOW)
    assert kfp_beam_problems(pipeline_config(docs)) == []
    raw = yaml.safe_load(configmap_data(docs, "pipeline-config")["pipeline.yaml"])
    del raw["beam"]  # the overlay as it was: StatisticsGen got example_gen.beam_args
    old = config_from_dict(raw, source="the old overlay")
    assert kfp_beam_problems(old) == ["StatisticsGen: --direct_num_workers=8 with 1 CPUs"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubeflow_overlay_validates_strictly(version):
    docs = render(KUBEFLOW)
    errors = validation_errors(docs, version)
    assert not errors, f"k8s/{KUBEFLOW} against Kubernetes {version}:\n" + "\n".join(errors)
    assert "Namespace" not in [d["kind"] for d in docs], "the Kubeflow Profile owns it"
    for d in docs:
        assert d["metadata"].get("namespace") == "transfer-pipeline", d["metadata"]["name"]
    assert kfp_objects_problems(docs) == []


@pytest.mark.parametrize("target", ["overlays/gpu", "overlays/gke", "overlays/eks"])
def test_kfp_component_on_each_platform_overlay(target, tmp_path):
    docs = with_kfp_component(target, tmp_path)
    assert kfp_objects_problems(docs) == []
    for version in K8S_VERSIONS:
        assert validation_errors(docs, version) == []
    # the cloud identity the platform overlay gave the pipeline's account is kept
    before = one(render(target), "ServiceAccount", KFP_SERVICE_ACCOUNT)["metadata"]
    after = one(docs, "ServiceAccount", KFP_SERVICE_ACCOUNT)["metadata"]
    assert after.get("annotations") == before.get("annotations")


def test_kfp_checks_catch_a_broad_role_and_a_leftover_cronjob(tmp_path):
    docs = copy.deepcopy(render(KUBEFLOW))
    one(docs, "Role")["rules"].append({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]})
    docs.append(cronjob(render("overlays/gpu")))
    problems = kfp_objects_problems(docs)
    assert any("grants [('', 'pods', '*')]" in p for p in problems)
    assert "the CronJob is still there" in problems


def test_kubeflow_overlay_has_the_claims_the_compiled_spec_mounts(tmp_path):
    """Compile the overlay's pipeline.yaml (compile-kfp checks every path is on a mounted
    claim): each claim exists, is ReadWriteMany from a named class (tasks land on different
    nodes), and TF Serving reads the directory the Pusher's task writes."""
    from kfp_local import load

    docs = render(KUBEFLOW)
    raw = configmap_data(docs, "pipeline-config")["pipeline.yaml"]
    (tmp_path / "pipeline.yaml").write_text(raw)
    cfg = pipeline_config(docs)
    out = tmp_path / "pipeline.kfp.yaml"
    assert (
        cli.main(["compile-kfp", "--config", str(tmp_path / "pipeline.yaml"), "--output", str(out)])
        == 0
    )
    spec, platform = load(out)
    k8s = json_format.MessageToDict(platform.platforms["kubernetes"])["deploymentSpec"]["executors"]
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    mounted = set()
    for executor in k8s.values():
        for m in executor["pvcMount"]:
            mounted.add((m["constant"], m["mountPath"]))
    assert mounted == set(cfg.sections["kfp"].volumes.items())
    for claim, _ in mounted:
        spec_ = pvcs[claim]["spec"]
        assert spec_["accessModes"] == ["ReadWriteMany"] and spec_.get("storageClassName"), claim
    # the image every task runs is the overlay's, as the Deployment's registry
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images == {cfg.sections["kfp"].image}
    assert cfg.sections["kfp"].image.split(":")[-1] == PYPROJECT["project"]["version"]
    # TF Serving reads <serving_dir>/<model_name> on the claim the tasks write it to
    serving = serving_pod(docs)
    (tfs,) = serving["spec"]["containers"]
    # TF Serving reads the Pusher's models.config on the serving volume; the ConfigMap's seeds it
    models = text_format.Parse(
        configmap_data(docs, "tf-serving-config")["models.config"],
        model_server_config_pb2.ModelServerConfig(),
    )
    (model,) = models.model_config_list.config
    serving_mount, serving_vol = volume_at(serving, tfs, model.base_path)
    claim = serving_vol["persistentVolumeClaim"]["claimName"]
    task_mount = cfg.sections["kfp"].volumes[claim]
    assert posixpath.relpath(model.base_path, serving_mount["mountPath"]) == posixpath.relpath(
        posixpath.join(cfg.serving_dir, cfg.model_name), task_mount
    )
    # the GPU pool the Trainer's task selects is the one overlays/gpu's nodes carry
    gpu_selector = cron_pod(render("overlays/gpu"))["spec"]["nodeSelector"]
    assert cfg.sections["kfp"].gpu.node_selector == gpu_selector
