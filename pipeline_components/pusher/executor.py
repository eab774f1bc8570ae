"""The Pusher's executor: copy a blessed SavedModel to `<serving_dir>/<model_name>/<version>/`
for TF Serving (the spec and CLI are in component.py).

TF Serving polls the model directory and loads any new numeric subdirectory, so a version
must appear complete or not at all: locally the copy goes to a hidden temporary sibling that
is renamed into place. Object stores have no atomic rename; there a version counts as present
once its `saved_model.pb` exists (the server and the pusher both use that definition): the model
is staged and checked outside every model base path (`<serving_dir>/.staging/`), copied in with
`saved_model.pb` last after the rest is listed complete, and removed `saved_model.pb` first.
Decisions on object stores use listings, never `exists()`: TensorFlow's GCS stat cache answers
`exists()` from up to 5 s ago. Two pushers racing each claim a distinct version number first.

Around the copy (pusher/versions.py): a model whose fingerprint was rolled back is refused, a
model whose serving contract (labels, signatures, input; core/contract.py) differs from the
newest served version's is refused unless `allow_contract_change` (then the change is recorded),
the new version is labelled `stable` or `canary`, retention never deletes a labelled version,
and `<serving_dir>/models.config` is rewritten with the labels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import uuid
from typing import Any

from pipeline_components.core import artifacts, contract, fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.pusher.config import PusherConfig
from pipeline_components.pusher.versions import ModelVersions, check_model_name

log = logging.getLogger(__name__)

PUSH_FILE = artifacts.PUSH_FILE
CLAIM_PREFIX = ".claim-"
STAGING_DIR = ".staging"  # in serving_dir, beside the model folders: outside every base path
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _claimed_versions(model_path: str) -> list[int]:
    if not fsutil.isdir(model_path):
        return []
    pattern = re.compile(re.escape(CLAIM_PREFIX) + r"(\d+)")
    return [int(m.group(1)) for n in fsutil.listdir(model_path) if (m := pattern.fullmatch(n))]


def _try_claim(model_path: str, version: int) -> bool:
    """Atomically reserve a version number. Local: O_EXCL file creation, so of two racing
    pushers exactly one wins. Object stores have no exclusive create through gfile: best effort
    (the scheduled pipeline runs with concurrencyPolicy Forbid)."""
    claim = fsutil.join(model_path, f"{CLAIM_PREFIX}{version}")
    if fsutil.is_remote(model_path):
        if {f"{CLAIM_PREFIX}{version}", str(version)} & set(fsutil.listdir(model_path)):
            return False
        fsutil.write_atomic(claim, uuid.uuid4().hex)
        return True
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    # Checked only while holding the claim: another pusher may have finished this number and
    # released its claim between our listing and our claim.
    if os.path.exists(os.path.join(model_path, str(version))):
        os.remove(claim)
        return False
    return True


def claim_next_version(model_path: str, floor: int = 0) -> int:
    """A version number above every one in the base path, every claimed one and `floor` (the
    highest ever pushed: a rolled-back number is not reused)."""
    fsutil.makedirs(model_path)
    taken = artifacts.version_numbers(model_path) + _claimed_versions(model_path)
    version = max([*taken, floor], default=0) + 1
    while not _try_claim(model_path, version):
        version += 1
    return version


def _release_claim(model_path: str, version: int) -> None:
    _remove_if_there(fsutil.join(model_path, f"{CLAIM_PREFIX}{version}"))


def _remove_if_there(path: str) -> None:
    """Delete a file; one already gone is fine (no exists() first: it may answer from a cache)."""
    import tensorflow as tf

    with contextlib.suppress(tf.errors.NotFoundError):
        fsutil.gfile().remove(path)


def remove_version(version_dir: str) -> None:
    """Delete a version folder, `saved_model.pb` first: from the first deletion on, no reader
    takes the half-deleted folder for a complete version."""
    for name in SAVED_MODEL_FILES:
        _remove_if_there(fsutil.join(version_dir, name))
    fsutil.rmtree(version_dir)


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
    gfile = fsutil.gfile()
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
            gfile.makedirs(fsutil.parent(fsutil.join(final, rel)))
            gfile.copy(fsutil.join(staging, rel), fsutil.join(final, rel), overwrite=True)
        _check_copy(rest, final, "version")
        for name in SAVED_MODEL_FILES:
            if name in expected:
                gfile.copy(fsutil.join(staging, name), fsutil.join(final, name), overwrite=True)
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
        os.rename(tmp, final)  # atomic on one file system; fails if `final` exists
    except BaseException:
        fsutil.rmtree(tmp)
        raise
    return final


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
    version = claim_next_version(model_path, floor=versions.max_version())
    try:
        path = copy_version(model_dir, model_path, version)
    finally:
        _release_claim(model_path, version)
    labels = versions.add_push(
        version,
        fingerprint,
        config.version_label,
        run_id=run_id,
        accuracy=blessing.get("accuracy"),
        source=model_dir,
        extra={"contract_change": change} if change else None,
    )
    removed = apply_retention(model_path, config.keep_versions, {version, *labels.values()})
    versions.mark_removed(removed)
    result.update(pushed=True, version=version, path=path, removed_versions=removed)
    log.info("pushed %s as version %d (%s) to %s", model_dir, version, config.version_label, path)


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
        with versions.locked("transfer-pipeline push", run_id):
            versions.sync()
            _push_locked(model_dir, fingerprint, blessing, config, versions, result, run_id)
            versions.save()
            versions.write_models_config()
    if versions.exists():  # labels and rollback state, for run.json and the report
        result.update(versions.load().summary())
    if output_dir:
        fsutil.makedirs(output_dir)
        fsutil.write_json(fsutil.join(output_dir, PUSH_FILE), result)
    return result
