"""One run at a time per pipeline_root: a lock file with its holder and a lease.

`<pipeline_root>/lock.json` holds who has the root: host, pid, run id, command, start time and
a lease that the holder renews every `LEASE_SECONDS / 4` from a thread. A second run fails at
once with one line naming the holder. A lock whose holder is gone (same host, process no longer
alive) or whose lease expired (another host that stopped renewing: a killed pod, a lost node)
is taken over, with a warning. A holder that finds its lock taken (it hung past its lease)
learns it at its next check and fails instead of writing beside the new holder.

Every change of the lock file is atomic:
- local paths (and NFS/EFS volumes): the file appears by `os.link` of a complete temporary
  file (fails if it exists: an exclusive create); renewals, take-overs and releases are
  compare-and-swap steps made under `flock` on `lock.json.guard`;
- `gs://` with google-cloud-storage installed (the `gcp` extra): the same steps as generation
  preconditions (`if_generation_match=0` to create, `=<generation read>` to renew, take over or
  release), which Cloud Storage applies atomically;
- other object stores, or gs:// without that client: tf.io.gfile has no exclusive create, so the
  check and the write are separate requests and two runs started within the same second can both
  pass. The CronJob's `concurrencyPolicy: Forbid` is then the only guard (a warning says so).

`create_exclusive(path, text)` is the same exclusive create for other files (execution ids).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.errors import PipelineError

log = logging.getLogger(__name__)

LEASE_SECONDS = 300.0  # a holder that stops renewing loses the root this long after
_warned_best_effort: set[str] = set()


class PipelineLocked(PipelineError):
    """Another live run holds the pipeline_root."""


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------- stores


class _LocalStore:
    """Exclusive create by os.link; compare-and-swap under flock on a guard file."""

    exclusive = True

    def __init__(self, path: str):
        self.path = path
        self.guard = path + ".guard"

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        fd = os.open(self.guard, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # not POSIX: the link-based create still holds
                pass
            yield
        finally:
            os.close(fd)  # releases the flock

    def create(self, text: str) -> Any:
        """The new file's version, or None when it exists."""
        tmp = f"{self.path}.{uuid.uuid4().hex[:12]}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        try:
            os.link(tmp, self.path)  # atomic; fails when the file exists
            return text
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)

    def read(self) -> tuple[str | None, Any]:
        try:
            with open(self.path) as f:
                text = f.read()
        except FileNotFoundError:
            return None, None
        return text, text

    def replace(self, text: str, version: Any) -> Any:
        """The new version, or None when the file is not at `version` any more."""
        with self._guarded():
            if self.read()[1] != version:
                return None
            tmp = f"{self.path}.{uuid.uuid4().hex[:12]}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
            return text

    def delete(self, version: Any) -> bool:
        with self._guarded():
            if self.read()[1] != version:
                return False
            os.remove(self.path)
            return True


class _GcsStore:
    """Cloud Storage generation preconditions (google-cloud-storage)."""

    exclusive = True

    def __init__(self, path: str):
        import importlib

        storage: Any = importlib.import_module("google.cloud.storage")  # the gcp extra

        bucket, _, name = path[len("gs://") :].partition("/")
        self.blob = storage.Client().bucket(bucket).blob(name)
        self._blob_cls = storage.Blob

    def _fresh(self) -> Any:
        return self._blob_cls(self.blob.name, self.blob.bucket)

    def create(self, text: str) -> Any:
        from google.api_core import exceptions

        blob = self._fresh()
        try:
            blob.upload_from_string(text, if_generation_match=0)
        except exceptions.PreconditionFailed:
            return None
        return blob.generation

    def read(self) -> tuple[str | None, Any]:
        from google.api_core import exceptions

        blob = self._fresh()
        try:
            blob.reload()
            text = blob.download_as_bytes(if_generation_match=blob.generation).decode()
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return None, None
        return text, blob.generation

    def replace(self, text: str, version: Any) -> Any:
        from google.api_core import exceptions

        blob = self._fresh()
        try:
            blob.upload_from_string(text, if_generation_match=version)
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            return None
        return blob.generation

    def delete(self, version: Any) -> bool:
        from google.api_core import exceptions

        try:
            self._fresh().delete(if_generation_match=version)
            return True
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            return False


class _BestEffortStore:
    """tf.io.gfile only: check, then write (no atomic create on object stores)."""

    exclusive = False

    def __init__(self, path: str):
        self.path = path

    def create(self, text: str) -> Any:
        if fsutil.exists(self.path):
            return None
        fsutil.write_atomic(self.path, text)
        return text

    def read(self) -> tuple[str | None, Any]:
        try:
            text = fsutil.read_text(self.path)
        except Exception:
            if fsutil.exists(self.path):
                raise
            return None, None
        return text, text

    def replace(self, text: str, version: Any) -> Any:
        if self.read()[1] != version:
            return None
        fsutil.write_atomic(self.path, text)
        return text

    def delete(self, version: Any) -> bool:
        if self.read()[1] != version:
            return False
        fsutil.gfile().remove(self.path)
        return True


def _store(path: str) -> _LocalStore | _GcsStore | _BestEffortStore:
    if not fsutil.is_remote(path):
        return _LocalStore(path)
    reason = "the object store has no exclusive create"
    if path.startswith("gs://"):
        try:
            return _GcsStore(path)
        except Exception as e:  # not installed, or no credentials for the client
            reason = f"google-cloud-storage unavailable ({type(e).__name__})"
    if path not in _warned_best_effort:
        _warned_best_effort.add(path)
        log.warning(
            "%s: %s: the lock is best effort (two runs started at the same moment may both "
            "proceed); rely on the scheduler's concurrency policy",
            path,
            reason,
        )
    return _BestEffortStore(path)


def create_exclusive(path: str, text: str) -> bool:
    """Create `path` with `text` unless it exists, atomically where the storage allows (see the
    module docstring); True when this call created it."""
    return _store(path).create(text) is not None


# ------------------------------------------------------------------------------------ lock


def _holder_text(info: dict) -> str:
    started = info.get("started", "?")
    who = f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, started {started}"
    run = f"run {info['run_id']}" if info.get("run_id") else info.get("command", "a process")
    lease = info.get("lease_expires")
    until = f"; lease until {_iso(lease)}" if isinstance(lease, int | float) else ""
    return f"{run} ({who}{until})"


def stale_reason(info: dict | None, now: float | None = None) -> str | None:
    """Why a lock's holder no longer holds it, or None while it does."""
    if info is None:
        return "the lock file is unreadable"
    now = _now() if now is None else now
    lease = info.get("lease_expires")
    if not isinstance(lease, int | float) or lease < now:
        return f"its lease expired at {_iso(lease) if isinstance(lease, int | float) else '?'}"
    pid = info.get("pid")
    if info.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        return f"its process {pid} on {info['host']} is gone"
    return None


def _parse(text: str | None) -> dict | None:
    try:
        info = json.loads(text or "")
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


class PipelineLock:
    """A held lock file (see the module docstring); `what` names what it guards in messages
    ("pipeline_root /x", "the versions of model m")."""

    def __init__(self, path: str, what: str, run_id: str | None, command: str, lease_s: float):
        self.what = what
        self.path = path
        self.store = _store(self.path)
        self.lease_s = lease_s
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "run_id": run_id,
            "command": command,
            "started": _iso(_now()),
            "token": uuid.uuid4().hex,
        }
        self.version: Any = None
        self.lost: str | None = None  # why this holder no longer holds the root
        self.took_over: str | None = None  # the previous holder, when taken over
        self._stop = threading.Event()
        # held around each renewal: release() takes it, so no renewal is in progress when the
        # lock file is deleted and none starts after (whether the thread ever started or not)
        self._renewal = threading.Lock()

    def _text(self) -> str:
        return json.dumps({**self.info, "lease_expires": _now() + self.lease_s}, indent=2) + "\n"

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lock; a live holder makes it fail at once (PipelineLocked), or after
        `wait_s` seconds of retrying."""
        deadline = _now() + wait_s
        while True:
            try:
                return self._try_acquire()
            except PipelineLocked:
                if _now() >= deadline:
                    raise
                time.sleep(min(0.2, max(deadline - _now(), 0.0)))

    def _try_acquire(self) -> None:
        for _ in range(5):
            text = self._text()
            self.version = self.store.create(text)
            if self.version is not None:
                return
            current, version = self.store.read()
            if current is None:
                continue  # released meanwhile: try again
            info = _parse(current)
            why = stale_reason(info)
            if why is None:
                assert info is not None
                raise PipelineLocked(
                    f"{self.what} is locked by {_holder_text(info)}; "
                    f"wait for it, or remove {self.path} if that process is certainly gone"
                )
            self.version = self.store.replace(text, version)
            if self.version is not None:
                previous = _holder_text(info) if info else "an unreadable lock"
                self.took_over = previous
                log.warning("%s: took over the lock of %s: %s", self.what, previous, why)
                return
        raise PipelineLocked(f"{self.what}: could not take its lock {self.path}")

    def renew(self) -> bool:
        """Extend the lease; False (and `lost` set) when another holder has the lock."""
        if self.lost:
            return False
        new_version = self.store.replace(self._text(), self.version)
        if new_version is not None:
            self.version = new_version
            return True
        current = _parse(self.store.read()[0])
        holder = _holder_text(current) if current else "nobody (the lock file was removed)"
        self.lost = f"lost the lock on {self.what} to {holder}"
        log.error("%s", self.lost)
        return False

    def check(self) -> None:
        """Fail (PipelineError) when this holder has lost the root."""
        if self.lost:
            raise PipelineError(self.lost)

    def start_renewing(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.lease_s / 4):
                with self._renewal:
                    if self._stop.is_set():  # released meanwhile
                        return
                    try:
                        if not self.renew():
                            return
                    except Exception as e:  # a blip of the storage: try again at the next tick
                        log.warning("could not renew the lock %s: %s", self.path, e)

        threading.Thread(target=loop, name="pipeline-lock", daemon=True).start()

    def release(self) -> None:
        """Stop renewing and delete the lock file. Safe at any point after __init__, also when
        an interrupt (SIGTERM, Ctrl-C) came before the renewal thread started: it waits for a
        renewal in progress (up to 5 s: a hung storage call; the lease then expires by
        itself), never for the thread."""
        self._stop.set()
        waited = self._renewal.acquire(timeout=5)
        try:
            if not self.lost and self.version is not None:
                try:
                    self.store.delete(self.version)
                except Exception as e:  # the lease expires by itself
                    log.warning("could not release the lock %s: %s", self.path, e)
        finally:
            if waited:
                self._renewal.release()

    def holder(self) -> dict:
        return {k: v for k, v in self.info.items() if k != "token"}


@contextlib.contextmanager
def hold_file(
    path: str,
    what: str,
    run_id: str | None,
    command: str,
    lease_s: float | None = None,
    wait_s: float = 0.0,
) -> Iterator[PipelineLock]:
    """Hold the lock file `path` for the block (PipelineLocked when a live holder has it for
    longer than `wait_s`)."""
    folder = fsutil.parent(path)
    if fsutil.is_remote(folder):
        fsutil.makedirs(folder)
    else:
        os.makedirs(folder, exist_ok=True)  # no TensorFlow import for a local lock
    lock = PipelineLock(path, what, run_id, command, LEASE_SECONDS if lease_s is None else lease_s)
    try:  # an interrupt while taking it must not leave it behind either
        lock.acquire(wait_s)
        lock.start_renewing()
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def hold(
    root: str, run_id: str | None, command: str, lease_s: float | None = None
) -> Iterator[PipelineLock]:
    """Hold `<root>/lock.json` for the block (PipelineLocked when a live run has it)."""
    path = fsutil.join(root, artifacts.LOCK_FILE)
    with hold_file(path, f"pipeline_root {root}", run_id, command, lease_s) as lock:
        yield lock


def pipeline_root_of(path: str, names: Collection[str]) -> str | None:
    """The pipeline_root a path lies in, or None: an ancestor that holds the lock file, or
    `runs/` with the path under one of its component folders (`<root>/Trainer/7`; `names`: the
    components' names)."""
    current = str(path).rstrip("/")
    if not fsutil.is_remote(current):
        current = os.path.abspath(current)
    below = [fsutil.basename(current)]
    for _ in range(64):
        up = fsutil.parent(current)
        if not up or up == current or (fsutil.is_remote(path) and not fsutil.is_remote(up)):
            return None
        current = up
        if fsutil.exists(fsutil.join(current, artifacts.LOCK_FILE)) or (
            below[-1] in names and fsutil.isdir(fsutil.join(current, artifacts.RUNS_DIR))
        ):
            return current
        below.append(fsutil.basename(current))
    return None


@contextlib.contextmanager
def hold_for_output(
    output_dir: str, command: str, names: Collection[str]
) -> Iterator[PipelineLock | None]:
    """A standalone component writing into a pipeline_root holds its lock meanwhile (`names`:
    the components' names, see pipeline_root_of)."""
    root = pipeline_root_of(output_dir, names) if output_dir else None
    if root is None:
        yield None
        return
    with hold(root, None, command) as lock:
        yield lock
