"""Facts about the machine this process runs on."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask; all cores where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)
