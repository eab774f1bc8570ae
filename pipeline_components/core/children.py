"""Child processes that die with their parent: on Linux, in containers, and elsewhere.

A process the pipeline starts (the InfraValidator's `transfer-pipeline serve`, the workers of
`transfer-pipeline train --local --workers N`, a KFP task under tests/kfp_local.py) must not
outlive it: a kill -9 of the parent runs no cleanup, and an orphaned model server keeps ~900 MB.
Three layers:

- the parent starts the child with `popen_options()`: a process group of its own (`stop()`
  signals the child and whatever it started; a Ctrl-C in a terminal reaches only the parent,
  which stops its children in order), and `TRANSFER_PIPELINE_PARENT_PID` in its environment;
- the child calls `die_with_parent()` first thing (pipeline_components/cli.py does, for every
  command). On Linux it asks the kernel for SIGKILL when its parent dies
  (prctl(PR_SET_PDEATHSIG), per process, so it holds in containers and PID namespaces), then
  checks that its parent is still the process that started it: one that died before the prctl
  is caught there;
- and it starts a watchdog thread that kills the process as soon as its parent pid changes
  (re-parented to init or a subreaper): the same guarantee where prctl does not exist (macOS,
  BSD), within WATCH_SECONDS.

PR_SET_PDEATHSIG fires when the *thread* that started the child exits: start children from a
thread that lives as long as they should (every caller here does: the child lives inside a
`with` or a loop of that thread).

Not covered here, because they already exit with the parent: Beam's DirectRunner
multi_processing workers (Beam starts `python -m apache_beam.runners.worker.sdk_worker_main`; the
worker exits when its gRPC control stream to the parent breaks, measured within a second of a
kill -9 of the parent).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

PARENT_ENV = "TRANSFER_PIPELINE_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_SECONDS = 0.5
KILL = getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows has no SIGKILL


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's environment) plus this process's pid as the parent."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def popen_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for subprocess.Popen/run that make the child die with this process
    (when the child calls `die_with_parent`) and lead its own process group."""
    return {"env": child_env(env), "start_new_session": os.name == "posix"}


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to the child's process group, SIGKILL after `grace_s`; waits for the child."""
    if proc.poll() is not None:
        return
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        signal_group(proc, KILL)
        proc.wait()


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal a child started with `popen_options` and everything in its process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.name == "posix":
            os.killpg(proc.pid, sig)  # it leads its group: popen_options
        else:
            proc.send_signal(sig)


def die_with_parent(environ: Any = None) -> int | None:
    """In a child started with `popen_options`: die when the parent dies (see the module
    docstring). The variable is removed from the environment, so this process's own children
    do not inherit a parent pid that is not theirs. Returns the parent pid, or None when this
    process was not started that way."""
    environ = os.environ if environ is None else environ
    value = environ.pop(PARENT_ENV, None)
    if not value or not value.isdigit():
        return None
    parent = int(value)
    _set_parent_death_signal()
    if os.getppid() != parent:  # it died before the prctl, or never was the parent
        _die(f"parent {parent} is gone")
    threading.Thread(target=_watch, args=(parent,), name="parent-watchdog", daemon=True).start()
    return parent


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(KILL), 0, 0, 0) == 0
    except (OSError, AttributeError) as e:  # no libc symbol: the watchdog still holds
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", e)
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    _die(f"parent {parent} is gone")


def _die(why: str) -> None:
    """Leave now, as a SIGKILL would: no cleanup that could hang (the parent is gone)."""
    with contextlib.suppress(Exception):
        sys.stderr.write(f"transfer-pipeline: {why}; exiting with it\n")
        sys.stderr.flush()
    os._exit(128 + 9)
