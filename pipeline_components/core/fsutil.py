"""File helpers over tf.io.gfile, so every path may be local, gs:// or s3://.

Nothing is left half-written: artifacts are built under a hidden temporary sibling and
renamed into place only when complete. Those siblings are named `.<name>.tmp-<8 hex>` (and
`.<name>.old-<8 hex>` for a replaced directory): `TEMPORARY` matches them, so what a killed
process left behind can be found and removed (orchestration/gc.py).

Every change this module makes to a file system first calls `write_point(op, path)`: a hook
(`write_hook`) lets a test fail or crash the k-th write of a sequence (tests/test_push_crash.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from pipeline_components.core.errors import PipelineError

log = logging.getLogger(__name__)

# `.<name>.tmp-<8 hex>` / `.<name>.old-<8 hex>`: write_atomic's and atomic_dir's siblings.
TEMPORARY = re.compile(r"\..+\.(tmp|old)-[0-9a-f]{8}")

_write_hook: Callable[[str, str], None] | None = None


def write_point(op: str, path: str) -> None:
    """Called before every change of a file system made through this module (op: `write`,
    `rename`, `copy`, `remove`, `rmtree`, `makedirs`); the hook may raise to fail it."""
    if _write_hook is not None:
        _write_hook(op, str(path))


@contextlib.contextmanager
def write_hook(hook: Callable[[str, str], None]) -> Iterator[None]:
    """Call `hook(op, path)` before every write of this module for the block (tests)."""
    global _write_hook
    previous, _write_hook = _write_hook, hook
    try:
        yield
    finally:
        _write_hook = previous


def gfile() -> Any:
    # Imported lazily: tensorflow takes seconds to import and the CLI's --help should not.
    import tensorflow as tf

    return tf.io.gfile


def is_remote(path: str) -> bool:
    return "://" in str(path)


def join(*parts: str) -> str:
    strs = [str(p) for p in parts]
    if is_remote(strs[0]):
        return posixpath.join(*strs)
    import os

    return os.path.join(*strs)


def parent(path: str) -> str:
    path = str(path).rstrip("/")
    if is_remote(path):
        return posixpath.dirname(path)
    import os

    return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    return posixpath.basename(str(path).rstrip("/"))


def exists(path: str) -> bool:
    return gfile().exists(str(path))


def isdir(path: str) -> bool:
    return gfile().isdir(str(path))


def makedirs(path: str) -> None:
    write_point("makedirs", path)
    gfile().makedirs(str(path))


def listdir(path: str) -> list[str]:
    """Entry names (no trailing slash), sorted."""
    return sorted(name.rstrip("/") for name in gfile().listdir(str(path)))


def rmtree(path: str) -> None:
    """Delete a directory tree; one already gone is fine. Not exists() first: on gs:// it may
    answer from TensorFlow's stat cache; and ram:// deletes everything, then reports NotFound for
    a phantom entry (`assets/.extra` when `assets.extra/` is a sibling: it lists by prefix).
    Locally with shutil: TensorFlow's rmtree follows a symbolic link to a directory and deletes
    what it points to (the InfraValidator links the model it serves)."""
    write_point("rmtree", path)
    if not is_remote(path):
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)
        else:
            shutil.rmtree(str(path), ignore_errors=False, onerror=_gone_is_fine)
        return
    import tensorflow as tf

    try:
        gfile().rmtree(str(path))
    except tf.errors.NotFoundError:
        if gfile().exists(str(path)):
            raise


def _gone_is_fine(function: Any, path: str, exc_info: Any) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def remove(path: str) -> None:
    """Delete a file; one already gone is fine (no exists() first: it may answer from a cache)."""
    import tensorflow as tf

    write_point("remove", path)
    with contextlib.suppress(tf.errors.NotFoundError, FileNotFoundError):
        gfile().remove(str(path))


def rename(src: str, dst: str) -> None:
    """Rename a file or directory; locally atomic and failing when `dst` exists (a directory:
    when it is not empty)."""
    write_point("rename", dst)
    if is_remote(src):
        rename_tree(src, dst)
    else:
        os.rename(str(src), str(dst))


def read_text(path: str) -> str:
    with gfile().GFile(str(path), "r") as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    with gfile().GFile(str(path), "rb") as f:
        return f.read()


def write_atomic(path: str, data: bytes | str) -> None:
    """Write a file via a temporary sibling and a rename: readers see all of it or none."""
    path = str(path)
    tmp = join(parent(path), f".{basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    mode = "wb" if isinstance(data, bytes) else "w"
    write_point("write", tmp)
    with gfile().GFile(tmp, mode) as f:
        f.write(data)
    write_point("rename", path)
    gfile().rename(tmp, path, overwrite=True)


def write_json(path: str, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str, what: str = "file") -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise PipelineError(f"{what} {path} is not valid JSON: {e}") from None
    except Exception as e:  # NotFoundError and friends from gfile
        if not exists(path):
            raise PipelineError(f"{what} {path} does not exist") from None
        raise PipelineError(f"cannot read {what} {path}: {e}") from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def copy_tree(src: str, dst: str, last: tuple[str, ...] = ()) -> None:
    """Recursively copy src into dst (created). Files named in `last` are copied after all
    others, so a poller on an object store (no atomic rename) sees them only when the rest is there.
    """
    src, dst = str(src), str(dst)
    deferred = []
    for dirpath, _dirnames, filenames in gfile().walk(src):
        rel = posixpath.relpath(dirpath.replace("\\", "/"), src.replace("\\", "/"))
        target_dir = dst if rel == "." else join(dst, rel)
        makedirs(target_dir)
        for name in filenames:
            pair = (join(dirpath, name), join(target_dir, name))
            if rel == "." and name in last:
                deferred.append(pair)
            else:
                copy_file(*pair)
    for pair in deferred:
        copy_file(*pair)


def copy_file(src: str, dst: str) -> None:
    """Copy one file (replacing `dst`)."""
    write_point("copy", dst)
    gfile().copy(src, dst, overwrite=True)


def rename_tree(src: str, dst: str) -> None:
    """Rename a directory. Off the local disk file by file: object stores have no directories
    (TensorFlow's GCS client does the same per object), and TensorFlow's `ram://` renames only
    the directory entry, leaving every file under the old name."""
    import tensorflow as tf

    src, dst = str(src).rstrip("/"), str(dst).rstrip("/")
    write_point("rename", dst)
    if not is_remote(src):
        gfile().rename(src, dst)
        return
    files = []
    for dirpath, _dirnames, filenames in gfile().walk(src):
        rel = posixpath.relpath(dirpath.rstrip("/"), src)
        files += [
            (join(dirpath, n), join(dst, n) if rel == "." else join(dst, rel, n)) for n in filenames
        ]
    for old, new in files:
        gfile().makedirs(parent(new))
        try:
            gfile().rename(old, new)
        except tf.errors.NotFoundError:  # a phantom entry of ram:// (see rmtree)
            if gfile().exists(old):
                raise
    rmtree(src)


@contextlib.contextmanager
def atomic_dir(final: str, replace: bool = True) -> Iterator[str]:
    """Yield a hidden temporary directory next to `final`; rename it to `final` on success.

    On any exception the temporary directory is removed and `final` is left as it was.
    With replace=True an existing `final` is swapped out (old one removed after the rename).
    """
    final = str(final).rstrip("/")
    par = parent(final)
    makedirs(par)
    tmp = join(par, f".{basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        rmtree(tmp)
        raise
    old = None
    if exists(final):
        if not replace:
            rmtree(tmp)
            raise PipelineError(f"output {final} already exists")
        old = join(par, f".{basename(final)}.old-{uuid.uuid4().hex[:8]}")
        rename_tree(final, old)
    try:
        rename_tree(tmp, final)
    except Exception:
        if old is not None:
            rename_tree(old, final)
        rmtree(tmp)
        raise
    if old is not None:
        rmtree(old)


def tree_bytes(path: str) -> int:
    """Bytes of a file, or of every file under a directory; symbolic links are not followed."""
    path = str(path)
    if not is_remote(path):
        if not os.path.isdir(path) or os.path.islink(path):
            with contextlib.suppress(FileNotFoundError):
                return os.lstat(path).st_size
            return 0
        total = 0
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total
    if not gfile().isdir(path):
        return int(gfile().stat(path).length) if gfile().exists(path) else 0
    return sum(
        int(gfile().stat(join(dirpath, name)).length)
        for dirpath, _dirs, files in gfile().walk(path)
        for name in files
    )


def tree_fingerprint(path: str) -> str:
    """sha256 over every file's relative path and contents: identifies a model directory
    (saved_model.pb alone does not change when only the weights do)."""
    import hashlib

    digest = hashlib.sha256()
    root = str(path).rstrip("/")
    for dirpath, _dirs, files in sorted(gfile().walk(root)):
        for name in sorted(files):
            full = join(dirpath, name)
            rel = posixpath.relpath(full.replace("\\", "/"), root.replace("\\", "/"))
            digest.update(rel.encode() + b"\0")
            with gfile().GFile(full, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()
