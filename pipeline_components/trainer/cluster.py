"""The Trainer's multi-worker cluster, without TensorFlow: `TF_CONFIG` read, built for local
worker processes or from a Kubernetes Indexed Job, and the launcher behind
`transfer-pipeline train --workers N --local`.

`TF_CONFIG` is TensorFlow's own cluster description (tf.distribute.cluster_resolver
.TFConfigClusterResolver): `{"cluster": {"chief": [...], "worker": ["host:port", ...]},
"task": {"type": "worker", "index": i}}`. The chief is the `chief` task, or worker 0 when there is
none (TensorFlow's rule); it alone writes the Trainer's artifacts.

A worker whose peer is lost (killed, preempted, its node gone) exits with WORKER_LOST_EXIT (75,
EX_TEMPFAIL): restart it, and the group resumes from the last finished epoch. The local launcher
and the Kubernetes Job (k8s/jobs/train-multiworker) both restart such a worker; a usage or
configuration error (exit 2 or 1) is not retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from pipeline_components.core import children
from pipeline_components.core.errors import PipelineError

log = logging.getLogger(__name__)

ENV = "TF_CONFIG"
WORKER_LOST_EXIT = 75
DEFAULT_PORT = 2222  # TensorFlow's conventional gRPC port for a worker
# Environment of a Kubernetes Indexed Job's pod: the index is set by Kubernetes, the others by the
# manifest (k8s/jobs/train-multiworker/job.yaml).
K8S_INDEX = "JOB_COMPLETION_INDEX"
K8S_JOB_NAME = "JOB_NAME"
K8S_SERVICE = "TRAINER_SERVICE"
K8S_NAMESPACE = "POD_NAMESPACE"


class WorkerLost(PipelineError):
    """A peer of this worker is gone; restarting this worker makes the group resume."""

    exit_code = WORKER_LOST_EXIT


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in a multi-worker cluster."""

    addresses: tuple[str, ...]  # every worker, the chief first
    task_type: str  # "chief" or "worker", as TF_CONFIG names this task
    task_index: int  # its index among the tasks of that type
    rank: int  # its position in `addresses`: 0 is the chief; also its input shard

    @property
    def num_workers(self) -> int:
        return len(self.addresses)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def parse_tf_config(text: str) -> Cluster:
    """TF_CONFIG's text -> Cluster; a one-line PipelineError naming what is wrong."""
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        task_type, task_index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise PipelineError(
            f"{ENV}: not a TensorFlow cluster spec ({type(e).__name__}: {e}); expected"
            ' {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    if not isinstance(cluster, dict):
        raise PipelineError(f"{ENV}: cluster must be a mapping of job name to addresses")
    others = sorted(set(cluster) - {"chief", "worker"})
    if others:
        raise PipelineError(
            f"{ENV}: cluster has {', '.join(others)} tasks; the Trainer runs"
            " MultiWorkerMirroredStrategy, which takes chief and worker tasks only"
        )
    chief = [str(a) for a in cluster.get("chief") or []]
    workers = [str(a) for a in cluster.get("worker") or []]
    if len(chief) > 1:
        raise PipelineError(f"{ENV}: at most one chief task, got {len(chief)}")
    if task_type not in ("chief", "worker"):
        raise PipelineError(f"{ENV}: task type must be chief or worker, got {task_type!r}")
    size = len(chief) if task_type == "chief" else len(workers)
    if not 0 <= task_index < size:
        raise PipelineError(
            f"{ENV}: task {task_type} {task_index} is not in the cluster ({size} {task_type} tasks)"
        )
    rank = 0 if task_type == "chief" else task_index + len(chief)
    return Cluster(tuple(chief + workers), task_type, task_index, rank)


def read_tf_config(environ: Mapping[str, str] | None = None) -> Cluster | None:
    """The cluster TF_CONFIG names, or None when it is unset or empty."""
    text = (os.environ if environ is None else environ).get(ENV, "").strip()
    return parse_tf_config(text) if text else None


def multi_worker_cluster(environ: Mapping[str, str] | None = None) -> Cluster | None:
    """The cluster when TF_CONFIG names more than one worker (the chief counts), else None."""
    cluster = read_tf_config(environ)
    return cluster if cluster is not None and cluster.num_workers > 1 else None


def tf_config(addresses: Sequence[str], index: int) -> dict:
    """TF_CONFIG of worker `index` among `addresses` (no separate chief: worker 0 is it)."""
    if not 0 <= index < len(addresses):
        raise PipelineError(f"worker index {index} is not in 0..{len(addresses) - 1}")
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


# ---------------------------------------------------------------------------- Kubernetes


def k8s_addresses(
    job_name: str, service: str, workers: int, port: int = DEFAULT_PORT, namespace: str = ""
) -> list[str]:
    """The workers of an Indexed Job behind a headless Service: pod i's hostname is
    `<job>-<i>` and, with `subdomain: <service>`, its DNS name `<job>-<i>.<service>` (in the
    pod's namespace; `.<namespace>.svc` appended when given)."""
    suffix = f".{namespace}.svc" if namespace else ""
    return [f"{job_name}-{i}.{service}{suffix}:{port}" for i in range(workers)]


def tf_config_from_k8s(
    workers: int,
    environ: Mapping[str, str] | None = None,
    *,
    job_name: str | None = None,
    service: str | None = None,
    namespace: str | None = None,
    port: int = DEFAULT_PORT,
) -> dict:
    """TF_CONFIG for this pod of an Indexed Job: its index from JOB_COMPLETION_INDEX (set by
    Kubernetes), the job name and headless Service from the arguments or JOB_NAME /
    TRAINER_SERVICE (POD_NAMESPACE optional)."""
    env = os.environ if environ is None else environ
    raw = env.get(K8S_INDEX)
    if raw is None:
        raise PipelineError(
            f"--tf-config-from-k8s: {K8S_INDEX} is not set (it is set in the pods of a Job with"
            " completionMode: Indexed)"
        )
    try:
        index = int(raw)
    except ValueError:
        raise PipelineError(
            f"--tf-config-from-k8s: {K8S_INDEX}={raw!r} is not an integer"
        ) from None
    if workers < 2:
        raise PipelineError(
            f"--workers: a multi-worker job needs at least 2 workers, got {workers}"
        )
    if not 0 <= index < workers:
        raise PipelineError(
            f"--tf-config-from-k8s: {K8S_INDEX}={index} is not below --workers {workers}"
            " (the Job's completions and --workers must agree)"
        )
    job_name = job_name or env.get(K8S_JOB_NAME, "")
    service = service or env.get(K8S_SERVICE, "")
    for what, value, var in (
        ("--k8s-job-name", job_name, K8S_JOB_NAME),
        ("--k8s-service", service, K8S_SERVICE),
    ):
        if not value:
            raise PipelineError(f"--tf-config-from-k8s: give {what} or set {var}")
    namespace = env.get(K8S_NAMESPACE, "") if namespace is None else namespace
    addresses = k8s_addresses(job_name, service, workers, port, namespace)
    return tf_config(addresses, index)


# ---------------------------------------------------------------------------- local launcher


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free on `host` now (all held open together, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
        return f"signal {-returncode}"
    return f"exit status {returncode}"


def _pump(stream: IO[str], out: IO[str], prefix: str) -> None:
    for line in stream:
        out.write(prefix + line)
        out.flush()


class LocalCluster:
    """N worker processes of one command on 127.0.0.1, each with its own TF_CONFIG.

    Worker 0 (the chief) prints as if run alone; the others' output goes to stderr, each line
    prefixed `[worker i] `. Like a Kubernetes Indexed Job with backoffLimitPerIndex, a worker that
    fails for any reason other than a usage or configuration error (exit 2 or 1) is started again
    with the same TF_CONFIG, up to `max_restarts` times each; the group then resumes from its
    last finished epoch."""

    def __init__(
        self,
        argv: Sequence[str],
        workers: int,
        *,
        max_restarts: int = 3,
        restart_delay: float = 1.0,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        worker_env: Callable[[int], Mapping[str, str]] | None = None,
        name: str = "transfer-pipeline train",
    ):
        """`worker_env(i)`: the variables that tell worker i its place (default: TF_CONFIG of
        a MultiWorkerMirroredStrategy group on free ports); `name` prefixes its messages."""
        if workers < 1:
            raise PipelineError(f"--workers must be >= 1, got {workers}")
        self.argv, self.workers, self.max_restarts = list(argv), workers, max_restarts
        self.restart_delay = restart_delay
        self.env = dict(os.environ if env is None else env)
        self.addresses = [f"{host}:{p}" for p in free_ports(workers, host)]
        self.tf_workers = worker_env is None  # the addresses are the workers'
        self.worker_env = worker_env or (lambda i: {ENV: json.dumps(tf_config(self.addresses, i))})
        self.name = name
        self.procs: list[subprocess.Popen | None] = [None] * workers
        self.restarts = [0] * workers
        self._threads: list[threading.Thread] = []

    def _start(self, i: int) -> None:
        env = {**self.env, **self.worker_env(i), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(  # dies with this launcher (core/children.py)
            self.argv,
            **children.popen_options(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.procs[i] = proc
        prefix = "" if i == 0 else f"[worker {i}] "
        for stream, out in (
            (proc.stdout, sys.stdout if i == 0 else sys.stderr),
            (proc.stderr, sys.stderr),
        ):
            t = threading.Thread(target=_pump, args=(stream, out, prefix), daemon=True)
            t.start()
            self._threads.append(t)
        print(
            f"{self.name}: started worker {i} (pid {proc.pid})"
            + (f" at {self.addresses[i]}" if self.tf_workers else ""),
            file=sys.stderr,
            flush=True,
        )

    def _stop_all(self) -> None:
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            children.signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in live:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                children.signal_group(p, children.KILL)
                p.wait()

    def run(self) -> int:
        """Start every worker, restart failed ones, return 0 when all succeeded (else the first
        unrecoverable exit status)."""
        done = [False] * self.workers
        pending: dict[int, float] = {}  # worker -> when to start it again
        try:
            for i in range(self.workers):
                self._start(i)
            while not all(done):
                now = time.monotonic()
                for i, when in list(pending.items()):
                    if now >= when:
                        del pending[i]
                        self._start(i)
                for i, proc in enumerate(self.procs):
                    if done[i] or i in pending or proc is None:
                        continue
                    rc = proc.poll()
                    if rc is None:
                        continue
                    if rc == 0:
                        done[i] = True
                        continue
                    what = describe_exit(rc)
                    if rc in (1, 2) or self.restarts[i] >= self.max_restarts:
                        why = "not retried" if rc in (1, 2) else "no restarts left"
                        print(
                            f"{self.name}: worker {i} failed ({what}, {why});"
                            " stopping the other workers",
                            file=sys.stderr,
                            flush=True,
                        )
                        self._stop_all()
                        return rc if rc > 0 else 1
                    self.restarts[i] += 1
                    delay = self.restart_delay * 2 ** (self.restarts[i] - 1)
                    print(
                        f"{self.name}: worker {i} exited ({what}); restarting it in"
                        f" {delay:.0f}s ({self.restarts[i]}/{self.max_restarts})",
                        file=sys.stderr,
                        flush=True,
                    )
                    pending[i] = now + delay
                time.sleep(0.2)
            return 0
        except KeyboardInterrupt:
            self._stop_all()
            return 130
        finally:
            for t in self._threads:
                t.join(5)
