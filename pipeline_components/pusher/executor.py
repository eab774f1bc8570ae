"""The Pusher's executor: copy a blessed SavedModel to `<serving_dir>/<model_name>/<version>/`
for TF Serving (the spec and CLI are in component.py).

TF Serving polls the model directory and loads any new numeric subdirectory, so a version
must appear complete or not at all: locally the copy goes to a hidden temporary sibling that
is renamed into place. Object stores have no atomic rename; there a version counts as present
once its `saved_model.pb` exists (the server and the pusher both use that definition): the model
is staged and checked outside every model base path (`<serving_dir>/.staging/`), copied in with
`saved_model.pb` last after the rest is listed complete, and removed `saved_model.pb` first.
Decisions on object stores use listings, never `exists()`: TensorFlow's GCS stat cache answers
`exists()` from up to 5 s ago.

A push is a journalled sequence under the model's registry lock (pusher/journal.py): the intent
in the registry, then the version directory, then the labels in models.config, then retention,
then done; whoever takes the lock next finishes or rolls back a push a dead process left, so a
crash at any point never leaves a split. Racing pushers wait for each other's lock; the version
number is above every one on disk and every one ever pushed or being pushed.

Around the copy (pusher/version_registry.py): a model whose fingerprint was rolled back is
refused, a model whose serving contract (labels, signatures, input; core/contract.py) differs
from the newest served version's is refused unless `allow_contract_change` (then the change is
recorded), the new version is labelled `stable` or `canary`, retention never deletes a labelled
version, and `<serving_dir>/models.config` is rewritten with the labels.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from typing import Any

from pipeline_components.core import artifacts, contract, fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.pusher import journal
from pipeline_components.pusher.config import PusherConfig
from pipeline_components.pusher.journal import STAGING_DIR, remove_version
from pipeline_components.pusher.version_registry import check_model_name
from pipeline_components.pusher.versions import ModelVersions

log = logging.getLogger(__name__)

PUSH_FILE = artifacts.PUSH_FILE
SAVED_MODEL_FILES = artifacts.SAVED_MODEL_FILES


def next_version(versions: ModelVersions) -> int:
    """A number above every version directory in the base path (complete or not, a stray one
    copied by hand included) and every one ever pushed (a rolled-back number is not reused)."""
    on_disk = artifacts.version_numbers(versions.base_path)
    return max([*on_disk, versions.max_version()], default=0) + 1


def tree_sizes(path: str) -> dict[str, int]:
    """{relative path: size} of every file below path. Which files: from listings (never
    cached); sizes: stat, fresh for files this process just wrote (a write clears its entry)."""
    gfile, root = fsutil.gfile(), str(path).rstrip("/")
    sizes = {}
    for dirpath, _dirs, files in gfile.walk(root):
        for name in files:
            full = fsutil.join(dirpath, name)
            rel = posixpath.relpath(full.replace("\\", "/"), root.replace("\\", "/"))
            sizes[rel] = gfile.stat(full).length
    return sizes


def _check_copy(expected: dict[str, int], path: str, what: str) -> None:
    got = tree_sizes(path)
    if got != expected:
        wrong = sorted(set(expected.items()) ^ set(got.items()))
        raise PipelineError(f"{what} {path} does not match the model: {wrong[0][0]} differs")


def _copy_into_object_store(model_dir: str, model_path: str, final: str) -> None:
    """Stage outside the model base path and check it, then copy in: everything but
    saved_model.pb, check that, then saved_model.pb. Any failure removes the version
    (saved_model.pb first); the staging copy is always removed."""
    staging = fsutil.join(
        fsutil.parent(model_path),
        STAGING_DIR,
        f"{fsutil.basename(model_path)}-{fsutil.basename(final)}-{uuid.uuid4().hex[:8]}",
    )
    try:
        fsutil.copy_tree(model_dir, staging)
        expected = tree_sizes(model_dir)
        _check_copy(expected, staging, "staged copy")
        rest = {rel: size for rel, size in expected.items() if rel not in SAVED_MODEL_FILES}
        for rel in sorted(rest):
            fsutil.makedirs(fsutil.parent(fsutil.join(final, rel)))
            fsutil.copy_file(fsutil.join(staging, rel), fsutil.join(final, rel))
        _check_copy(rest, final, "version")
        for name in SAVED_MODEL_FILES:
            if name in expected:
                fsutil.copy_file(fsutil.join(staging, name), fsutil.join(final, name))
        _check_copy(expected, final, "version")
    except BaseException:
        remove_version(final)
        raise
    finally:
        fsutil.rmtree(staging)


def copy_version(model_dir: str, model_path: str, version: int) -> str:
    """Copy the SavedModel into `<model_path>/<version>` so it appears complete or not at all."""
    final = fsutil.join(model_path, str(version))
    if fsutil.is_remote(model_path):
        _copy_into_object_store(model_dir, model_path, final)
        return final
    tmp = fsutil.join(model_path, f".{version}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        fsutil.copy_tree(model_dir, tmp)
        fsutil.rename(tmp, final)  # atomic on one file system; fails if `final` exists
    except BaseException:
        fsutil.rmtree(tmp)
        raise
    return final


def _serving_identical(model_path: str, fingerprint: str) -> int | None:
    """The newest version if it holds exactly this model (re-runs must not push duplicates)."""
    versions = artifacts.served_versions(model_path)
    if not versions:
        return None
    newest = max(versions)
    if fsutil.tree_fingerprint(versions[newest]) == fingerprint:
        return newest
    return None


def _push_locked(
    model_dir: str,
    fingerprint: str,
    blessing: dict,
    config: PusherConfig,
    versions: ModelVersions,
    result: dict,
    run_id: str | None,
) -> None:
    """The push itself, under the model's registry lock; fills `result`."""
    model_path = versions.base_path
    rolled_back = versions.rolled_back(fingerprint)
    if rolled_back is not None:
        why = f": {rolled_back['reason']}" if rolled_back.get("reason") else ""
        result["reason"] = (
            f"this model was rolled back (version {rolled_back['version']}, "
            f"{rolled_back.get('rolled_back_at')}{why}); it is not pushed again, a model "
            "trained on new data, code or config will be"
        )
        result["rolled_back_version"] = rolled_back["version"]
        return
    served = _serving_identical(model_path, fingerprint)
    if served is not None:
        result.update(version=served, path=fsutil.join(model_path, str(served)))
        result["reason"] = f"identical to version {served}, which is already being served"
        return
    change = check_contract(model_dir, versions, config, result)
    if result.get("reason"):
        return
    version = next_version(versions)
    intent = {
        "version": version,
        "fingerprint": fingerprint,
        "label": config.version_label,
        "keep_versions": config.keep_versions,
        "run_id": run_id,
        "accuracy": blessing.get("accuracy"),
        "source": model_dir,
        "extra": {"contract_change": change} if change else None,
    }
    journal.begin(versions, intent)  # 1. intent
    path = copy_version(model_dir, model_path, version)  # 2. the version, complete or absent
    done = journal.finish(versions)  # 3. labels, 4. retention, 5. done
    removed = done["removed_versions"]
    result.update(pushed=True, version=version, path=path, removed_versions=removed)
    log.info("pushed %s as version %d (%s) to %s", model_dir, version, config.version_label, path)


def _repair_after_failure(versions: ModelVersions) -> None:
    """A push that failed with an error (a crash never gets here) is repaired at once, still
    under the lock, from what the registry and the disk say; when that fails too (the disk is
    still full), the journal stays for the next push or `transfer-pipeline versions`."""
    try:
        versions.load()
        journal.repair(versions)
    except Exception as e:
        log.warning(
            "model %s: the failed push is left to the next push to repair: %s",
            versions.model_name,
            e,
        )


def _report_repairs(versions: ModelVersions, result: dict) -> None:
    if versions.repaired:
        result["repaired"] = versions.repaired
        result["repaired_text"] = [journal.describe(r) for r in versions.repaired]


def check_contract(
    model_dir: str, versions: ModelVersions, config: PusherConfig, result: dict
) -> dict | None:
    """Compare the candidate's serving contract with the newest served version's; records it in
    `result["contract"]`. A difference sets `result["reason"]` (not pushed), or, with
    `allow_contract_change`, returns the change to record with the new version."""
    on_disk = versions.on_disk()
    if not on_disk:
        result["contract"] = {"compared_with": None, "differences": [], "allowed": False}
        return None
    newest = max(on_disk)
    found = contract.compare(on_disk[newest], model_dir)
    diffs = found["differences"]
    result["contract"] = {"compared_with": newest, **found, "allowed": False}
    if not diffs:
        return None
    if not config.allow_contract_change:
        result["reason"] = (
            f"serving contract differs from version {newest}, which clients use: "
            + "; ".join(diffs)
            + " (to ship it on purpose: pusher.allow_contract_change=true, or a new model_name)"
        )
        return None
    result["contract"]["allowed"] = True
    change = {
        "from_version": newest,
        "differences": diffs,
        "allowed_by": "pusher.allow_contract_change",
    }
    result["contract_change"] = change
    log.warning(
        "pushing a serving-contract change from version %d (pusher.allow_contract_change): %s",
        newest,
        "; ".join(diffs),
    )
    return change


def read_blessing(path: str) -> dict[str, Any]:
    blessing = fsutil.read_json(path, "blessing")
    if not isinstance(blessing, dict) or not isinstance(blessing.get("blessed"), bool):
        raise PipelineError(f"blessing {path} has no boolean 'blessed' field")
    return blessing


def run_pusher(
    model_dir: str,
    blessing_path: str,
    output_dir: str | None,
    config: PusherConfig | None = None,
    *,
    serving_dir: str,
    model_name: str,
    infra_blessing_path: str | None = None,
    run_id: str | None = None,
) -> dict:
    """Push when blessed (and, given an InfraValidator verdict, infra-blessed) unless the model
    was rolled back or is already the newest version; returns and (with output_dir) writes
    push.json."""
    config = config or PusherConfig()
    keep_versions = config.keep_versions
    check_model_name(model_name)
    if keep_versions < 1:
        raise PipelineError(f"keep_versions must be >= 1, got {keep_versions}")
    blessing = read_blessing(blessing_path)
    infra: dict[str, Any] = (
        read_blessing(infra_blessing_path) if infra_blessing_path else {"blessed": True}
    )
    if not artifacts.is_saved_model(model_dir):
        raise PipelineError(f"no SavedModel at {model_dir} (saved_model.pb not found)")
    result: dict = {"pushed": False, "version": None, "path": None, "model": model_dir}
    result["label"] = config.version_label
    versions = ModelVersions(serving_dir, model_name)
    if not blessing["blessed"]:
        result["reason"] = "model not blessed: " + "; ".join(blessing.get("reasons", []))
    elif not infra["blessed"]:
        result["reason"] = "infra validation failed: " + "; ".join(infra.get("reasons", []))
    else:
        fingerprint = fsutil.tree_fingerprint(model_dir)
        if blessing.get("model_fingerprint") and blessing["model_fingerprint"] != fingerprint:
            raise PipelineError(
                f"blessing {blessing_path} was written for another model than {model_dir} "
                "(fingerprints differ); evaluate this model first"
            )
        result["fingerprint"] = fingerprint
        with versions.locked("transfer-pipeline push", run_id):  # repairs first
            _report_repairs(versions, result)
            versions.sync()
            try:
                _push_locked(model_dir, fingerprint, blessing, config, versions, result, run_id)
            except BaseException:
                _repair_after_failure(versions)
                raise
            if not result["pushed"]:  # the sync's findings; a push saved its own
                versions.save()
                versions.write_models_config()
    if versions.exists():  # labels and rollback state, for run.json and the report
        result.update(versions.load().summary())
    if output_dir:
        fsutil.makedirs(output_dir)
        fsutil.write_json(fsutil.join(output_dir, PUSH_FILE), result)
    return result
