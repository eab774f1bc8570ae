"""k8s/jobs/train-multiworker: the multi-worker Trainer as an Indexed Job behind a headless
Service. tests/test_deploy.py renders it and validates every object strictly at Kubernetes 1.33
and the newest schema (with its images, hardening and scratch checks); here, what a schema cannot
see: that the pods' TF_CONFIG (built by the real command line from the pod's environment) names
exactly the pods the Job and the Service create, that a lost worker is restarted, and that the
job trains the pipeline's model with a GPU per worker."""

from __future__ import annotations

import json
import re

import pytest
import test_deploy as deploy
import yaml

from pipeline_components.core import commandline, registry
from pipeline_components.trainer import cluster
from pipeline_components.trainer.component import COMPONENT as TRAINER

TARGET = deploy.TRAIN_MULTIWORKER


@pytest.fixture(scope="module")
def docs():
    return deploy.render(TARGET)


def job(docs) -> dict:
    return deploy.one(docs, "Job", "train-multiworker")


def pod_spec(docs) -> dict:
    return job(docs)["spec"]["template"]["spec"]


def trainer(docs) -> dict:
    (c,) = pod_spec(docs)["containers"]
    return c


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command and args from the container's env."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), a) for a in args]


def pod_env(docs, index: int) -> dict[str, str]:
    """The environment Kubernetes gives pod `index`: the manifest's values, its fieldRefs
    resolved as the Job controller and the kubelet resolve them, and JOB_COMPLETION_INDEX."""
    j = job(docs)
    pod_labels = {"batch.kubernetes.io/job-name": j["metadata"]["name"]}  # set by the controller
    env = {"JOB_COMPLETION_INDEX": str(index)}
    for var in trainer(docs)["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        path = var["valueFrom"]["fieldRef"]["fieldPath"]
        if path == "metadata.namespace":
            env[var["name"]] = j["metadata"]["namespace"]
        else:
            (label,) = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path).groups()
            env[var["name"]] = pod_labels[label]
    return env


def test_renders_an_indexed_job_a_headless_service_and_its_config(docs):
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Job", "Service"]
    spec = job(docs)["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2  # the group waits for every worker
    service = deploy.one(docs, "Service", "train-multiworker")["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("index", [0, 1])
def test_tf_config_of_each_pod_names_the_pods_the_job_and_service_create(docs, index):
    j, spec = job(docs), pod_spec(docs)
    c = trainer(docs)
    env = pod_env(docs, index)
    args = commandline.parser(TRAINER).parse_args(expand(c["args"], env))
    assert c["command"] == [deploy.SCRIPT] and expand(c["args"], env)[0] == "train"
    assert args.tf_config_from_k8s and args.workers == j["spec"]["completions"]
    spec_json = cluster.tf_config_from_k8s(
        args.workers,
        env,
        job_name=args.k8s_job_name,
        service=args.k8s_service,
        namespace=args.k8s_namespace,
        port=args.worker_port,
    )
    service = deploy.one(docs, "Service", "train-multiworker")
    name, ns = j["metadata"]["name"], j["metadata"]["namespace"]
    # Indexed Job pod i: hostname <job>-<i>; subdomain = the headless Service -> its DNS name.
    assert spec["subdomain"] == service["metadata"]["name"]
    expected = [f"{name}-{i}.{spec['subdomain']}.{ns}.svc:2222" for i in range(args.workers)]
    assert spec_json == {
        "cluster": {"worker": expected},
        "task": {"type": "worker", "index": index},
    }
    me = cluster.parse_tf_config(json.dumps(spec_json))
    assert me.is_chief is (index == 0)
    # the Service selects exactly this Job's pods, on the port the workers listen on
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    (port,) = service["spec"]["ports"]
    (container_port,) = c["ports"]
    assert port["port"] == container_port["containerPort"] == args.worker_port == 2222
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])


def test_a_lost_worker_is_restarted_and_usage_errors_are_not(docs):
    spec = job(docs)["spec"]
    assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] == 0
    assert spec["activeDeadlineSeconds"] > 0
    assert pod_spec(docs)["restartPolicy"] == "Never"  # what podFailurePolicy requires
    failing = set()
    for rule in spec["podFailurePolicy"]["rules"]:
        for condition in rule.get("onPodConditions", []):
            assert condition.get("status") == "True", "required up to Kubernetes 1.34"
        if "onExitCodes" in rule and rule["action"] in ("FailJob", "FailIndex"):
            assert rule["onExitCodes"]["containerName"] == trainer(docs)["name"]
            assert rule["onExitCodes"]["operator"] == "In"
            failing |= set(rule["onExitCodes"]["values"])
    assert 2 in failing  # a usage error fails the same way every time
    assert cluster.WORKER_LOST_EXIT not in failing  # a lost peer: restart, the group resumes
    ignored = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "Ignore"]
    assert any(c["type"] == "DisruptionTarget" for r in ignored for c in r["onPodConditions"])


def test_trains_the_pipelines_model_on_a_gpu_per_worker(docs):
    c, spec = trainer(docs), pod_spec(docs)
    env = pod_env(docs, 0)
    args = commandline.parser(TRAINER).parse_args(expand(c["args"], env))
    mounted = deploy.configmap_file(docs, job(docs)["spec"]["template"], c, args.config)
    assert mounted is not None, f"--config {args.config} is not mounted"
    cfg = registry.config_from_dict(yaml.safe_load(mounted), source="train-multiworker-config")
    base = yaml.safe_load((deploy.K8S / "base" / "pipeline.yaml").read_text())["trainer"]
    assert yaml.safe_load(mounted)["trainer"] == base  # the scheduled pipeline's trainer
    assert (
        cfg.sections["trainer"].batch_size % args.workers == 0
    )  # the global batch splits over workers
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and cfg.sections["trainer"].require_gpu
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert list(spec["nodeSelector"]) == ["nvidia.com/gpu.present"]
    for path, writes in ((args.examples, False), (args.output, True)):
        found = deploy.volume_at(job(docs)["spec"]["template"], c, path)
        assert found and "persistentVolumeClaim" in found[1], f"{path} is not on a claim"
        assert not (writes and found[0].get("readOnly")), f"{path} is mounted read-only"
    tmp = deploy.volume_at(job(docs)["spec"]["template"], c, env["TMPDIR"])
    assert tmp and "emptyDir" in tmp[1]  # where the workers other than the chief write
