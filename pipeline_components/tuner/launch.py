"""A tuning group: KerasTuner's chief (the oracle) and N workers (the trials), every process
running `transfer-pipeline tune` with the same command line. Process 0 is the chief, process
i >= 1 is worker i; each learns its place from KerasTuner's own variables, KERASTUNER_TUNER_ID,
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (`role`), which

- `tune --workers N --local` sets for the N + 1 processes it starts on 127.0.0.1 (`local_group`,
  like `train --workers N --local`), and
- `tune --workers N --k8s` sets in a pod of a Kubernetes Indexed Job (`k8s_env`: its index from
  JOB_COMPLETION_INDEX, the chief at `<job>-0.<service>`; k8s/jobs/tune-multiworker).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from pipeline_components.core.errors import PipelineError
from pipeline_components.trainer import cluster

TUNER_ID = "KERASTUNER_TUNER_ID"
ORACLE_IP = "KERASTUNER_ORACLE_IP"
ORACLE_PORT = "KERASTUNER_ORACLE_PORT"
CHIEF_ID = "chief"
DEFAULT_PORT = 8000  # the oracle's gRPC port in a Kubernetes group
K8S_SERVICE = "TUNER_SERVICE"  # the headless Service of the Indexed Job


def role(environ: Mapping[str, str] | None = None) -> str | None:
    """ "chief", "worker", or None (a search alone in this process), from KerasTuner's
    variables."""
    env = os.environ if environ is None else environ
    tuner_id = env.get(TUNER_ID)
    if not tuner_id:
        return None
    missing = [v for v in (ORACLE_IP, ORACLE_PORT) if not env.get(v)]
    if missing:
        raise PipelineError(f"tuner: {TUNER_ID} is set but {', '.join(missing)} not")
    return "chief" if tuner_id == CHIEF_ID else "worker"


def oracle_address(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """(the address the chief listens on, its port): 127.0.0.1 in a local group, every
    interface in a pod (the workers reach it through the headless Service)."""
    env = os.environ if environ is None else environ
    host = env.get(ORACLE_IP, "")
    try:
        port = int(env.get(ORACLE_PORT, ""))
    except ValueError:
        raise PipelineError(
            f"tuner: {ORACLE_PORT}={env.get(ORACLE_PORT)!r} is not a port"
        ) from None
    return ("127.0.0.1" if host in ("127.0.0.1", "localhost") else "0.0.0.0"), port


def kerastuner_env(index: int, oracle_host: str, port: int) -> dict[str, str]:
    """KerasTuner's variables of process `index` of a group: 0 is the chief."""
    return {
        TUNER_ID: CHIEF_ID if index == 0 else f"tuner{index}",
        ORACLE_IP: oracle_host,
        ORACLE_PORT: str(port),
    }


def k8s_env(
    workers: int,
    environ: Mapping[str, str] | None = None,
    *,
    job_name: str | None = None,
    service: str | None = None,
    namespace: str | None = None,
    port: int = DEFAULT_PORT,
) -> dict[str, str]:
    """KerasTuner's variables in a pod of an Indexed Job of `workers` + 1 pods: its index from
    JOB_COMPLETION_INDEX, the chief at `<job>-0.<service>` (pod 0's DNS name behind the
    headless Service); the job name and Service from the arguments or JOB_NAME /
    TUNER_SERVICE (POD_NAMESPACE optional)."""
    env = os.environ if environ is None else environ
    raw = env.get(cluster.K8S_INDEX, "")
    job = job_name or env.get(cluster.K8S_JOB_NAME, "")
    svc = service or env.get(K8S_SERVICE, "")
    for what, value, var in (
        ("", raw, cluster.K8S_INDEX),
        ("--k8s-job-name or ", job, cluster.K8S_JOB_NAME),
        ("--k8s-service or ", svc, K8S_SERVICE),
    ):
        if not value:
            raise PipelineError(f"tune --k8s: {what}{var} not set (an Indexed Job's pod sets it)")
    try:
        index = int(raw)
    except ValueError:
        raise PipelineError(f"tune --k8s: {cluster.K8S_INDEX}={raw!r} is not an integer") from None
    if not 0 <= index <= workers:
        raise PipelineError(
            f"tune --k8s: {cluster.K8S_INDEX}={index} is not in [0, --workers {workers}] (the"
            " Job's completions must be --workers + 1: the chief and the workers)"
        )
    ns = env.get(cluster.K8S_NAMESPACE, "") if namespace is None else namespace
    host = f"{job}-0.{svc}" + (f".{ns}.svc" if ns else "")
    return kerastuner_env(index, host, port)


def local_group(argv: Sequence[str], workers: int, max_restarts: int = 3) -> int:
    """Run `transfer-pipeline tune <argv> --workers N` as a chief and `workers` worker processes
    on 127.0.0.1 (restarted as the Trainer's local workers are); the exit status."""
    port = cluster.free_ports(1)[0]
    command = [sys.executable, "-m", "pipeline_components.cli", "tune", *argv]
    return cluster.LocalCluster(
        [*command, "--workers", str(workers)],
        workers + 1,
        max_restarts=max_restarts,
        worker_env=lambda i: kerastuner_env(i, "127.0.0.1", port),
        name="transfer-pipeline tune",
    ).run()
