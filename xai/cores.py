"""How many CPU cores this process may really use: the smaller of its CPU affinity and its cgroups' CPU quotas.

`os.cpu_count()` counts the host's cores, and so do torch's and OpenMP's defaults; inside a container limited to two
cores on a 32-core host (a Hugging Face Space, a Kubernetes pod) that would start 16 or 32 threads on 2 cores.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

CGROUP = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")


def _folders(cgroup: Path, membership: Path) -> list[Path]:
    """The cgroup folders whose CPU quota binds this process: its own (from `membership`) and every one above it,
    in the v2 tree and under the v1 cpu controller; the trees' tops when the membership cannot be read."""
    try:
        entries = [line.split(":", 2) for line in membership.read_text().splitlines() if line.count(":") >= 2]
    except OSError:
        entries = []
    folders = [cgroup, cgroup / "cpu", cgroup / "cpu,cpuacct"]
    for _, controllers, path in entries:
        if controllers and "cpu" not in controllers.split(","):
            continue
        tops = [cgroup] if not controllers else [cgroup / controllers, cgroup / "cpu"]
        parts = PurePosixPath(path).parts[1:]
        folders += [top.joinpath(*parts[:depth]) for top in tops for depth in range(len(parts), 0, -1)]
    return list(dict.fromkeys(folders))


def _quota(folder: Path) -> float | None:
    """Cores' worth of time per period that `folder`'s quota allows (v2 `cpu.max`, v1 `cpu.cfs_quota_us` and
    `cpu.cfs_period_us`); None when it sets none or cannot be read."""
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        elif (folder / "cpu.cfs_quota_us").is_file():
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        else:
            return None
        if quota in ("max", "-1"):
            return None
        quota_us, period_us = int(quota), int(period)
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def quota_cores(cgroup: Path = CGROUP, membership: Path = MEMBERSHIP) -> int | None:
    """Cores allowed by the tightest CPU quota on this process's cgroups, rounded up; None when none is set."""
    quotas = [q for q in map(_quota, _folders(cgroup, membership)) if q is not None]
    return max(1, math.ceil(min(quotas))) if quotas else None


def usable_cores(cgroup: Path = CGROUP, membership: Path = MEMBERSHIP) -> int:
    """The cores this process can run on at once: its affinity, capped by its cgroups' quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = quota_cores(cgroup, membership)
    return max(1, min(cores, quota) if quota else cores)
