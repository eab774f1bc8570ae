"""A push that is correct after a crash at any point: a journal in the version registry, the
write sequence, and the repair that finishes or undoes a push a dead process left unfinished.

The sequence, under the model's registry lock (`_versions/<model>.json.lock`):

1. intent: the registry `_versions/<model>.json` gets `pending` = {version, fingerprint, label,
   keep_versions, run_id, accuracy, source, extra, started_at} (one atomic write). Nothing a
   client sees has changed.
2. version: the model is copied to `<base>/.N.tmp-*` and renamed to `<base>/N` (object stores:
   staged, then copied in with saved_model.pb last). From here on TF Serving (policy `all`)
   loads N and answers requests without a version or label with it, as the latest.
3. labels: `models.config` is rewritten with the labels this push gives (`stable` -> N, or
   `canary` -> N); TF Serving moves them at its next config poll.
4. retention: the oldest unlabelled versions beyond keep_versions are deleted, saved_model.pb
   first (a version is gone for the server from that first deletion on).
5. done: the registry records N as served with its labels and the removals, logs the push and
   drops `pending` (one atomic write).

Between 2 and 3 `latest` is N while `stable` is still the previous version: each is a complete
version, and every push passes through this state (TF Serving loads N from its file-system poll
and moves labels from its config poll). A crash there leaves it until the repair.

The repair (`repair`) runs whenever the lock is taken: by the next Pusher execution, `versions`,
`rollback`, `promote`, `gc` and the start of `transfer-pipeline run` (the Pusher's `recover`),
and by a Pusher that failed with an error, at once. The lock proves the
process that wrote the journal is gone (a live holder keeps it). It
- finishes the push forward (3, 4, 5) when version N is complete with the journal's
  fingerprint. Once N is in place, clients asking for the latest version have been answered by
  it, maybe for hours: taking it back would change what they get a second time, while N is a
  complete model whose push was decided (blessed, infra-validated). Finishing makes `stable`
  (or `canary`) and the registry agree with what `latest` already serves.
- rolls it back when N is absent or incomplete (the crash came before the rename, or during an
  object-store copy before saved_model.pb): what there is of N is deleted and `pending` is
  dropped (a `push_abandoned` event records it). No client could have seen N, so nothing
  visible changes; the next Pusher execution pushes the model again, as N.
- removes what interrupted pushes left: `.N.tmp-*` copies and `.claim-N` files (older
  Pusher versions) in the base path, `.staging/<model>-*` copies, the registry's temporary
  siblings; and rewrites models.config when it disagrees with the registry.
It reports each thing it did (push.json `repaired`, `transfer-pipeline versions`, run.json
`cleanup`, the log).
"""

from __future__ import annotations

import logging
import re

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.pusher.version_registry import LABELS, VersionRegistry, move_aside, now

log = logging.getLogger(__name__)

PENDING = "pending"
CLAIM_PREFIX = ".claim-"  # version numbers reserved by earlier Pusher versions
STAGING_DIR = ".staging"  # in serving_dir, beside the model folders: outside every base path
SAVED_MODEL_FILES = artifacts.SAVED_MODEL_FILES


# ------------------------------------------------------------------------------ versions


def remove_version(version_dir: str) -> None:
    """Delete a version folder, `saved_model.pb` first: from the first deletion on, no reader
    takes the half-deleted folder for a complete version."""
    for name in SAVED_MODEL_FILES:
        fsutil.remove(fsutil.join(version_dir, name))
    fsutil.rmtree(version_dir)


def apply_retention(model_path: str, keep_versions: int, protect: int | set[int]) -> list[int]:
    """Delete the oldest version directories beyond `keep_versions`, never one in `protect`
    (the version just pushed, the labelled ones); an incomplete one left behind counts too, so
    it is cleaned up in turn."""
    protected = {protect} if isinstance(protect, int) else set(protect)
    versions = artifacts.version_numbers(model_path)
    doomed = [v for v in versions[: max(0, len(versions) - keep_versions)] if v not in protected]
    for v in doomed:
        remove_version(fsutil.join(model_path, str(v)))
        log.info("retention: removed version %d (keeping the newest %d)", v, keep_versions)
    return doomed


# ------------------------------------------------------------------------------ sequence


def begin(versions: VersionRegistry, intent: dict) -> None:
    """Step 1: record the intent (`version`, `fingerprint`, `label`, `keep_versions`, and
    `run_id`, `accuracy`, `source`, `extra` for the registry entry)."""
    if intent["label"] not in LABELS:
        raise PipelineError(f"version label must be one of {list(LABELS)}, got {intent['label']!r}")
    if versions.pending() is not None:  # never: taking the lock repaired it
        raise PipelineError(f"model {versions.model_name} has an unfinished push")
    versions.data[PENDING] = {**intent, "started_at": now()}
    versions.save()


def finish(versions: VersionRegistry) -> dict:
    """Steps 3-5 for the journal's version, which is in place: labels in models.config,
    retention, then the registry. Each step can be redone, so a repair simply runs them."""
    pending = versions.pending()
    assert pending is not None
    version = int(pending["version"])
    labels = versions.apply_push(pending)
    versions.write_models_config()
    removed = apply_retention(
        versions.base_path, int(pending["keep_versions"]), {version, *labels.values()}
    )
    versions.mark_removed(removed)
    versions.event("push", version=version, label=pending["label"], run_id=pending.get("run_id"))
    del versions.data[PENDING]
    versions.sync()  # versions a crashed retention had already deleted: `removed`
    versions.save()
    return {"labels": versions.labels(), "removed_versions": removed}


def abandon(versions: VersionRegistry, why: str) -> str | None:
    """Undo a push whose version never became complete: delete what there is of it and drop
    the journal (an event records it); its number is free again, no client having seen it. A
    complete folder that is not the journal's model is moved aside instead, and its number
    recorded as `abandoned`. Returns where a folder was moved, if one was."""
    pending = versions.pending()
    assert pending is not None
    version = int(pending["version"])
    path = artifacts.version_path(versions.base_path, version)
    moved_to = None
    if version in artifacts.version_numbers(versions.base_path):
        if artifacts.is_saved_model(path):
            moved_to = move_aside(path, versions.serving_dir, versions.model_name, version)
            versions.data["versions"][str(version)] = {
                "version": version,
                "fingerprint": pending["fingerprint"],
                "state": "abandoned",
                "abandoned_at": now(),
                "pushed_as": pending["label"],
                "run_id": pending.get("run_id"),
                "source": pending.get("source"),
                "reason": why,
                "moved_to": moved_to,
            }
        else:
            remove_version(path)
    versions.event("push_abandoned", version=version, run_id=pending.get("run_id"), reason=why)
    del versions.data[PENDING]
    versions.sync()
    versions.save()
    return moved_to


# -------------------------------------------------------------------------------- repair


def repair(versions: VersionRegistry) -> list[dict]:
    """Finish or roll back an interrupted push, remove what interrupted pushes left, and bring
    models.config in line with the registry (see the module docstring). Call it holding the
    model's registry lock, the registry loaded. Returns what it did (`describe` says it)."""
    repairs = []
    leftovers = _remove_leftovers(versions)
    pending = versions.pending()
    if pending is not None:
        repairs.append(_repair_pending(versions, pending))
    elif versions.exists() and (versions.config_labels() or {}) != versions.served_labels():
        before = versions.config_labels()
        versions.write_models_config()
        repairs.append(
            {"action": "models_config", "was": before, "labels": versions.served_labels()}
        )
    if leftovers:
        total = sum(item["bytes"] for item in leftovers)
        repairs.append({"action": "removed_leftovers", "removed": leftovers, "bytes": total})
    for item in repairs:
        log.warning("model %s: %s", versions.model_name, describe(item))
    return repairs


def _repair_pending(versions: VersionRegistry, pending: dict) -> dict:
    version = int(pending["version"])
    path = artifacts.version_path(versions.base_path, version)
    complete = version in versions.on_disk() and (
        fsutil.tree_fingerprint(path) == pending["fingerprint"]
    )
    about = {k: pending.get(k) for k in ("version", "fingerprint", "label", "run_id", "started_at")}
    if complete:
        return {"action": "finished", **about, **finish(versions)}
    why = (
        f"the push was interrupted before version {version} was complete"
        if version not in versions.on_disk()
        else f"version {version} does not hold the model the push recorded"
    )
    moved_to = abandon(versions, why)
    return {"action": "rolled_back", **about, "reason": why, "moved_to": moved_to}


def _leftovers(versions: VersionRegistry) -> list[str]:
    """Paths an interrupted push of this model left (only ever called under its lock)."""
    found = []
    base = versions.base_path
    if fsutil.isdir(base):
        found += [
            fsutil.join(base, n)
            for n in fsutil.listdir(base)
            if n.startswith(CLAIM_PREFIX) or fsutil.TEMPORARY.fullmatch(n)
        ]
    staging = fsutil.join(versions.serving_dir, STAGING_DIR)
    ours = re.compile(re.escape(versions.model_name) + r"-\d+-[0-9a-f]{8}")
    if fsutil.isdir(staging):
        found += [fsutil.join(staging, n) for n in fsutil.listdir(staging) if ours.fullmatch(n)]
    registry_dir = fsutil.parent(versions.path)
    prefix = f".{fsutil.basename(versions.path)}.tmp-"
    if fsutil.isdir(registry_dir):
        found += [
            fsutil.join(registry_dir, n)
            for n in fsutil.listdir(registry_dir)
            if n.startswith(prefix)
        ]
    return found


def _remove_leftovers(versions: VersionRegistry) -> list[dict]:
    removed = []
    for path in _leftovers(versions):
        size = fsutil.tree_bytes(path)
        fsutil.rmtree(path)
        removed.append({"path": path, "bytes": size})
    return removed


def describe(item: dict) -> str:
    """One line for a repair `repair` made."""
    action = item["action"]
    if action == "finished":
        labels = " ".join(f"{k}={v}" for k, v in item["labels"].items())
        return (
            f"finished the interrupted push of version {item['version']} as {item['label']} "
            f"(run {item.get('run_id') or '-'}, started {item.get('started_at')}): it was "
            f"already served as the latest version; labels now {labels}"
        )
    if action == "rolled_back":
        return (
            f"rolled back the interrupted push of version {item['version']} (run "
            f"{item.get('run_id') or '-'}): {item['reason']}; no client could see it"
        )
    if action == "models_config":
        return f"models.config had labels {item['was']}, the registry {item['labels']}: rewritten"
    return (
        f"removed {len(item['removed'])} leftover(s) of interrupted pushes "
        f"({item['bytes']} bytes): " + ", ".join(r["path"] for r in item["removed"])
    )
