"""Lineage queries over `<pipeline_root>`: which data is behind the model being served, and
which execution already produced an artifact from given inputs.

The served model is found from the serving directory itself, not from a record of a push: the
newest complete version under `<serving_dir>/<model_name>/` (what TF Serving serves, and the
Evaluator's baseline) is matched by content against the SavedModel of each completed execution
of the component that produces `Model` (the Pusher copies byte for byte; it relies on the same
equality not to push a model twice). That execution's record names the fingerprint of the
`Examples` it consumed; any completed execution that consumed the same fingerprint (the
StatisticsGen over those examples, ...) is then found by `find_artifact`. Nothing has to be
written at push time, a version pushed by an older release or another tool is recognised if its
Trainer execution is in this pipeline_root, and a version that is not is reported as such
rather than guessed.

Execution records are the runner's `<Component>/<n>.json`: `status`, `output_dir`,
`execution_id`, `run_id` and `inputs.inputs` = {input name: artifact fingerprint}.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import re
from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.artifacts import Artifact, ArtifactType
from pipeline_components.core.component import output_uri

log = logging.getLogger(__name__)


def _producer(artifact_type: ArtifactType) -> Any:
    from pipeline_components.core import registry

    for component in registry.components():
        if any(t.name == artifact_type.name for t in component.outputs.values()):
            return component
    return None


def completed_executions(pipeline_root: str, component_name: str) -> list[dict]:
    """The completed execution records of a component, newest first."""
    folder = artifacts.component_dir(pipeline_root, component_name)
    if not fsutil.isdir(folder):
        return []
    ids = sorted(
        (int(m.group(1)) for n in fsutil.listdir(folder) if (m := re.fullmatch(r"(\d+)\.json", n))),
        reverse=True,
    )
    records = []
    for execution_id in ids:
        try:
            rec = fsutil.read_json(fsutil.join(folder, f"{execution_id}.json"), "record")
        except Exception as e:  # one unreadable record must not hide the others
            log.warning("skipping execution record %s/%s.json: %s", folder, execution_id, e)
            continue
        if rec.get("status") == "completed" and fsutil.exists(str(rec.get("output_dir", ""))):
            records.append(rec)
    return records


def input_fingerprint(record: dict, component: Any, input_type: ArtifactType) -> str | None:
    """The fingerprint an execution recorded for its input of `input_type`, if it had one."""
    fingerprints = (record.get("inputs") or {}).get("inputs") or {}
    for name, spec in component.inputs.items():
        if spec.type.name == input_type.name and name in fingerprints:
            return str(fingerprints[name])
    return None


def find_artifact(
    pipeline_root: str, produced: ArtifactType, consumed: ArtifactType, fingerprint: str
) -> Artifact | None:
    """The newest completed artifact of type `produced` made from an input of type `consumed`
    whose fingerprint was `fingerprint`, e.g. the statistics of given examples."""
    component = _producer(produced)
    if component is None:
        return None
    for rec in completed_executions(pipeline_root, component.name):
        if input_fingerprint(rec, component, consumed) == fingerprint:
            uri = output_uri(produced, rec["output_dir"])
            if fsutil.exists(uri):
                return Artifact(produced, uri, component.name, rec.get("execution_id"))
    return None


# ------------------------------------------------------------------------ the served model


def _listing(root: str) -> list[tuple[str, int]]:
    """(relative path, size) of every file under root, sorted."""
    out = []
    gfile = fsutil.gfile()
    base = root.rstrip("/").replace("\\", "/")
    for dirpath, _dirs, files in gfile.walk(root):
        for name in files:
            full = fsutil.join(dirpath, name)
            rel = posixpath.relpath(full.replace("\\", "/"), base)
            out.append((rel, int(gfile.stat(full).length)))
    return sorted(out)


def _same_file(a: str, b: str) -> bool:
    gfile = fsutil.gfile()
    with gfile.GFile(a, "rb") as fa, gfile.GFile(b, "rb") as fb:
        while True:
            chunk = fa.read(1 << 22)
            if chunk != fb.read(1 << 22):
                return False
            if not chunk:
                return True


def same_tree(a: str, b: str) -> bool:
    """True when two directories hold the same files with the same bytes (what
    fsutil.tree_fingerprint compares). Cheap when they differ: file lists and sizes first, then
    contents smallest file first (a retrained model differs in its small variables index),
    stopping at the first difference."""
    listing = _listing(a)
    if listing != _listing(b):
        return False
    return all(
        _same_file(fsutil.join(a, rel), fsutil.join(b, rel))
        for rel, _size in sorted(listing, key=lambda f: f[1])
    )


@dataclasses.dataclass(frozen=True)
class ServedData:
    """The newest served version and, when found, the examples it was trained on."""

    version: int
    path: str
    examples_fingerprint: str | None = None
    trainer_execution: int | None = None
    run_id: str | None = None
    reason: str = ""  # why the examples were not found

    def describe(self) -> str:
        return f"served version {self.version} ({self.path})"


def served_model(serving_dir: str, model_name: str) -> tuple[int, str] | None:
    """(version, path) of the newest complete version under <serving_dir>/<model_name>/."""
    versions = artifacts.served_versions(artifacts.model_base_path(serving_dir, model_name))
    if not versions:
        return None
    newest = max(versions)
    return newest, versions[newest]


def served_examples(pipeline_root: str, serving_dir: str, model_name: str) -> ServedData | None:
    """What the currently served model was trained on; None when nothing is served."""
    served = served_model(serving_dir, model_name)
    if served is None:
        return None
    version, path = served
    trainer = _producer(artifacts.MODEL)
    if trainer is None:
        return ServedData(version, path, reason="no registered component produces a Model")
    for rec in completed_executions(pipeline_root, trainer.name):
        model_dir = output_uri(artifacts.MODEL, rec["output_dir"])
        if fsutil.isdir(model_dir) and same_tree(path, model_dir):
            fingerprint = input_fingerprint(rec, trainer, artifacts.EXAMPLES)
            return ServedData(
                version,
                path,
                fingerprint,
                rec.get("execution_id"),
                rec.get("run_id"),
                "" if fingerprint else f"{trainer.name} execution records no Examples input",
            )
    return ServedData(
        version,
        path,
        reason=f"no {trainer.name} execution in {pipeline_root} produced this model",
    )


def served_statistics(pipeline_root: str, served: ServedData) -> Artifact | None:
    """The ExampleStatistics of the data behind the served model, when it records its examples
    and pipeline_root still has their statistics: the baseline that ExampleValidator compares
    with and the schema SchemaGen wrote for it."""
    if not served.examples_fingerprint:
        return None
    return find_artifact(
        pipeline_root, artifacts.EXAMPLE_STATISTICS, artifacts.EXAMPLES, served.examples_fingerprint
    )
