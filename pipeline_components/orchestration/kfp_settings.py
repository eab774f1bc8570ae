"""pipeline.yaml's `kfp:` section: how `transfer-pipeline compile-kfp` lays the pipeline out on a
Kubeflow Pipelines cluster (image, volumes, resources per step, the GPU pool, retries).

It says how the pipeline runs, never what it computes: no cache key includes it. Light to import
(no kfp): the config loader reads it for every `pipeline.yaml`.

    kfp:
      image: registry.example.com/ml/transfer-pipeline:0.1.0   # or --image
      volumes: {pipeline-data: /data, pipeline-root: /pipeline_root,
                serving-models: /serving_models}           # PVC -> mount path, in every task
      resources:                                            # per step: default, gpu, or a name
        default: {cpu: 1, memory_gib: 4}
        gpu: {cpu: 4, memory_gib: 16, shm_gib: 2, timeout_hours: 24}
        Evaluator: {cpu: 2, memory_gib: 8}
      gpu: {count: 1, accelerator_type: nvidia.com/gpu, toleration_key: nvidia.com/gpu,
            node_selector: {cloud.google.com/gke-nodepool: gpu-pool}}
      retries: 3
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from typing import Any

from pipeline_components.core.config import option

# A Kubernetes object name (RFC 1123 subdomain), e.g. a PersistentVolumeClaim's.
K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
# A Kubernetes label key (an optional DNS-subdomain prefix and '/', then a name of at most 63
# characters) and a label value (such a name, or empty): the GPU pool's node selector and taint;
# also the shape of an extended resource name (nvidia.com/gpu) and Vertex AI's NVIDIA_L4.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
K8S_LABEL_KEY = re.compile(rf"({K8S_NAME.pattern}/)?{_LABEL_NAME}")
K8S_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")
# Keys of `resources` that are not a component's name.
DEFAULT, GPU = "default", "gpu"


@dataclasses.dataclass
class Resources:
    """What one step's pod asks for. Requests and limits are equal for memory (a step that
    outgrows its request is killed, not slowed), CPU has no limit unless `cpu_limit` is set."""

    cpu: float = option(1.0, gt=0, le=512, doc="CPU cores requested")
    cpu_limit: float | None = option(None, gt=0, le=512, doc="CPU limit (null: none)")
    memory_gib: float = option(4.0, gt=0, le=8192, doc="memory request and limit, GiB")
    shm_gib: float = option(
        0.0, ge=0, le=1024, doc="memory-backed /dev/shm, GiB (0: the runtime's 64 MiB)"
    )
    timeout_hours: float = option(
        12.0, gt=0, le=720, doc="the pod's activeDeadlineSeconds, per attempt"
    )


def _default_resources() -> dict[str, Resources]:
    return {
        DEFAULT: Resources(cpu=1.0, memory_gib=4.0, shm_gib=1.0, timeout_hours=6.0),
        GPU: Resources(cpu=4.0, memory_gib=16.0, shm_gib=2.0, timeout_hours=24.0),
    }


@dataclasses.dataclass
class GpuConfig:
    """The GPU pool, for the steps whose component declares `gpu = True` (the Trainer)."""

    count: int = option(1, ge=1, le=16, doc="GPUs per GPU step")
    # KFP on Kubernetes: the extended resource name. Vertex AI Pipelines: its accelerator type,
    # e.g. NVIDIA_L4 or NVIDIA_TESLA_T4.
    accelerator_type: str = option(
        "nvidia.com/gpu",
        doc="the GPU's resource name (KFP on Kubernetes) or accelerator type (Vertex AI: "
        "NVIDIA_L4)",
    )
    # nodeSelector of the GPU pool: the GPU Operator's label by default; GKE:
    # {cloud.google.com/gke-nodepool: gpu-pool}, EKS: {eks.amazonaws.com/nodegroup: gpu}.
    node_selector: dict[str, str] = option(
        factory=lambda: {"nvidia.com/gpu.present": "true"},
        doc="the GPU pool's node labels (GKE: cloud.google.com/gke-nodepool: <pool>)",
    )
    # The GPU pool's taint (tolerated with operator Exists, effect NoSchedule); null: untainted.
    toleration_key: str | None = option(
        "nvidia.com/gpu", doc="the GPU pool's taint, tolerated (Exists, NoSchedule); null: none"
    )

    def validate(self, fail: Any) -> None:
        """Each becomes a Kubernetes label key or value (or a resource name) in the spec."""
        if not K8S_LABEL_KEY.fullmatch(self.accelerator_type):
            fail(
                "accelerator_type", "a resource name such as nvidia.com/gpu", self.accelerator_type
            )
        if self.toleration_key is not None and not K8S_LABEL_KEY.fullmatch(self.toleration_key):
            fail("toleration_key", "a Kubernetes taint key", self.toleration_key)
        for key, value in self.node_selector.items():
            if not K8S_LABEL_KEY.fullmatch(key):
                fail("node_selector", "keyed by Kubernetes label keys", key)
            if not K8S_LABEL_VALUE.fullmatch(value):
                fail(f"node_selector.{key}", "a Kubernetes label value", value)


@dataclasses.dataclass
class KfpConfig:
    image: str | None = option(
        None, doc="the image every task runs (compile-kfp --image overrides it)"
    )
    # PersistentVolumeClaim name -> mount path, mounted into every task. A local data_root,
    # pipeline_root or serving_dir must lie under one of them (gs:// needs none).
    volumes: dict[str, str] = option(
        factory=dict, doc="PersistentVolumeClaim -> mount path, mounted into every task"
    )
    resources: dict[str, Resources] = option(
        factory=_default_resources,
        doc="per step: `default`, `gpu` (GPU steps) or a component's name",
    )
    gpu: GpuConfig = option(
        factory=GpuConfig, doc="the GPU pool, for components with gpu = True (the Trainer)"
    )
    # Retries of a task whose container failed (a crash, an out-of-memory kill, SIGTERM from a
    # graceful node shutdown on preemption). KFP retries any non-zero exit, so a step that failed
    # on bad input (exit 1 or 2) remembers it and its retries fail at once (`transfer-pipeline
    # step`). A pod deleted with its node is an Argo error, which KFP's retry does not cover.
    retries: int = option(3, ge=0, le=20, doc="retries of a task whose container failed")
    retry_backoff_seconds: int = option(60, ge=0, le=86400, doc="wait before the first retry")
    retry_backoff_factor: float = option(2.0, ge=1, le=10, doc="each wait this much longer")
    retry_backoff_max_seconds: int = option(3600, ge=1, le=604800, doc="KFP's backoff_max_duration")

    def validate(self, fail: Any) -> None:
        for claim, path in self.volumes.items():
            if not K8S_NAME.fullmatch(claim):
                fail("volumes", "PersistentVolumeClaim names (lowercase RFC 1123)", claim)
            if not posixpath.isabs(path) or posixpath.normpath(path) in ("/", "/dev/shm"):
                fail(f"volumes.{claim}", "an absolute mount path other than / and /dev/shm", path)
        paths = [posixpath.normpath(p) for p in self.volumes.values()]
        if len(set(paths)) != len(paths):
            fail("volumes", "distinct mount paths", self.volumes)
        from pipeline_components.core import registry

        known = {DEFAULT, GPU, *(c.name for c in registry.components())}
        for name in self.resources:
            if name not in known:
                fail("resources", f"keyed by one of {sorted(known)}", name)

    def resources_for(self, name: str, gpu: bool) -> Resources:
        """A step's resources: its own entry, else `gpu` for GPU steps, else `default`."""
        if name in self.resources:
            return self.resources[name]
        if gpu and GPU in self.resources:
            return self.resources[GPU]
        return self.resources.get(DEFAULT, Resources())
