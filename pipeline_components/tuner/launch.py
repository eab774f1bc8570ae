"""A tuning group: KerasTuner's chief (the oracle) and N workers (the trials), started here on
127.0.0.1 (`run_local`, like `train --workers N --local`) or as the pods of a Kubernetes Indexed
Job (`k8s_env`: k8s/jobs/tune-multiworker). Process 0 is the chief, process i >= 1 is worker i;
each learns its place from KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT
(KerasTuner's own variables) and runs `python -m pipeline_components.tuner.worker REQUEST`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.trainer import cluster
from pipeline_components.tuner import search

DEFAULT_PORT = 8000  # the oracle's gRPC port in a Kubernetes group
K8S_SERVICE = "TUNER_SERVICE"  # the headless Service of the Indexed Job


def kerastuner_env(index: int, oracle_host: str, port: int) -> dict[str, str]:
    """KerasTuner's variables of process `index` of a group: 0 is the chief."""
    return {
        search.TUNER_ID: search.CHIEF_ID if index == 0 else f"tuner{index}",
        search.ORACLE_IP: oracle_host,
        search.ORACLE_PORT: str(port),
    }


def k8s_env(environ: Mapping[str, str] | None = None, port: int = DEFAULT_PORT) -> dict[str, str]:
    """KerasTuner's variables in a pod of an Indexed Job: its index from JOB_COMPLETION_INDEX,
    the chief at `<job>-0.<service>` (pod 0's DNS name behind the headless Service)."""
    env = os.environ if environ is None else environ
    raw, job, service = (
        env.get(k, "") for k in (cluster.K8S_INDEX, cluster.K8S_JOB_NAME, K8S_SERVICE)
    )
    missing = [
        k
        for k, v in ((cluster.K8S_INDEX, raw), (cluster.K8S_JOB_NAME, job), (K8S_SERVICE, service))
        if not v
    ]
    if missing:
        raise PipelineError(
            f"tuner --k8s: {', '.join(missing)} not set (an Indexed Job's pod sets them)"
        )
    try:
        index = int(raw)
    except ValueError:
        raise PipelineError(f"tuner --k8s: {cluster.K8S_INDEX}={raw!r} is not an integer") from None
    namespace = env.get(cluster.K8S_NAMESPACE, "")
    host = f"{job}-0.{service}" + (f".{namespace}.svc" if namespace else "")
    return kerastuner_env(index, host, port)


def run_local(request: search.Request, workers: int, max_restarts: int = 3) -> dict[str, Any]:
    """The search with `workers` worker processes and a chief process on 127.0.0.1 (one worker:
    all in this process). Returns the summary (tuning.json)."""
    if workers < 1:
        raise PipelineError(f"tuner: workers must be >= 1, got {workers}")
    if workers == 1:
        return search.run_search(request)
    fsutil.rmtree(request.work_dir)
    port = cluster.free_ports(1)[0]
    with tempfile.TemporaryDirectory(prefix="transfer-pipeline-tune-") as tmp:
        request_file = os.path.join(tmp, "request.json")
        with open(request_file, "w", encoding="utf-8") as f:
            json.dump(request.to_json(), f)
        argv = [sys.executable, "-m", "pipeline_components.tuner.worker", request_file]
        group = cluster.LocalCluster(
            [*argv, "--workers", str(workers)],
            workers + 1,
            max_restarts=max_restarts,
            worker_env=lambda i: kerastuner_env(i, "127.0.0.1", port),
            name="tuner",
        )
        rc = group.run()
    if rc != 0:
        fsutil.rmtree(request.work_dir)
        raise PipelineError(f"tuner: the group failed ({cluster.describe_exit(rc)})")
    return dict(fsutil.read_json(fsutil.join(request.output_dir, artifacts.TUNING_SUMMARY)))
