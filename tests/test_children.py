"""Children die with their parent (issue 26, defect 5a): the kernel's parent-death signal, the
watchdog where there is none, and a parent that died before the child could ask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline_components.core import children

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

CHILD = """
import sys, time
from pipeline_components.core import children
if sys.argv[1] == "watchdog-only":
    children._set_parent_death_signal = lambda: False  # as on macOS: no prctl
children.die_with_parent()
print("ready", flush=True)
time.sleep(120)
"""

PARENT = """
import subprocess, sys, time
from pipeline_components.core import children
child = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1], sys.argv[2]],
    stdout=subprocess.PIPE, text=True, **children.popen_options(),
)
assert child.stdout.readline() == "ready\\n"
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a container's init may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


@pytest.mark.parametrize("mode", ["prctl", "watchdog-only"])
def test_a_child_dies_when_its_parent_is_killed_with_sigkill(mode):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, mode], stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        assert os.getpgid(child) == child != os.getpgid(parent.pid), "its own process group"
        parent.kill()
        parent.wait()
        # prctl: at once; the watchdog: within WATCH_SECONDS
        assert wait_dead(child, 5.0), f"child {child} outlived its parent ({mode})"
    finally:
        parent.kill()
        parent.wait()


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    not_its_parent = "1" if os.getpid() != 1 else "2"  # (its parent is this process)
    env = {**os.environ, children.PARENT_ENV: not_its_parent}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "prctl"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 137 and "ready" not in proc.stdout
    assert "is gone; exiting with it" in proc.stderr


def test_stop_ends_the_childs_whole_process_group(tmp_path):
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(grandchild.pid, flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        **children.popen_options(),
    )
    grandchild = int(proc.stdout.readline())
    children.stop(proc, grace_s=5)
    assert proc.returncode == -signal.SIGTERM
    assert wait_dead(grandchild, 5.0), "the grandchild was left running"


def test_the_variable_is_not_inherited_by_the_childs_own_children():
    script = (
        "import os; from pipeline_components.core import children as c; "
        "print(c.die_with_parent() == os.getppid(), c.PARENT_ENV in os.environ, "
        "c.child_env()[c.PARENT_ENV] == str(os.getpid()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        **children.popen_options(),
    )
    assert proc.stdout.split() == ["True", "False", "True"], proc.stderr
