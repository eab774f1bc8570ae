"""The version registry of a served model: its data, its persistence and the labels it gives
`models.config` (written by serving/model_config.py, the one module that reads and writes that
file; pusher/versions.py takes the registry's lock and holds the commands; pusher/journal.py the
push sequence).

State, next to the model base path `<serving_dir>/<model_name>/` (core/artifacts.py):

- `<serving_dir>/_versions/<model_name>.json`, the registry: every version ever pushed with its
  content fingerprint, accuracy, push time, run id, labels and state (`served`, `rolled_back`,
  `removed` by retention), plus an audit log of pushes, rollbacks and promotions. The Pusher
  refuses a model whose fingerprint was rolled back, and numbers new versions above every
  version ever pushed (a rolled-back number is never reused).
- `<serving_dir>/models.config`, the ModelServerConfig TF Serving reads with
  `--model_config_file` and re-reads every `--model_config_file_poll_wait_seconds`: one entry per
  model pushed there (entries of other models are kept as they are), policy `all`, and the
  labels `stable` and `canary`, only ever on versions that exist.

Why policy `all`: TF Serving moves a label only to a version that is already loaded, and it
checks the labels *before* applying the rest of a new config. With a `specific` policy, a
config that adds version N and labels it in one write fails forever (N only starts loading once
the config applies). With `all`, N is loaded from the file system poll on its own, so a label
move that arrives first fails once and succeeds at the next config poll. A restart applies
every label as new, which `--allow_version_labels_for_unavailable_models` permits
(tensorflow/serving#1608); the Kubernetes Deployment sets it. Every version kept on disk is
loaded, so `pusher.keep_versions` bounds the serving memory.

A rollback first moves `stable` to the target (already loaded), then moves the newer versions
out of the base path to `<serving_dir>/_rolled_back/<model_name>/<version>/` (not deleted): TF
Serving unloads them within a poll interval. On object stores the move is a copy, then a delete.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any, TypeVar

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.errors import PipelineError
from serving import model_config

log = logging.getLogger(__name__)

STABLE = "stable"
CANARY = "canary"
LABELS = (STABLE, CANARY)
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
R = TypeVar("R", bound="VersionRegistry")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def check_model_name(model_name: str) -> None:
    if not MODEL_NAME.fullmatch(model_name):
        raise PipelineError(f"model name {model_name!r} must be letters, digits, '_', '.', '-'")


class VersionRegistry:
    """The registry and labels of one model under one serving_dir (see the module docstring):
    its data and persistence. Change it only holding its lock: pusher/versions.py's
    `ModelVersions.locked()`, which also loads and repairs it."""

    def __init__(self, serving_dir: str, model_name: str):
        check_model_name(model_name)
        self.serving_dir = str(serving_dir)
        self.model_name = model_name
        self.base_path = artifacts.model_base_path(self.serving_dir, model_name)
        self.path = artifacts.version_registry_path(self.serving_dir, model_name)
        self.data: dict[str, Any] = {
            "model_name": model_name,
            "labels": {},
            "versions": {},
            "events": [],
        }
        self.repaired: list[dict] = []  # what taking the lock repaired (pusher/journal.py)

    # -- persistence -------------------------------------------------------------------------

    def exists(self) -> bool:
        return fsutil.exists(self.path)

    def load(self: R) -> R:
        if fsutil.exists(self.path):
            data = fsutil.read_json(self.path, "version registry")
            if not isinstance(data, dict) or not isinstance(data.get("versions"), dict):
                raise PipelineError(f"version registry {self.path} is not a registry")
            self.data = data
        return self

    def save(self) -> None:
        fsutil.makedirs(fsutil.parent(self.path))
        fsutil.write_json(self.path, self.data)

    def pending(self) -> dict | None:
        """The journal of a push in progress (or interrupted): pusher/journal.py."""
        pending = self.data.get("pending")
        return dict(pending) if isinstance(pending, dict) else None

    # -- queries -----------------------------------------------------------------------------

    def on_disk(self) -> dict[int, str]:
        """{version: path} of the complete versions in the base path (what TF Serving loads)."""
        return artifacts.served_versions(self.base_path)

    def labels(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.data["labels"].items())}

    def version(self, v: int) -> dict | None:
        return self.data["versions"].get(str(v))

    def max_version(self) -> int:
        """The highest version number ever pushed or being pushed (rolled back, removed and
        abandoned ones included)."""
        pending = self.pending()
        return max(
            [int(v) for v in self.data["versions"]]
            + ([int(pending["version"])] if pending else []),
            default=0,
        )

    def rolled_back(self, fingerprint: str) -> dict | None:
        """The registry entry of a rolled-back version with this content fingerprint."""
        for entry in self.data["versions"].values():
            if entry.get("state") == "rolled_back" and entry.get("fingerprint") == fingerprint:
                return dict(entry)
        return None

    def rolled_back_entries(self) -> list[dict]:
        return [
            {k: e.get(k) for k in ("version", "fingerprint", "rolled_back_at", "reason")}
            for e in self._entries()
            if e.get("state") == "rolled_back"
        ]

    def _entries(self) -> list[dict]:
        return [self.data["versions"][k] for k in sorted(self.data["versions"], key=int)]

    def summary(self) -> dict:
        """Labels and rollback state, for push.json, run.json and the report."""
        return {
            "labels": self.labels(),
            "served_versions": sorted(self.on_disk()),
            "rolled_back": self.rolled_back_entries(),
            "models_config": artifacts.models_config_path(self.serving_dir),
        }

    # -- changes -----------------------------------------------------------------------------

    def event(self, action: str, **fields: Any) -> None:
        self.data["events"].append({"at": now(), "action": action, **fields})

    def sync(self) -> None:
        """Reconcile with the disk: versions found there but not registered (pushed before the
        registry existed, or copied by hand) are adopted; registered ones gone from the disk
        are `removed`; a label on a version that does not exist is dropped; without a
        `stable` label the newest version is stable (what an unlabelled client gets)."""
        on_disk = self.on_disk()
        for v, path in on_disk.items():
            entry = self.version(v)
            if entry is None or entry.get("state") != "served":
                self.data["versions"][str(v)] = {
                    **(entry or {}),
                    "version": v,
                    "fingerprint": fsutil.tree_fingerprint(path),
                    "state": "served",
                    "pushed_at": (entry or {}).get("pushed_at"),
                    "note": "found in the base path",
                }
        for entry in self._entries():
            if entry.get("state") == "served" and entry["version"] not in on_disk:
                entry.update(state="removed", removed_at=now())
        labels = {k: v for k, v in self.labels().items() if v in on_disk}
        if STABLE not in labels and on_disk:
            labels[STABLE] = max(on_disk)
        if labels.get(CANARY) == labels.get(STABLE):
            labels.pop(CANARY, None)
        self.data["labels"] = labels

    def apply_push(self, pending: dict) -> dict[str, int]:
        """Register the version a push (its journal, pusher/journal.py) put in place and label
        it: `stable` (a canary is then dropped), or `canary` (also `stable` when there is no
        stable version yet). In memory: the journal saves it once the push is done."""
        version, label = int(pending["version"]), pending["label"]
        if label not in LABELS:
            raise PipelineError(f"version label must be one of {list(LABELS)}, got {label!r}")
        self.data["versions"][str(version)] = {
            "version": version,
            "fingerprint": pending["fingerprint"],
            "state": "served",
            "pushed_at": now(),
            "pushed_as": label,
            "run_id": pending.get("run_id"),
            "accuracy": pending.get("accuracy"),
            "source": pending.get("source"),
            **(pending.get("extra") or {}),
        }
        labels = self.labels()
        if label == STABLE or STABLE not in labels:
            labels[STABLE] = version
        if label == STABLE:
            labels.pop(CANARY, None)
        else:
            labels[CANARY] = version
        self.data["labels"] = labels
        return labels

    def mark_removed(self, versions: list[int]) -> None:
        for v in versions:
            entry = self.version(v)
            if entry is not None and entry.get("state") == "served":
                entry.update(state="removed", removed_at=now())
        if versions:
            self.event("retention", removed=versions)

    def rollback(self, to: int | None = None, reason: str = "") -> dict:
        """Serve `to` (default: the newest version older than the newest) as stable and move
        every newer version aside; their fingerprints are refused by the Pusher from now on."""
        self.sync()
        on_disk = self.on_disk()
        if not on_disk:
            raise PipelineError(
                f"no served versions of model {self.model_name} in {self.base_path}"
            )
        newest = max(on_disk)
        if to is None:
            older = [v for v in on_disk if v < newest]
            if not older:
                raise PipelineError(
                    f"nothing to roll back to: version {newest} is the only served version of "
                    f"model {self.model_name}"
                )
            to = max(older)
        elif to not in on_disk:
            served = ", ".join(map(str, sorted(on_disk)))
            raise PipelineError(
                f"version {to} of model {self.model_name} is not served (served: {served})"
            )
        newer = sorted(v for v in on_disk if v > to)
        if not newer:
            raise PipelineError(
                f"nothing to roll back: version {to} is the newest served version of model "
                f"{self.model_name}"
            )
        labels = self.labels()
        labels[STABLE] = to
        if labels.get(CANARY, 0) >= to:
            labels.pop(CANARY, None)
        self.data["labels"] = labels
        # Labels first (onto a loaded version), then the versions leave the base path.
        self.save()
        self.write_models_config()
        at = now()
        moved = []
        for v in newer:
            entry = self.data["versions"][str(v)]
            dest = move_aside(on_disk[v], self.serving_dir, self.model_name, v)
            entry.update(
                state="rolled_back", rolled_back_at=at, moved_to=dest, reason=reason or None
            )
            moved.append({"version": v, "fingerprint": entry["fingerprint"], "moved_to": dest})
            self.save()
        self.event("rollback", to=to, rolled_back=newer, reason=reason or None)
        self.save()
        self.write_models_config()
        log.info("model %s: rolled back to version %d; moved aside %s", self.model_name, to, newer)
        return {"to": to, "rolled_back": moved, "labels": self.labels()}

    def promote(self, version: int | None = None) -> dict:
        """Move `stable` to `version` (default: the canary)."""
        self.sync()
        labels = self.labels()
        if version is None:
            if CANARY not in labels:
                raise PipelineError(
                    f"model {self.model_name} has no canary to promote; give --version"
                )
            version = labels[CANARY]
        on_disk = self.on_disk()
        if version not in on_disk:
            served = ", ".join(map(str, sorted(on_disk))) or "none"
            raise PipelineError(
                f"version {version} of model {self.model_name} is not served (served: {served})"
            )
        previous = labels.get(STABLE)
        labels[STABLE] = version
        if labels.get(CANARY, 0) <= version:
            labels.pop(CANARY, None)
        self.data["labels"] = labels
        self.event("promote", version=version, previous_stable=previous)
        self.save()
        self.write_models_config()
        return {"stable": version, "previous_stable": previous, "labels": self.labels()}

    # -- models.config -----------------------------------------------------------------------

    def config_labels(self) -> dict[str, int] | None:
        """This model's labels as `models.config` has them now; None without an entry."""
        return model_config.entry_labels(self.serving_dir, self.model_name)

    def served_labels(self) -> dict[str, int]:
        """The labels `models.config` should have: the registry's, on versions that exist."""
        on_disk = self.on_disk()
        return {k: v for k, v in self.labels().items() if v in on_disk}

    def write_models_config(self) -> str:
        """Rewrite this model's entry of `<serving_dir>/models.config` (serving/model_config.py:
        other models' entries kept, policy `all`, labels only on versions that exist; atomic,
        under the serving_dir's models.config lock)."""
        return model_config.write_model_entry(
            self.serving_dir, self.model_name, self.base_path, self.served_labels()
        )

    # -- listing -----------------------------------------------------------------------------

    def rows(self) -> list[dict]:
        """One row per version ever pushed (newest first): state, labels, accuracy, push time,
        fingerprint."""
        labels = self.labels()
        rows = []
        for entry in reversed(self._entries()):
            v = entry["version"]
            rows.append(
                {
                    "version": v,
                    "state": entry.get("state"),
                    "labels": sorted(k for k, lv in labels.items() if lv == v),
                    "accuracy": entry.get("accuracy"),
                    "pushed_at": entry.get("pushed_at"),
                    "fingerprint": entry.get("fingerprint"),
                    "run_id": entry.get("run_id"),
                    "rolled_back_at": entry.get("rolled_back_at"),
                    "reason": entry.get("reason"),
                    **({"contract_change": entry["contract_change"]}
                       if entry.get("contract_change") else {}),
                }
            )  # fmt: skip
        return rows


def move_aside(src: str, serving_dir: str, model_name: str, version: int) -> str:
    """Move a version directory out of the base path (not deleted), complete or not at all at
    its destination."""
    dest = artifacts.rolled_back_path(serving_dir, model_name, version)
    if fsutil.exists(dest):  # moved aside before (a number reused by hand): keep both
        dest = f"{dest}-{dt.datetime.now().strftime('%Y%m%d%H%M%S')}"
    fsutil.makedirs(fsutil.parent(dest))
    if fsutil.is_remote(src):
        fsutil.copy_tree(src, dest)
        fsutil.rmtree(src)
    else:
        fsutil.rename(src, dest)  # one file system: atomic
    return dest
