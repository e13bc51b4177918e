"""How many CPU cores this process may really use: the smaller of its CPU affinity and its container's CPU quota.

`os.cpu_count()` counts the host's cores, and so does torch's default thread count; inside a container limited to
two cores on a 32-core host (a Hugging Face Space, a Kubernetes pod) that would start 32 threads on 2 cores.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota_cores(cgroup: Path = CGROUP) -> int | None:
    """Cores allowed by the cgroup CPU quota (v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`),
    rounded up; None when there is no quota or it cannot be read."""
    try:
        if (cgroup / "cpu.max").is_file():
            quota, _, period = (cgroup / "cpu.max").read_text().strip().partition(" ")
        else:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or not period:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def usable_cores(cgroup: Path = CGROUP) -> int:
    """The cores this process can run on at once: its affinity, capped by the container's quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = quota_cores(cgroup)
    return max(1, min(cores, quota) if quota else cores)
