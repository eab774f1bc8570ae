"""Dockerfile and k8s/: what renders, validates, and fits together.

Every kustomization (base and overlays) is rendered with `kubectl kustomize` and each object is
validated strictly against the newest Kubernetes schema kubernetes-validate ships. The cross-checks
are the misconfigurations a schema cannot see: TF Serving must read the directory the Pusher
writes, the CronJob must run a real subcommand on the config it mounts, files named in flags must
be mounted, ports must line up, images must be pinned, containers hardened, GPUs only where asked.
"""

from __future__ import annotations

import copy
import functools
import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from kubernetes_validate.utils import latest_version
from packaging.specifiers import SpecifierSet
from tensorflow_serving.config import model_server_config_pb2

from pipeline_components import cli
from pipeline_components.core import config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
TARGETS = ("base", "overlays/local", "overlays/gpu")
K8S_VERSION = latest_version()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPT = "transfer-pipeline"
VGG19_NOTOP = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"  # keras.applications.vgg19
# serving-models must be ReadWriteMany where the pipeline pod and TF Serving pods can land on
# different nodes; the local overlay is a single-node cluster.
SERVING_PVC_MODES = {
    "base": "ReadWriteMany",
    "overlays/local": "ReadWriteOnce",
    "overlays/gpu": "ReadWriteMany",
}
GPU_WORKLOADS = {
    "base": {"transfer-pipeline"},
    "overlays/local": set(),
    "overlays/gpu": {"transfer-pipeline", "tf-serving"},
}


def tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install the test extras (make venv)")
    return path


# --- rendering and lookup --------------------------------------------------------------------


@functools.cache
def rendered_text(target: str) -> str:
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"kubectl kustomize k8s/{target}:\n{out.stderr}"
    return out.stdout


def render(target: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(rendered_text(target)) if d]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [
        d
        for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"].startswith(name))
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict]) -> dict[str, dict]:
    """Workload name -> pod spec, for the Deployment and the CronJob."""
    specs = {}
    for d in docs:
        if d["kind"] == "Deployment":
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
    return config.from_dict(raw, source="pipeline-config ConfigMap")


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


def tensorflow_pin() -> str:
    (line,) = [
        line
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("tensorflow==")
    ]
    return line.split("==")[1]


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


def dockerfile_env() -> dict[str, str]:
    """ARG defaults and ENV values (an ENV wins over an ARG of the same name)."""
    args, env = {}, {}
    for keyword, rest in dockerfile():
        if keyword in ("ENV", "ARG"):
            target = env if keyword == "ENV" else args
            target.update(item.partition("=")[::2] for item in shlex.split(rest))
    return args | env


def image_uid() -> int:
    users = [rest for keyword, rest in dockerfile() if keyword == "USER"]
    assert users, "the Dockerfile never leaves root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: numeric, so the kubelet can verify runAsNonRoot"
    return int(uid)


def baked_weights_path() -> str:
    return posixpath.join(dockerfile_env()["KERAS_HOME"], "models", VGG19_NOTOP)


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


def test_base_image_is_the_tensorflow_gpu_image_of_the_pinned_version():
    froms = [rest.split()[0] for keyword, rest in dockerfile() if keyword == "FROM"]
    tf = tensorflow_pin()
    assert froms[-1] == f"tensorflow/tensorflow:{tf}-gpu"
    (dep,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("tensorflow==")]
    assert SpecifierSet(dep.removeprefix("tensorflow")).contains(tf), (dep, tf)


def test_image_runs_as_non_root_the_user_the_manifests_run_as():
    uid = image_uid()
    assert uid != 0
    useradd = [r for k, r in dockerfile() if k == "RUN" and "useradd" in r]
    assert useradd and dockerfile_env()["APP_UID"] == str(uid), "USER is the user created"
    for target in TARGETS:
        sc = cron_pod(render(target))["spec"]["securityContext"]
        assert sc["runAsUser"] == uid, f"k8s/{target}: the CronJob runs as the image's user"


def test_entrypoint_is_the_console_script():
    (entrypoint,) = [rest for keyword, rest in dockerfile() if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == [SCRIPT]
    assert PYPROJECT["project"]["scripts"][SCRIPT] == "pipeline_components.cli:main"


def test_project_is_installed_with_the_pinned_constraints():
    copied = " ".join(rest for keyword, rest in dockerfile() if keyword == "COPY")
    assert "constraints.txt" in copied
    installs = [r for k, r in dockerfile() if k == "RUN" and "pip install" in r]
    assert installs and all("--no-cache-dir" in r for r in installs)
    assert any("-c constraints.txt" in r for r in installs)


def test_vgg19_weights_are_baked_where_the_configs_read_them():
    env = dockerfile_env()
    assert env["BAKE_IMAGENET_WEIGHTS"] == "1", "weights baked by default"
    (bake,) = [r for k, r in dockerfile() if k == "RUN" and "BAKE_IMAGENET_WEIGHTS" in r]
    assert 'VGG19(weights="imagenet", include_top=False)' in bake
    assert VGG19_NOTOP in bake, "the build fails if the weights file did not land"
    # Keras uses its cache only when KERAS_HOME is writable by the runtime user.
    assert re.search(r'chown -R pipeline:pipeline "?\$\{?KERAS_HOME', bake)


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
    ):
        assert dockerignore_excludes(path), f"{path} would be sent to the Docker daemon"
    for keyword, rest in dockerfile():
        if keyword == "COPY" and "--from" not in rest:
            for src in shlex.split(rest)[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: no such file"
                assert not dockerignore_excludes(src.rstrip("/")), f"COPY {src} is dockerignored"
    assert not dockerignore_excludes("pipeline_components/cli.py")
    assert not dockerignore_excludes("serving/config/models.config")


# --- manifests -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_kustomization_builds_the_whole_deployment(target):
    docs = render(target)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["Namespace", "ServiceAccount", "ServiceAccount"]
        + ["PersistentVolumeClaim"] * 3
        + ["ConfigMap"] * 2
        + ["CronJob", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"]
    )
    ns = one(docs, "Namespace")["metadata"]["name"]
    assert all(d["metadata"].get("namespace") == ns for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates_strictly(target):
    errors = []
    for doc in render(target):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{where}: {e.message}")
    assert not errors, f"k8s/{target} against Kubernetes {K8S_VERSION}:\n" + "\n".join(errors)


def test_strict_validation_catches_a_misspelt_field():
    doc = copy.deepcopy(cronjob(render("base")))
    doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def pipeline_config_problems(cfg: config.PipelineConfig, pod: dict, container: dict) -> list[str]:
    """Where the pipeline reads and writes must exist in the pod that runs it."""
    problems = []
    beam_args = cfg.example_gen.beam_args
    runner = beam_flag(beam_args, "runner") or "DirectRunner"
    remote = {"data_root": cfg.data_root, "pipeline_root": cfg.pipeline_root}
    if runner == "DataflowRunner":
        # Dataflow workers read data_root and write under pipeline_root: no pod volumes there.
        problems += [f"{k}={v} is not on gs://" for k, v in remote.items() if "gs://" not in v]
        for flag in ("project", "region"):
            if not beam_flag(beam_args, flag):
                problems.append(f"DataflowRunner without --{flag}")
        if not (beam_flag(beam_args, "temp_location") or "").startswith("gs://"):
            problems.append("DataflowRunner needs --temp_location=gs://...")
    else:
        assert runner == "DirectRunner", f"no check written for {runner}"
        workers = beam_flag(beam_args, "direct_num_workers")
        limit = cpu(container["resources"]["limits"]["cpu"])
        if workers is not None and not 0 < int(workers) <= limit:
            problems.append(f"--direct_num_workers={workers} with a CPU limit of {limit}")
    paths = {"serving_dir": (cfg.serving_dir, True)}
    paths.update({k: (v, k == "pipeline_root") for k, v in remote.items() if "://" not in v})
    for key, (path, writes) in paths.items():
        found = volume_at(pod, container, path)
        if found is None or "persistentVolumeClaim" not in found[1]:
            problems.append(f"{key}={path} is not on a PersistentVolumeClaim mount")
        elif writes and found[0].get("readOnly"):
            problems.append(f"{key}={path} is mounted read-only")
    weights = cfg.trainer.weights
    read_only_root = container["securityContext"].get("readOnlyRootFilesystem")
    if weights == "imagenet" and read_only_root:
        problems.append("weights: imagenet downloads at run time on a read-only root filesystem")
    elif weights not in ("imagenet", "none") and weights != baked_weights_path():
        problems.append(f"trainer.weights={weights} is not the file the image bakes")
    if cfg.trainer.backbone != "vgg19":
        problems.append("the image bakes VGG19 weights only")
    return problems


@pytest.mark.parametrize("target", TARGETS)
def test_pipeline_config_is_valid_and_its_paths_are_mounted(target):
    docs = render(target)
    cfg = pipeline_config(docs)  # from_dict raises on an unknown key or a bad value
    pod = cron_pod(docs)
    assert pipeline_config_problems(cfg, pod, pod["spec"]["containers"][0]) == []


def test_dataflow_example_config_is_coherent():
    """overlays/gpu/pipeline.dataflow.yaml, the Dataflow variant, is not rendered by default."""
    raw = yaml.safe_load((K8S / "overlays/gpu/pipeline.dataflow.yaml").read_text())
    cfg = config.from_dict(raw, source="pipeline.dataflow.yaml")
    pod = cron_pod(render("overlays/gpu"))
    assert beam_flag(cfg.example_gen.beam_args, "runner") == "DataflowRunner"
    assert pipeline_config_problems(cfg, pod, pod["spec"]["containers"][0]) == []
    # Workers install the wheel the Dockerfile builds into <WORKDIR>/dist.
    steps = dockerfile()
    (i,) = [i for i, (k, r) in enumerate(steps) if k == "RUN" and "pip wheel" in r]
    assert "--wheel-dir dist" in steps[i][1]
    workdir = [r for k, r in steps[:i] if k == "WORKDIR"][-1]
    name = PYPROJECT["project"]["name"].replace("-", "_")
    wheel = f"{workdir}/dist/{name}-{PYPROJECT['project']['version']}-py3-none-any.whl"
    assert beam_flag(cfg.example_gen.beam_args, "extra_package") == wheel


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


@pytest.mark.parametrize("target", TARGETS)
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


@pytest.mark.parametrize("target", TARGETS)
def test_tf_serving_reads_the_directory_the_pusher_writes(target):
    docs = render(target)
    cfg = pipeline_config(docs)
    pusher_dir = posixpath.join(cfg.serving_dir, cfg.model_name)

    cron = cron_pod(docs)
    (cron_c,) = cron["spec"]["containers"]
    cron_mount, cron_vol = volume_at(cron, cron_c, pusher_dir)
    assert not cron_mount.get("readOnly"), "the Pusher must be able to write"

    serving = serving_pod(docs)
    (tfs,) = serving["spec"]["containers"]
    models_path = flags(tfs)["model_config_file"]
    models = text_format.Parse(
        configmap_file(docs, serving, tfs, models_path),
        model_server_config_pb2.ModelServerConfig(),
    )
    (model,) = models.model_config_list.config
    assert model.name == cfg.model_name
    assert model.base_path == pusher_dir, "models.config base_path != <serving_dir>/<model_name>"

    serving_mount, serving_vol = volume_at(serving, tfs, model.base_path)
    assert serving_mount.get("readOnly") and serving_vol["persistentVolumeClaim"].get("readOnly")
    claim = serving_vol["persistentVolumeClaim"]["claimName"]
    assert claim == cron_vol["persistentVolumeClaim"]["claimName"], "different volumes"
    assert posixpath.relpath(model.base_path, serving_mount["mountPath"]) == posixpath.relpath(
        pusher_dir, cron_mount["mountPath"]
    )
    pvc = one(docs, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == [SERVING_PVC_MODES[target]]


@pytest.mark.parametrize("target", TARGETS)
def test_tf_serving_flags_name_mounted_files_and_declared_ports(target):
    docs = render(target)
    pod = serving_pod(docs)
    (tfs,) = pod["spec"]["containers"]
    f = flags(tfs)
    assert argv(tfs)[0] == "tensorflow_model_server"
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        assert configmap_file(docs, pod, tfs, f[flag]) is not None, f"--{flag}={f[flag]}"
    assert f["enable_batching"] == "true"
    ports = {p["name"]: p["containerPort"] for p in tfs["ports"]}
    assert ports == {"grpc": int(f["port"]), "http": int(f["rest_api_port"])}
    threads = int(f["tensorflow_intra_op_parallelism"])
    assert threads == cpu(tfs["resources"]["limits"]["cpu"]), "thread pools sized to the limit"
    assert int(f["file_system_poll_wait_seconds"]) > 0


@pytest.mark.parametrize("target", TARGETS)
def test_probes_and_prometheus_scrape_match_the_server(target):
    docs = render(target)
    cfg = pipeline_config(docs)
    pod = serving_pod(docs)
    (tfs,) = pod["spec"]["containers"]
    f = flags(tfs)
    ports = {p["name"]: p["containerPort"] for p in tfs["ports"]}

    def port(probe_port):
        return ports.get(probe_port, probe_port)

    ready = tfs["readinessProbe"]["httpGet"]
    assert ready["path"] == f"/v1/models/{cfg.model_name}/metadata"
    assert port(ready["port"]) == int(f["rest_api_port"])
    for probe in ("livenessProbe", "startupProbe"):
        assert port(tfs[probe]["tcpSocket"]["port"]) == int(f["port"])

    monitoring = configmap_file(docs, pod, tfs, f["monitoring_config_file"])
    (metrics_path,) = re.findall(r'^\s*path:\s*"([^"]+)"', monitoring, re.M)
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == f["rest_api_port"]
    assert ann["prometheus.io/path"] == metrics_path


@pytest.mark.parametrize("target", TARGETS)
def test_service_pdb_and_network_policy_select_serving_and_its_ports(target):
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

    np_ = one(docs, "NetworkPolicy")["spec"]
    assert np_["podSelector"]["matchLabels"].items() <= labels.items()
    assert np_["policyTypes"] == ["Ingress"]
    for rule in np_["ingress"]:
        assert rule.get("from"), "an ingress rule without `from` admits every pod"
        assert {p["port"] for p in rule["ports"]} <= set(ports.values())
    client_rules = [
        r
        for r in np_["ingress"]
        if any(
            peer.get("podSelector", {}).get("matchLabels") == {"transfer-pipeline/client": "true"}
            and "namespaceSelector" not in peer
            for peer in r["from"]
        )
    ]
    assert len(client_rules) == 1
    assert {p["port"] for p in client_rules[0]["ports"]} == set(ports.values())


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_pinned(target):
    docs = render(target)
    tf_minor = ".".join(tensorflow_pin().split(".")[:2])
    for name, pod in workloads(docs).items():
        for c in containers(pod):
            image = c["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and "/" not in tag and tag != "latest", f"{name}: {image} is not pinned"
            gpu = "nvidia.com/gpu" in c["resources"].get("limits", {})
            if repo.endswith("transfer-pipeline"):
                assert tag == PYPROJECT["project"]["version"], f"{image}: not the project version"
            elif repo == "tensorflow/serving":
                assert tag.startswith(f"{tf_minor}."), f"{image} vs tensorflow {tf_minor}"
                assert tag.endswith("-gpu") == gpu, f"{image} with GPU limit: {gpu}"
            else:
                pytest.fail(f"{name}: unexpected image {image}")


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_non_root_hardened_and_limited(target):
    docs = render(target)
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
            assert spec.get("nodeSelector"), f"{name} requests a GPU without a nodeSelector"
        else:
            assert "tolerations" not in spec and "nodeSelector" not in spec, name
