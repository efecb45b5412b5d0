"""What this process may really use: memory and cores as the container grants them, not as the host has them.

A Space (or any container) reports the host's RAM through `sysconf` and the
host's cores through `os.cpu_count()`. Sizing caches and refusing oversized
jobs from those numbers lets one click get the process OOM-killed, so every
bound in the app comes from here: the cgroup limit where there is one (v2,
then v1), else the physical RAM.

`root` defaults to the module's `CGROUP`, read at call time, so a test can
point every function at a fake cgroup tree.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 writes a huge number for "no limit"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text.split()[0])
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED else None


def physical_memory() -> int | None:
    """Bytes of RAM the host has, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cgroup_memory_limit(root: Path | None = None) -> int | None:
    """The container's memory limit in bytes (cgroup v2 `memory.max`, else v1), or None without one."""
    root = root or CGROUP
    return _read_int(root / "memory.max") or _read_int(root / "memory" / "memory.limit_in_bytes")


def cgroup_memory_used(root: Path | None = None) -> int | None:
    """Bytes the container uses now (cgroup v2 `memory.current`, else v1), or None."""
    root = root or CGROUP
    return _read_int(root / "memory.current") or _read_int(root / "memory" / "memory.usage_in_bytes")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_limit(root: Path | None = None) -> int:
    """The most memory this process may ever use: the smaller of the cgroup limit and the RAM (4 GiB if unknown)."""
    known = [v for v in (cgroup_memory_limit(root), physical_memory()) if v]
    return min(known) if known else 4 * 2**30


def memory_available(root: Path | None = None) -> int:
    """Memory that can still be allocated now: under the cgroup limit, and what the kernel calls available."""
    candidates = []
    limit = cgroup_memory_limit(root)
    if limit:
        candidates.append(limit - (cgroup_memory_used(root) or 0))
    avail = _meminfo_available()
    if avail:
        candidates.append(avail)
    return max(0, min(candidates)) if candidates else memory_limit(root) // 2


def _cpu_quota(root: Path) -> float | None:
    """CPUs granted by a CFS quota: cgroup v2 `cpu.max` ("max" or "<quota> <period>"), else v1's two files."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None  # -1: no quota
    except (OSError, ValueError):
        return None


def cpu_count(root: Path | None = None) -> int:
    """Cores this process may use: its affinity mask, capped by a cgroup CPU quota (rounded up: 1.5 CPUs is 2)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cpu_quota(root or CGROUP)
    if quota:
        n = min(n, math.ceil(quota))
    return max(1, n)
