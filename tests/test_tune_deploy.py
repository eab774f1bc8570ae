"""k8s/jobs/tune-multiworker: a distributed Tuner as an Indexed Job behind a headless Service,
every pod running `transfer-pipeline tune --k8s`. tests/test_deploy.py renders it and validates
every object strictly; here, what a schema cannot see: that each pod's place (KerasTuner's
variables, built by the real command line from the pod's environment) is a chief the Service
reaches and workers that find it, and that it tunes the pipeline's Trainer on its features."""

from __future__ import annotations

import pytest
import test_deploy as deploy
import yaml
from test_multi_worker_deploy import expand

from pipeline_components.core import commandline, registry
from pipeline_components.trainer import cluster
from pipeline_components.tuner import launch
from pipeline_components.tuner.component import COMPONENT as TUNER

NAME = "tune-multiworker"


@pytest.fixture(scope="module")
def docs():
    return deploy.render(deploy.TUNE_MULTIWORKER)


def job(docs) -> dict:
    return deploy.one(docs, "Job", NAME)


def container(docs) -> dict:
    (c,) = job(docs)["spec"]["template"]["spec"]["containers"]
    return c


def pod_env(docs, index: int) -> dict[str, str]:
    """The pod's environment: the manifest's values and what Kubernetes resolves."""
    j = job(docs)
    env = {"JOB_COMPLETION_INDEX": str(index)}
    for var in container(docs)["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace":
            env[var["name"]] = j["metadata"]["namespace"]
        else:  # the job-name label the Job controller sets
            env[var["name"]] = j["metadata"]["name"]
    return env


def parsed(docs, index: int):
    c = container(docs)
    argv = expand(c["args"], pod_env(docs, index))
    assert c["command"] == [deploy.SCRIPT] and argv[0] == "tune"
    return commandline.parser(TUNER).parse_args(argv[1:])


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_pod_is_the_chief_or_a_worker_that_reaches_it(docs, index):
    j, spec = job(docs), job(docs)["spec"]
    args = parsed(docs, index)
    assert args.k8s and spec["completions"] == spec["parallelism"] == args.workers + 1
    env = launch.k8s_env(
        args.workers,
        pod_env(docs, index),
        job_name=args.k8s_job_name,
        service=args.k8s_service,
        namespace=args.k8s_namespace,
        port=args.oracle_port,
    )
    assert launch.role(env) == ("chief" if index == 0 else "worker")
    service = deploy.one(docs, "Service", NAME)
    name, ns = j["metadata"]["name"], j["metadata"]["namespace"]
    # pod 0's DNS name: hostname <job>-0, subdomain the headless Service
    assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert env[launch.ORACLE_IP] == f"{name}-0.{service['metadata']['name']}.{ns}.svc"
    (port,) = service["spec"]["ports"]
    (container_port,) = container(docs)["ports"]
    assert int(env[launch.ORACLE_PORT]) == port["port"] == container_port["containerPort"]
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}


def test_a_lost_chief_restarts_a_worker_and_bad_input_fails_the_job(docs):
    spec = job(docs)["spec"]
    assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] == 0
    failing = {
        code
        for rule in spec["podFailurePolicy"]["rules"]
        if rule["action"] == "FailJob" and "onExitCodes" in rule
        for code in rule["onExitCodes"]["values"]
    }
    assert failing == {1, 2} and cluster.WORKER_LOST_EXIT not in failing


def test_tunes_the_pipelines_trainer_on_features_it_reads_from_the_claim(docs):
    c, template = container(docs), job(docs)["spec"]["template"]
    args = parsed(docs, 0)
    mounted = deploy.configmap_file(docs, template, c, args.config)
    assert mounted is not None
    data = yaml.safe_load(mounted)
    base = yaml.safe_load((deploy.K8S / "base" / "pipeline.yaml").read_text())["trainer"]
    # the scheduled pipeline's trainer, with what makes its features cacheable
    assert data["trainer"] == {**base, "augmentation": None}
    cfg = registry.config_from_dict(data, source="tune-multiworker-config")
    assert cfg.sections["trainer"].features_blocker() is None
    tuner = cfg.sections["tuner"]
    assert tuner.skip_reason() is None
    assert tuner.algorithm != "bayesian"  # the image has no `bayesian` extra
    assert tuner.max_minutes * 60 < job(docs)["spec"]["activeDeadlineSeconds"]
    for path, writes in ((args.examples, False), (args.features, False), (args.output, True)):
        found = deploy.volume_at(template, c, path)
        assert found and "persistentVolumeClaim" in found[1], f"{path} is not on a claim"
        assert not (writes and found[0].get("readOnly"))
